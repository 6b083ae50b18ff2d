"""Each asset check's logic passes on good data and fails on bad data."""

import numpy as np
import pytest

from fruit_assets.checks import (
    counts_conserved,
    features_valid,
    labels_match_partitions,
    loo_1nn_accuracy,
    variance_valid,
)

ROW = "path string, label string, fruit_class string"


def test_counts_conserved(spark):
    labelled = spark.createDataFrame([("a", "A", "A"), ("b", "A", "A"), ("c", "B", "B")], ROW)
    features = spark.createDataFrame([("a", "A", "A"), ("c", "B", "B")], ROW)
    errors = spark.createDataFrame([("b", "A", "A")], ROW)
    assert counts_conserved(labelled, features, errors).passed
    lost = counts_conserved(labelled, features, errors.limit(0))
    assert not lost.passed
    assert lost.metadata["classes_off"].value == {"A": {"images": 2, "features": 1, "errors": 0}}
    assert not counts_conserved(labelled, features.union(features), errors).passed  # duplicates


def _features(spark, vectors):
    return spark.createDataFrame([(f"p{i}", v) for i, v in enumerate(vectors)], "path string, features array<float>")


def test_features_valid(spark):
    good = [[0.5] * 1280, [0.0] * 1280]
    assert features_valid(_features(spark, good)).passed
    for bad in ([float("nan")] + [0.0] * 1279, [float("inf")] * 1280, [0.0] * 1279, None):
        result = features_valid(_features(spark, good + [bad]))
        assert not result.passed and result.metadata["bad_vectors"].value == 1
        assert result.metadata["examples"].value == ["p2"]


def test_labels_match_partitions(spark):
    good = spark.createDataFrame([("a", "A", "A"), ("b", "B", "B")], ROW)
    assert labels_match_partitions(good, ["A", "B"]).passed
    assert not labels_match_partitions(good, ["A", "B", "C"]).passed  # a partition without rows
    wrong = spark.createDataFrame([("a", "B", "A"), ("b", None, "B")], ROW)
    result = labels_match_partitions(wrong, ["A", "B"])
    assert not result.passed and result.metadata["rows_with_wrong_label"].value == 2


@pytest.mark.parametrize(
    "values, ok",
    [
        ([0.5, 0.3, 0.1], True),
        ([0.3, 0.5, 0.1], False),  # not monotone
        ([0.6, 0.5], False),  # sums past 1
        ([0.5, -0.1], False),
        ([0.5, float("nan")], False),
    ],
)
def test_variance_valid(values, ok):
    assert variance_valid(np.array(values)).passed is ok


def test_loo_1nn_accuracy_separates_good_from_bad():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 10)) * 10
    labels = np.repeat(np.arange(4), 50)
    points = centres[labels] + rng.normal(size=(200, 10))
    assert loo_1nn_accuracy(points, labels, chunk=37) == 1.0
    shuffled = rng.permutation(labels)
    assert loo_1nn_accuracy(points, shuffled) < 0.5
    # leave-one-out: the lone "b" must not find itself (scoring 1.0); its nearest other point is an "a"
    assert loo_1nn_accuracy(np.array([[0.0], [0.1], [5.0]]), np.array(["a", "a", "b"])) == pytest.approx(2 / 3)
