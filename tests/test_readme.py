"""The README's promises, checked: every shell command in it exists and parses, every setting it names exists,
every setting the code reads is in its configuration table, and its sections come in the promised order.

The main commands also really run elsewhere: `.ci/run` runs `make setup` and `make test`; tests/test_graph.py and
tests/test_ui.py run `fruits run`; tests/test_ui.py also checks the README's lake layout and Python snippet
against a real lake, and the UI the README describes.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
README = PROJECT / "README.md"
BIN = Path(sys.executable).parent
SHELL_LANGS = {"bash", "sh", "shell", "console"}
# Sections in the order a newcomer reads them (issue 4): heading text must start with these words.
SECTIONS = [
    "How it fits together",
    "Set up, run, test",
    "Configuration",
    "What it writes",
    "The Dagster UI",
    "Backfilling",
    "Running on AWS",
    "Performance",
    "Troubleshooting",
    "Data, licences and versions",
]
# Settings the README may name that the project does not define: they belong to the tools it runs on.
EXTERNAL_VARIABLES = {"DAGSTER_HOME", "JAVA_HOME", "PYSPARK_SUBMIT_ARGS", "PYSPARK_PYTHON"}
# Links to documents a colleague is writing at the same time; remove an entry once the file is in the tree.
PENDING_DOCS: set[str] = set()  # docs the README may link to before they are written
CODE_DIRS = ["fruit_assets", "resources", "jobs", "benchmarks", "infra", "tests"]


def readme() -> str:
    return README.read_text(encoding="utf-8")


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).strip().lower(), m.group(2)) for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```", text, re.M | re.S)]


def shell_commands(text: str) -> list[str]:
    """Every command line of the README's shell blocks, comments removed, continuations joined."""
    commands = []
    for lang, body in code_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        pending = ""
        for line in body.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            line = pending + line
            pending = ""
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def sections(text: str, level: str = "## ") -> dict[str, str]:
    """Heading text -> body, for the headings of one level."""
    parts = re.split(rf"^{re.escape(level)}(.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def section(text: str, starts: str) -> str:
    found = [body for title, body in sections(text).items() if title.startswith(starts)]
    assert found, f"README has no section starting with {starts!r}"
    return found[0]


def fruits_parser() -> argparse.ArgumentParser:
    from fruit_assets.cli import _parser

    return _parser()


def parser_options(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, set[str]]:
    """Subcommand path -> its option strings (e.g. {"run": {"--images", ...}, "aws deploy": {...}})."""
    options = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                options[path] = {o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help")}
                options.update(parser_options(sub, path))
    return options


def project_code() -> str:
    texts = []
    for folder in CODE_DIRS:
        for path in (PROJECT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".sh", ".yaml", ".yml") and "__pycache__" not in path.parts:
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
    texts += [(PROJECT / name).read_text() for name in ("Makefile", "pyproject.toml", "workspace.yaml")]
    return "\n".join(texts)


def pytest_markers() -> set[str]:
    config = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    return {m.split(":")[0].strip() for m in config["tool"]["pytest"]["ini_options"]["markers"]}


def has_option(usage: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage) is not None


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120, **kwargs)


# --- checking one command ---------------------------------------------------------------------------------------


def check_make(words: list[str]) -> None:
    assignments = [w for w in words[1:] if "=" in w and not w.startswith("-")]
    targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
    assert targets, f"`{shlex.join(words)}`: name the target (make's default target is not documented)"
    for target in targets:
        dry = run(["make", "-n", target, *assignments])
        assert dry.returncode == 0, f"`make -n {target}` failed: {dry.stderr}"
    args = shlex.split(dict(a.split("=", 1) for a in assignments).get("ARGS", ""))
    for target in targets:
        if target == "run":
            check_fruits(["fruits", "run", *args])
        elif target == "test":
            check_pytest_args(args)
        elif target == "bench" and args:
            usage = run([str(BIN / "python"), "benchmarks/bench_features.py", "--help"])
            assert usage.returncode == 0, usage.stderr
            for flag in (a.split("=")[0] for a in args if a.startswith("--")):
                assert has_option(usage.stdout, flag), f"benchmarks/bench_features.py has no {flag}"


def check_fruits(words: list[str]) -> None:
    args = words[1:]
    parser = fruits_parser()
    wants_help = "--help" in args or "-h" in args
    args = [a for a in args if a not in ("--help", "-h")]
    if not wants_help:  # `fruits aws --help` is complete; `fruits aws` alone is not
        try:
            parser.parse_args(args)
        except SystemExit as e:
            pytest.fail(f"`{shlex.join(words)}` does not parse with the fruits CLI (exit {e.code})")
    paths = parser_options(parser)
    subcommand = []  # the longest run of leading words that names a (nested) subcommand, e.g. ["aws", "deploy"]
    for word in args:
        if " ".join([*subcommand, word]) not in paths:
            break
        subcommand.append(word)
    known = paths.get(" ".join(subcommand), set())
    if wants_help:
        assert [a for a in args if not a.startswith("-")] == subcommand, f"`{shlex.join(words)}`: no such subcommand"
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert flag in known, f"`{shlex.join(words)}`: {flag} is not an option of `fruits {' '.join(subcommand)}` (no abbreviations)"
    shown = run([str(BIN / "fruits"), *subcommand, "--help"])
    assert shown.returncode == 0 and "usage: fruits" in shown.stdout, shown.stderr


def check_pytest_args(args: list[str]) -> None:
    markers = pytest_markers()
    for option, value in zip(args, args[1:]):
        if option == "-m":
            names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", value)) - {"and", "or", "not"}
            assert names <= markers, f"unknown pytest markers {names - markers} (pyproject.toml declares {markers})"


def check_dagster(words: list[str]) -> None:
    program = Path(words[0]).name
    path = BIN / program
    assert path.exists(), f"{program} is not installed in the virtual environment"
    subcommand = [w for w in words[1:2] if not w.startswith("-")]
    shown = run([str(path), *subcommand, "--help"])
    assert shown.returncode == 0, shown.stderr
    for flag in (w for w in words[1:] if w.startswith("-")):
        assert has_option(shown.stdout, flag.split("=")[0]), f"`{program} {' '.join(subcommand)}` has no option {flag}"


def check_apt(words: list[str]) -> None:
    packages = [w for w in words[2:] if not w.startswith("-")]
    assert words[1] == "install" and packages, shlex.join(words)
    if shutil.which("apt-cache"):
        for package in packages:
            shown = run(["apt-cache", "show", package])
            assert shown.returncode == 0, f"Debian has no package {package!r}"


def check_command(command: str) -> None:
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):  # VAR=value prefixes
        check_variable(words.pop(0).split("=", 1)[0])
    assert words, command
    program = words[0]
    name = Path(program).name
    if name == "make":
        check_make(words)
    elif name == "fruits":
        check_fruits(words)
    elif name in ("dagster", "dagster-webserver"):
        check_dagster(words)
    elif name == "apt-get":
        check_apt(words)
    elif program == ".ci/run":
        assert os.access(PROJECT / ".ci" / "run", os.X_OK) and run(["bash", "-n", ".ci/run"]).returncode == 0
    elif name in ("python", "python3") and words[1:3] == ["-m", "pytest"]:
        check_pytest_args(words[3:])
    elif program in (".", "source") and words[1:] == [".venv/bin/activate"]:
        makefile = (PROJECT / "Makefile").read_text()  # `make setup` makes .venv, whose activate script this is
        assert "VENV := .venv" in makefile and "-m venv $(VENV)" in makefile
        assert (PROJECT / ".venv" / "bin" / "activate").is_file() or not (PROJECT / ".venv").exists()
    elif name == "export":
        for word in words[1:]:
            check_variable(word.split("=", 1)[0])
    else:
        pytest.fail(f"README command `{command}` has no rule in tests/test_readme.py: add one that checks it")


