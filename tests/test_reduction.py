"""The PCA model keeps k components of one full fit: the same as fitting k directly, and it survives save/load."""

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.functions import array_to_vector, vector_to_array

from fruit_assets.assets.reduction import PcaInputError, check_pca_size, components_needed, fit_pca


@pytest.fixture(scope="module")
def features(spark):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12)) + rng.normal(size=12)
    return spark.createDataFrame([(row.astype(np.float32).tolist(),) for row in data], "features array<float>")


def projections(model, df):
    out = model.transform(df.select("features", array_to_vector("features").alias("features_vector")))
    return np.array([r[0] for r in out.select(vector_to_array("pca_vector")).collect()])


def test_truncated_model_equals_a_direct_k_fit(spark, features, tmp_path):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import PCA, StandardScaler

    model, spectrum = fit_pca(features, 3)
    assert len(spectrum) == 12 and spectrum.sum() == pytest.approx(1.0)
    assert model.stages[-1].explainedVariance.toArray() == pytest.approx(spectrum[:3])

    vectors = features.select(array_to_vector("features").alias("features_vector"))
    direct = Pipeline(stages=[
        StandardScaler(inputCol="features_vector", outputCol="scaled", withMean=True, withStd=True),
        PCA(k=3, inputCol="scaled", outputCol="pca_vector"),
    ]).fit(vectors)
    ours, theirs = projections(model, features), projections(direct, features)
    assert ours.shape == (200, 3)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-6)  # components are defined up to sign

    model.write().save(str(tmp_path / "m"))
    np.testing.assert_allclose(projections(PipelineModel.load(str(tmp_path / "m")), features), ours, atol=1e-12)


def test_components_needed():
    cumulative = np.cumsum([0.5, 0.3, 0.15, 0.05])
    assert components_needed(cumulative, 0.9) == 3
    assert components_needed(cumulative, 0.8) == 2
    assert components_needed(cumulative[:2], 0.9) is None


def test_identical_images_have_nothing_to_explain(spark):
    """Copies of one photo: Spark's explained variance is 0/0; say so instead of fitting NaNs."""
    same = spark.createDataFrame([([1.0, 2.0, 3.0],)] * 5, "features array<float>")
    with pytest.raises(PcaInputError, match="no variance at all"):
        fit_pca(same, 2)


def test_pca_size_needs_two_images_and_k_within_both_counts():
    with pytest.raises(PcaInputError, match="at least 2 embedded images .* found 1"):
        check_pca_size(1, 1, 1280)
    with pytest.raises(PcaInputError, match="k=5 is not possible with 4 images of 1280 features: choose 1 <= k <= 4"):
        check_pca_size(5, 4, 1280)
    with pytest.raises(PcaInputError, match="choose 1 <= k <= 1280"):
        check_pca_size(1281, 5000, 1280)
    check_pca_size(2, 2, 1280)
