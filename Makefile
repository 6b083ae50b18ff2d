# One command each: `make setup`, `make run`, `make test`, `make ui`. See README.md.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# Spark starts its Python workers with `python3` from PATH unless told otherwise: use the venv's, activated or not.
UI_PORT ?= 3000

.PHONY: setup run test ui bench clean

setup:
	@command -v java >/dev/null || { echo "Java 17 is needed by Spark: apt-get install -y openjdk-17-jre-headless"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

run:
	$(BIN)/fruits run $(ARGS)

test:
	$(BIN)/python -m pytest -q $(ARGS)

ui:
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p $(UI_PORT)

bench:
	$(BIN)/python benchmarks/bench_features.py $(ARGS)

clean:
	rm -rf lake .dagster_home
