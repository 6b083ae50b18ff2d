"""Re-runs: nothing duplicated, nothing lost. Uses the lifecycle of tests/test_interruptions.py (one lake and one
Dagster instance, computed once per session): `fruits run --classes A`, then B (after a B run killed mid-write, and
with one Spark worker crashing in it), then A again.

- After A, B, A: every lake dataset (raw_images, labelled_images, mobilenet_features, image_errors, pca_features
  and its CSV export) holds exactly A's and B's images, each once, and Dagster has each class materialized once.
- Materializing the same class twice gives identical outputs: A's rows after the third run equal those after the
  first (bytes, hashes, labels; feature vectors to float32 round-off), and since the lake then holds the same
  classes as after the second run, every dataset, the PCA included, equals its state after the second run.
"""

from __future__ import annotations

import dagster as dg
import numpy as np
import pytest

from fruit_assets.prune import CLASS_DATASETS
from tests.materializations import latest
from tests.test_interruptions import A, B, lifecycle

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reruns(tmp_path_factory, weights, engine_cache, spark):
    state = lifecycle(tmp_path_factory, weights, engine_cache, spark)
    return {**state, "states": [state["committed"], state["recovered"], state["again"]]}


def of_class(df, name):
    """The rows of one class (an empty dataset has no partition folder, so no fruit_class column either)."""
    return df[df["fruit_class"] == name].reset_index(drop=True) if "fruit_class" in df else df


def equal_rows(before, after, float_columns=(), atol=0.0):
    assert list(before.columns) == list(after.columns)
    assert len(before) == len(after)
    for column in before.columns:
        if column in float_columns:
            diff = np.abs(np.stack(before[column].to_numpy()) - np.stack(after[column].to_numpy())).max()
            assert diff <= atol, (column, diff)
        else:
            assert before[column].tolist() == after[column].tolist(), column


def test_every_run_succeeds(reruns):
    assert [reruns["codes"][run] for run in ("A", "B", "A again")] == [0, 0, 0]


def test_a_then_b_then_a_leaves_a_and_b_exactly_once_everywhere(reruns):
    final, paths = reruns["again"], reruns["paths"]
    expected = sorted(paths[A] + paths[B])
    for name in ["raw_images", "labelled_images", "mobilenet_features"]:
        df = final[name]
        assert df["path"].is_unique, name
        assert list(df["path"]) == expected, name
        assert df.groupby("fruit_class").size().to_dict() == {A: 3, B: 3}, name
    assert len(final["image_errors"]) == 0
    assert list(final["pca_features"]["path"]) == expected and final["pca_features"]["path"].is_unique
    assert sorted(line.split(",", 1)[0] for line in final["pca_features_csv"]) == expected
    assert len(final["model_info"]) == 1 and list(final["pca_explained_variance"]["component"])[:2] == [1, 2]
    assert reruns["leftovers_after_again"] == []


def test_each_run_read_and_wrote_where_it_was_told(reruns):
    """Runs in one process with different settings (as in this test session) each use their own images and lake."""
    instance = reruns["instance"]
    raw = latest(instance, "raw_images")
    assert raw["images_root"] == str(reruns["images"])
    assert raw["path"] == str(reruns["lake"] / "raw_images")


def test_dagster_has_each_class_materialized(reruns):
    instance = reruns["instance"]
    for asset in CLASS_DATASETS:
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == {A, B}, asset
    assert sorted(instance.get_dynamic_partitions("fruit_class")) == [A, B]


def test_after_the_first_and_second_runs_the_lake_holds_exactly_what_was_asked(reruns):
    first, second, paths = reruns["committed"], reruns["recovered"], reruns["paths"]
    assert list(first["mobilenet_features"]["path"]) == paths[A]
    assert list(first["pca_features"]["path"]) == paths[A]
    assert list(second["mobilenet_features"]["path"]) == sorted(paths[A] + paths[B])
    assert list(second["pca_features"]["path"]) == sorted(paths[A] + paths[B])


def test_materializing_the_same_class_twice_gives_identical_rows(reruns):
    first, third = reruns["committed"], reruns["again"]
    for name in CLASS_DATASETS:
        equal_rows(of_class(first[name], A), of_class(third[name], A), float_columns={"features"}, atol=1e-5)
    assert len(of_class(third["mobilenet_features"], A)) == 3


def test_same_classes_in_the_lake_give_identical_datasets_pca_included(reruns):
    second, third = reruns["recovered"], reruns["again"]
    for name in CLASS_DATASETS:
        equal_rows(second[name], third[name], float_columns={"features"}, atol=1e-5)
    equal_rows(second["pca_features"], third["pca_features"], float_columns={"pca_features"}, atol=1e-3)
    variance = ["explained_variance", "cumulative"]
    equal_rows(second["pca_explained_variance"].drop(columns=variance), third["pca_explained_variance"].drop(columns=variance))
    np.testing.assert_allclose(second["pca_explained_variance"][variance], third["pca_explained_variance"][variance], atol=1e-6)
    assert len(second["pca_features_csv"]) == len(third["pca_features_csv"])
