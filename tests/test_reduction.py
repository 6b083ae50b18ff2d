"""The PCA model keeps k components of one full fit: the same as fitting k directly, and it survives save/load."""

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.functions import array_to_vector, vector_to_array

from fruit_assets.assets.reduction import components_needed, fit_pca


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
