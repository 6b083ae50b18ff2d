"""The whole graph through Dagster on local Spark, with real weights and real images, as `fruits run` runs it."""

import json
import os

import dagster as dg
import numpy as np
import pytest

from fruit_assets.cli import main
from fruit_assets.engines import sha256_file
from tests.conftest import CLASSES, IMAGES_PER_CLASS
from tests.lake_tables import read
from tests.materializations import latest, partition_events, per_class

pytestmark = pytest.mark.slow
K = 5


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, small_images, weights, engine_cache):
    """One `fruits run` over the small image root, shared by the assertions below."""
    base = tmp_path_factory.mktemp("graph")
    saved = dict(os.environ)  # the CLI exports its flags as FRUITS_* variables; keep them out of other tests
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(base))
    mp.setenv("FRUITS_CACHE_DIR", str(engine_cache))
    lake = base / "lake"
    code = main(["run", "--images", str(small_images), "--lake", str(lake), "--weights", str(weights), "--pca-k", str(K)])
    yield {"code": code, "lake": lake, "instance": dg.DagsterInstance.get(), "weights": weights}
    mp.undo()
    os.environ.clear()
    os.environ.update(saved)


def test_run_succeeds_and_registers_one_partition_per_class(materialized):
    assert materialized["code"] == 0
    keys = materialized["instance"].get_dynamic_partitions("fruit_class")
    assert sorted(keys) == sorted(CLASSES)
    for asset in ["raw_images", "labelled_images", "mobilenet_features", "image_errors"]:
        done = materialized["instance"].get_materialized_partitions(dg.AssetKey(asset))
        assert done == set(CLASSES), asset


def test_outputs_have_documented_columns_and_counts(materialized):
    lake = materialized["lake"]
    features = read(lake, "mobilenet_features").to_pandas()
    assert len(features) == len(CLASSES) * IMAGES_PER_CLASS
    assert {"path", "label", "split", "sha256", "features", "fruit_class"} <= set(features.columns)
    assert set(features["label"]) == set(CLASSES) and set(features["split"]) == {"Test"}
    vectors = np.stack(features["features"].to_numpy())
    assert vectors.shape == (40, 1280) and vectors.dtype == np.float32 and np.isfinite(vectors).all()
    assert features["path"].is_unique

    pca = read(lake, "pca_features").to_pandas()
    assert len(pca) == 40 and {"path", "label", "split", "pca_features"} <= set(pca.columns)
    assert all(len(v) == K for v in pca["pca_features"])
    assert len(read(lake, "image_errors")) == 0

    csv_files = list((lake / "pca_features_csv").glob("*.csv"))
    header = csv_files[0].read_text().splitlines()[0].split(",")
    assert header[:3] == ["path", "label", "split"] and header[-1] == f"pca_features_{K}"
    assert sum(len(f.read_text().splitlines()) - 1 for f in csv_files) == 40

    variance = read(lake, "pca_explained_variance").to_pandas().sort_values("component")
    assert list(variance["component"]) == list(range(1, 1281))  # the whole spectrum, the first k marked kept
    assert list(variance["component"][variance["kept"]]) == list(range(1, K + 1))
    np.testing.assert_allclose(variance["cumulative"], np.cumsum(variance["explained_variance"]))
    assert variance["cumulative"].iloc[-1] == pytest.approx(1.0, abs=1e-6)
    assert (lake / "pca_model" / "metadata").is_dir() and (lake / "pca_model" / "stages").is_dir()

    info = read(lake, "model_info").to_pylist()[0]
    assert info["weights_sha256"] == sha256_file(materialized["weights"])
    assert info["input_size"] == "224x224x3" and "bilinear" in info["preprocessing"]


def test_metadata_shown_in_the_ui(materialized):
    instance = materialized["instance"]
    raw = latest(instance, "raw_images")
    assert raw["images"] == 40 and raw["ignored_files"] == 0 and raw["bytes_listed"] > 0
    assert per_class(instance, "raw_images", "class_images") == {c: IMAGES_PER_CLASS for c in CLASSES}
    assert per_class(instance, "mobilenet_features", "class_images_embedded") == {c: IMAGES_PER_CLASS for c in CLASSES}
    assert per_class(instance, "mobilenet_features", "class_errors") == {c: 0 for c in CLASSES}
    # each partition's event holds its own class's counts and the run's totals, never a list of all classes: output
    # metadata is copied into every partition's event, so such a list would grow with the number of classes squared
    for asset in ("raw_images", "labelled_images", "mobilenet_features", "image_errors"):
        for label, event in partition_events(instance, asset).items():
            text = repr({k: v.value for k, v in event.metadata.items()})
            assert [c for c in CLASSES if c != label and c in text] == [], (asset, label, text[:300])

    features = latest(instance, "mobilenet_features")
    assert features["images_embedded"] == 40 and features["errors"] == 0 and features["images_per_second"] > 0
    assert features["weights_sha256"] == sha256_file(materialized["weights"])

    pca = latest(instance, "pca_model")
    explained = pca["explained_variance"]
    assert pca["k"] == K and len(explained) == K and all(a >= b for a, b in zip(explained, explained[1:]))
    assert pca["cumulative_explained_variance"][-1] == pytest.approx(sum(explained), abs=1e-5)
    # 40 images span at most 39 dimensions, so 90% and 95% are reached within them
    assert 1 <= pca["components_for_90_percent"] <= pca["components_for_95_percent"] <= 39
    assert "data:image/png;base64," in pca["variance_plot"]
    assert "data:image/png;base64," in latest(instance, "pca_features")["projection_plot"]


def test_every_asset_check_passed(materialized):
    instance = materialized["instance"]
    expected = {
        ("labelled_images", "labels_present"),
        ("mobilenet_features", "counts_are_conserved"),
        ("mobilenet_features", "features_are_finite_1280"),
        ("pca_model", "explained_variance_is_valid"),
        ("pca_features", "pca_features_separate_classes"),
    }
    for asset, check in expected:
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey(asset), check)]
        )[dg.AssetCheckKey(dg.AssetKey(asset), check)]
        assert record is not None, check
        evaluation = record.event.dagster_event.event_specific_data
        assert evaluation.passed, (check, evaluation.metadata)
    accuracy = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("pca_features"), "pca_features_separate_classes")]
    )
    (record,) = accuracy.values()
    assert record.event.dagster_event.event_specific_data.metadata["loo_1nn_accuracy"].value >= 0.9


def test_rematerializing_a_class_replaces_only_its_rows(materialized):
    lake = materialized["lake"]
    before = read(lake, "mobilenet_features").to_pandas().set_index("path")
    assert main(["run", "--classes", "Kiwi", "--pca-k", str(K), "--lake", str(lake)]) == 0
    after = read(lake, "mobilenet_features").to_pandas().set_index("path")
    assert after.index.is_unique and sorted(after.index) == sorted(before.index)
    np.testing.assert_allclose(np.stack(after.loc[before.index, "features"]), np.stack(before["features"]), atol=1e-6)
    assert json.dumps(sorted(after["label"].unique().tolist())) == json.dumps(sorted(CLASSES))
