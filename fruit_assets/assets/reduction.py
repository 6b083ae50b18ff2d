"""Reduction: Spark ML StandardScaler + PCA fitted over every materialized class, and each image's components."""


import dagster as dg
import numpy as np
from dagster_pyspark import PySparkResource
from pyspark import StorageLevel
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import PCA, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruit_assets import lake
from fruit_assets.metadata import png_markdown
from fruit_assets.plots import projection_plot, variance_plot
from resources.io_managers import CSV_EXPORT_KEY, FORMAT_KEY
from resources.settings import LakeSettings, PcaSettings

PROJECTION_POINTS = 5000  # points drawn in the 2-D projection plot


class PcaSizeError(ValueError):
    """k cannot exceed the number of features (1280) or of images."""


def components_needed(cumulative: np.ndarray, level: float) -> int | None:
    reached = np.nonzero(cumulative >= level - 1e-12)[0]
    return int(reached[0]) + 1 if len(reached) else None


def fit_pca(features: DataFrame, k: int) -> PipelineModel:
    vectors = features.select(array_to_vector("features").alias("features_vector")).persist(StorageLevel.MEMORY_AND_DISK)
    pipeline = Pipeline(
        stages=[
            StandardScaler(inputCol="features_vector", outputCol="scaled", withMean=True, withStd=True),
            PCA(k=k, inputCol="scaled", outputCol="pca_vector"),
        ]
    )
    model = pipeline.fit(vectors)  # several passes: scaler statistics, then the covariance
    vectors.unpersist()
    return model


def variance_table(model: PipelineModel) -> tuple[np.ndarray, np.ndarray]:
    explained = model.stages[-1].explainedVariance.toArray()
    return explained, np.cumsum(explained)


@dg.asset(
    io_manager_key="lake_io_manager",
    metadata={FORMAT_KEY: "spark_ml"},
    group_name="reduction",
    kinds={"spark"},
    description="StandardScaler + PCA (k components) fitted on the features of every materialized class.",
)
def pca_model(
    context: dg.AssetExecutionContext,
    mobilenet_features: DataFrame,
    pca: PcaSettings,
    lake_settings: LakeSettings,
    pyspark: PySparkResource,
) -> dg.Output[PipelineModel]:
    features = mobilenet_features.select("features")
    stats = mobilenet_features.agg(
        F.count("*").alias("images"), F.countDistinct("label").alias("classes"), F.max(F.size("features")).alias("dim")
    ).first()
    images, classes, dim = stats["images"], stats["classes"], stats["dim"] or 0
    if not 1 <= pca.k <= min(dim, images):
        raise PcaSizeError(
            f"PCA k={pca.k} is not possible with {images} images of {dim} features: "
            f"choose 1 <= k <= {min(dim, images)} (FRUITS_PCA_K or --pca-k)."
        )
    model = fit_pca(features, pca.k)
    explained, cumulative = variance_table(model)

    spark = pyspark.spark_session
    table = spark.createDataFrame(
        [(i + 1, float(e), float(c)) for i, (e, c) in enumerate(zip(explained, cumulative))],
        "component int, explained_variance double, cumulative double",
    )
    variance_path = lake.join(lake.validate_root(lake_settings.root), "pca_explained_variance")
    lake.write_table(table, variance_path)
    lake.write_csv(table, variance_path + "_csv")

    return dg.Output(
        model,
        metadata={
            "k": pca.k,
            "images": images,
            "classes": classes,
            "explained_variance": dg.MetadataValue.json([round(float(v), 6) for v in explained]),
            "cumulative_explained_variance": dg.MetadataValue.json([round(float(v), 6) for v in cumulative]),
            "total_explained_variance": round(float(cumulative[-1]), 6),
            "components_for_90_percent": components_needed(cumulative, 0.90) or f"not reached with k={pca.k}",
            "components_for_95_percent": components_needed(cumulative, 0.95) or f"not reached with k={pca.k}",
            "variance_plot": png_markdown(variance_plot(explained), "explained variance"),
            "explained_variance_path": dg.MetadataValue.path(variance_path),
        },
    )


@dg.asset(
    io_manager_key="lake_io_manager",
    metadata={CSV_EXPORT_KEY: True},
    group_name="reduction",
    kinds={"spark", "parquet", "csv"},
    description="Every image's k principal components (Parquet, plus a CSV export), with its path, label and split.",
)
def pca_features(
    context: dg.AssetExecutionContext, pca_model: PipelineModel, mobilenet_features: DataFrame
) -> dg.Output[DataFrame]:
    projected = (
        pca_model.transform(mobilenet_features.withColumn("features_vector", array_to_vector("features")))
        .select("path", "label", "split", "sha256", vector_to_array("pca_vector").alias("pca_features"))
    )
    sample = projected.select("label", F.slice("pca_features", 1, 2).alias("xy"))
    images = projected.count()
    if images > PROJECTION_POINTS:
        sample = sample.sample(fraction=min(1.0, 1.5 * PROJECTION_POINTS / images), seed=7).limit(PROJECTION_POINTS)
    rows = sample.collect()
    points = np.array([r["xy"] for r in rows], dtype=float).reshape(-1, 2)
    return dg.Output(
        projected,
        metadata={
            "images": images,
            "k": len(pca_model.stages[-1].explainedVariance),
            "projection_plot": png_markdown(projection_plot(points, [r["label"] for r in rows]), "2-D projection"),
        },
    )
