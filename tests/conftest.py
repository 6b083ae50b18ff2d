"""Shared fixtures: the real data in ../shared, small image roots built from it, one Spark session per test run."""

import os
import shutil
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FRUITS_SHARED_DIR", PROJECT_DIR.parent / "shared"))
TEST_SPLIT = SHARED / "data" / "fruits-360" / "Test"
WEIGHTS = SHARED / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
# A fixed selection: names with spaces and digits, similar-looking classes, and plain ones.
CLASSES = ["Apple Red Yellow 1", "Banana", "Cherry 1", "Kiwi"]
IMAGES_PER_CLASS = 10


def _require_shared() -> None:
    if not TEST_SPLIT.is_dir() or not WEIGHTS.is_file():
        pytest.fail(
            f"The tests need the Fruits-360 Test split and MobileNetV2 weights under {SHARED} "
            "(set FRUITS_SHARED_DIR to point elsewhere)."
        )


def copy_images(destination: Path, classes=CLASSES, per_class=IMAGES_PER_CLASS, split="Test") -> Path:
    """Copies the first `per_class` real images of each class into <destination>/<split>/<class>/."""
    _require_shared()
    for name in classes:
        target = destination / split / name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted((TEST_SPLIT / name).iterdir())[:per_class]:
            shutil.copy(image, target / image.name)
    return destination


@pytest.fixture(scope="session")
def weights() -> Path:
    _require_shared()
    return WEIGHTS


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory) -> Path:
    """One converted-model cache for the whole session (conversion runs once)."""
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def small_images(tmp_path_factory) -> Path:
    return copy_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    from resources import LOCAL_SPARK_CONFIG

    builder = SparkSession.builder
    for key, value in LOCAL_SPARK_CONFIG.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session


@pytest.fixture
def fruits_env(tmp_path, monkeypatch, weights, engine_cache):
    """A private lake, Dagster instance and settings for one test, as the CLI would set them."""
    lake = tmp_path / "lake"
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FRUITS_LAKE_ROOT", str(lake))
    monkeypatch.setenv("FRUITS_MOBILENET_WEIGHTS", str(weights))
    monkeypatch.setenv("FRUITS_CACHE_DIR", str(engine_cache))
    monkeypatch.setenv("FRUITS_DEPLOYMENT", "local")
    return {"lake": lake, "home": home}
