"""Files the user running Spark may not read: an image becomes an error row with the reason, any other file is
ignored, and the run goes on (Spark alone would fail the run on the first such file, after four task retries).

Tests usually run as root, who reads every file, so `fruits run` goes in a child process that lacks the
capabilities to bypass file permissions (`setpriv`); as any other user, `chmod 0` is enough.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from fruit_assets.images import UNREADABLE
from tests import lake_tables
from tests.conftest import copy_images

pytestmark = pytest.mark.slow
CLASSES = ["Apple Braeburn", "Kiwi"]
PER_CLASS = 3


def without_permission_override(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]


def test_unreadable_image_is_an_error_row_and_the_run_completes(tmp_path, weights, engine_cache):
    root = copy_images(tmp_path / "images", classes=CLASSES, per_class=PER_CLASS).resolve()
    folder = root / "Test" / "Apple Braeburn"
    locked = folder / "locked 100%.jpg"  # a space and a '%': Spark's path for it must still be recognised
    shutil.copy(sorted(folder.iterdir())[0], locked)
    notes = folder / "notes.txt"
    notes.write_text("not an image, and not readable either")
    for path in (locked, notes):
        path.chmod(0)
    probe = subprocess.run(
        without_permission_override([sys.executable, "-c", f"open({str(locked)!r}, 'rb')"]),
        capture_output=True, text=True,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, "the child process must not read the file"

    lake = tmp_path / "lake"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "FRUITS_CACHE_DIR": str(engine_cache),
        "FRUITS_DEPLOYMENT": "local",
    }
    (tmp_path / "dagster").mkdir()
    run = subprocess.run(
        without_permission_override([
            sys.executable, "-m", "fruit_assets.cli", "run", "--images", str(root), "--lake", str(lake),
            "--weights", str(weights), "--pca-k", "2",
        ]),
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    locked_uri = "file:" + str(locked)
    errors = lake_tables.read(lake, "image_errors").to_pylist()
    assert [(e["path"], e["reason"], e["fruit_class"]) for e in errors] == [(locked_uri, UNREADABLE, "Apple Braeburn")]

    raw = {r["path"]: r for r in lake_tables.read(lake, "raw_images").to_pylist()}
    assert len(raw) == len(CLASSES) * PER_CLASS + 1  # the notes are ignored, the locked image is a row
    assert raw[locked_uri]["content"] is None and raw[locked_uri]["length"] == locked.stat().st_size
    assert all(r["content"] for p, r in raw.items() if p != locked_uri)

    features = lake_tables.read(lake, "mobilenet_features").to_pylist()
    assert sorted(f["path"] for f in features) == sorted(p for p in raw if p != locked_uri)
    assert len(lake_tables.read(lake, "pca_features")) == len(CLASSES) * PER_CLASS