def check_variable(name: str) -> None:
    if name in EXTERNAL_VARIABLES or name in ("ARGS", "UI_PORT", "PYTHON"):
        return
    assert re.search(rf"\b{re.escape(name)}\b", project_code()), f"README sets {name}, which no code reads"


# --- the tests ----------------------------------------------------------------------------------------------------


COMMANDS = shell_commands(readme())


def test_readme_has_shell_commands_including_the_three_main_ones():
    assert {"make setup", "make run", "make test"} <= set(COMMANDS), COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_exists_and_parses(command):
    check_command(command)


def test_inline_commands_parse_too():
    """Commands quoted inline (`make ui UI_PORT=3001`, `fruits classes`) get the same checks."""
    inline = set()
    for span in re.findall(r"`([^`\n]+)`", readme()):
        if re.match(r"(make|fruits|\.venv/bin/fruits|\.venv/bin/dagster) ", span):
            inline.add(span)
    assert "make ui" in inline
    for command in sorted(inline):
        check_command(command)


def test_sections_come_in_the_promised_order():
    titles = list(sections(readme()))
    positions = []
    for wanted in SECTIONS:
        matches = [i for i, title in enumerate(titles) if title.startswith(wanted)]
        assert matches, f"README lacks the section {wanted!r} (has {titles})"
        positions.append(matches[0])
    assert positions == sorted(positions), f"README sections out of order: {titles}"
    intro = readme().split("\n## ", 1)[0]
    assert len(intro.split()) > 60, "README should open with what the project does and for whom"


