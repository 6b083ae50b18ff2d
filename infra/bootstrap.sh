#!/usr/bin/env bash
# EMR bootstrap action (every node, Amazon Linux 2023, before Spark starts).
# Installs Python 3.11 and a venv at /opt/fruits/venv holding the fruit_assets wheel staged by
# fruit_assets.infra.upload_bootstrap; the wheel's pyproject pins are the only version source.
# The template points PYSPARK_PYTHON at /opt/fruits/venv/bin/python.
# Usage: bootstrap.sh <lake-bucket>
set -euo pipefail

BUCKET="${1:?usage: bootstrap.sh <lake-bucket>}"
VENV="${FRUITS_VENV:-/opt/fruits/venv}"  # override only for tests
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

sudo dnf install -y python3.11 python3.11-pip

aws s3 cp "s3://${BUCKET}/bootstrap/" "$WORK/" --recursive --exclude '*' --include 'fruit_assets-*.whl'
shopt -s nullglob
wheels=("$WORK"/fruit_assets-*.whl)
if [ "${#wheels[@]}" -ne 1 ]; then
    echo "expected exactly one fruit_assets-*.whl under s3://${BUCKET}/bootstrap/, found ${#wheels[@]}" >&2
    exit 1
fi

sudo python3.11 -m venv "$VENV"
sudo "$VENV/bin/python" -m pip install --no-cache-dir "${wheels[0]}"
"$VENV/bin/python" -c "import fruit_assets; print('fruit_assets ready in', fruit_assets.__file__)"