def test_diagrams_placeholders_and_links():
    text = readme()
    mermaid = [body for lang, body in code_blocks(text) if lang == "mermaid"]
    assert len(mermaid) >= 2
    graph = mermaid[0]
    for asset in ["raw_images", "labelled_images", "mobilenet_features", "image_errors", "pca_model", "pca_features"]:
        assert asset in graph
    assert "FRUITS_DEPLOYMENT=emr" in mermaid[1] and "local" in mermaid[1]
    assert "<!-- AWS-SUMMARY -->" in section(text, "Running on AWS")
    performance = section(text, "Performance")
    assert "<!-- PERF-TABLE -->" in performance and "make bench" in performance
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        if target in PENDING_DOCS and not (PROJECT / target).exists():
            continue
        assert (PROJECT / target).exists(), f"README links to {target}, which does not exist"
    assert "docs/aws.md" in section(text, "Running on AWS")


def test_every_variable_named_in_the_readme_exists():
    names = set(re.findall(r"\b((?:FRUITS|EMR)_[A-Z0-9_]*[A-Z0-9])\b", readme()))
    code = project_code()
    missing = sorted(n for n in names if not re.search(rf"\b{n}\b", code))
    assert not missing, f"README names settings no code reads: {missing}"


def test_configuration_table_lists_every_setting_and_flag():
    table = section(readme(), "Configuration")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) > 10
    for line in rows[1:]:  # every row: variable, flag, default, example, meaning
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, line
        if cells[0] != "---":
            assert cells[2] and cells[3] and cells[4], f"row lacks a default, example or meaning: {line}"
    read = set()
    for folder in ("fruit_assets", "resources", "jobs"):
        for path in (PROJECT / folder).rglob("*.py"):
            source = path.read_text()
            constants = set(re.findall(r"^\s*([A-Z][A-Z0-9_]*)\s*[:=]", source, re.M))  # Python names, not settings
            read |= set(re.findall(r"\b((?:FRUITS|EMR)_[A-Z0-9_]*[A-Z0-9])\b", source)) - constants
    undocumented = sorted(n for n in read if f"`{n}`" not in table)
    assert not undocumented, f"settings the code reads but the README's configuration table does not list: {undocumented}"
    flags = parser_options(fruits_parser())["run"]  # `fruits aws ...` options belong to docs/aws.md
    missing = sorted(f for f in flags if f"`{f}" not in table)
    assert not missing, f"`fruits run` flags missing from the configuration table: {missing}"
    for subcommand in (p for p in parser_options(fruits_parser()) if " " not in p):
        assert f"fruits {subcommand}" in readme(), f"README never mentions `fruits {subcommand}`"


def test_version_table_matches_the_pins():
    pins = dict(
        re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', (PROJECT / "pyproject.toml").read_text())
    )
    table = section(readme(), "Data, licences and versions")
    rows = re.findall(r"^\| ([A-Za-z0-9_.\-]+) \| ([0-9][^ |]*) \|", table, re.M)
    assert len(rows) >= 5
    for package, version in rows:
        assert pins.get(package) == version, f"README says {package} {version}, pyproject.toml pins {pins.get(package)}"
    for package, version in re.findall(r"\b([a-z][a-z0-9\-]+) ([0-9]+\.[0-9]+\.[0-9]+)\b", table):
        if package in pins:
            assert pins[package] == version, f"README says {package} {version}, pyproject.toml pins {pins[package]}"
    assert "MIT" in table and "Apache-2.0" in table and "3.5" in table


def test_python_blocks_compile():
    for lang, body in code_blocks(readme()):
        if lang == "python":
            compile(body, "README.md", "exec")


def test_instance_settings_in_the_readme_load(tmp_path, monkeypatch):
    """The dagster.yaml snippet the README recommends is valid instance configuration and does what it says."""
    import textwrap

    import dagster as dg

    blocks = re.findall(r"^( *)```yaml\n(.*?)^\1```", readme(), re.M | re.S)
    snippets = [textwrap.dedent(body) for _, body in blocks if "max_concurrent_runs" in body]
    assert snippets, "README should show how to run backfill runs one at a time"
    (tmp_path / "dagster.yaml").write_text(snippets[0])
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 1
