"""Reduction: Spark ML StandardScaler + PCA fitted over every materialized class, and each image's components."""


import dagster as dg
import numpy as np
from dagster_pyspark import PySparkResource
from pyspark import StorageLevel
from pyspark.ml import Pipeline, PipelineModel
from pyspark import SparkContext
from pyspark.ml.feature import PCA, PCAModel, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruit_assets import lake
from fruit_assets.metadata import png_markdown
from fruit_assets.plots import projection_plot, variance_plot
from resources import STEP_LAUNCHER_KEY, StepLauncherParam
from resources.io_managers import CSV_EXPORT_KEY, FORMAT_KEY
from resources.settings import LakeSettings, PcaSettings

PROJECTION_POINTS = 5000  # points drawn in the 2-D projection plot


class PcaInputError(ValueError):
    """The embeddings cannot give the PCA asked for: fewer than 2 images, no variance at all, or k above the number
    of features (1280) or of images."""


def check_pca_size(k: int, images: int, dim: int) -> None:
    if images < 2:
        raise PcaInputError(
            f"PCA needs at least 2 embedded images to estimate a covariance; found {images}. Embed more images."
        )
    if not 1 <= k <= min(dim, images):
        raise PcaInputError(
            f"PCA k={k} is not possible with {images} images of {dim} features: "
            f"choose 1 <= k <= {min(dim, images)} (FRUITS_PCA_K or --pca-k)."
        )


def components_needed(cumulative: np.ndarray, level: float) -> int | None:
    reached = np.nonzero(cumulative >= level - 1e-12)[0]
    return int(reached[0]) + 1 if len(reached) else None


def first_components(model: PCAModel, k: int) -> PCAModel:
    """The same fitted PCA keeping its first k components, as Spark itself truncates them (column-major pc)."""
    jvm = SparkContext._active_spark_context._jvm
    pc, explained = model._java_obj.pc(), model._java_obj.explainedVariance()
    copy = jvm.java.util.Arrays.copyOfRange
    truncated = jvm.org.apache.spark.ml.feature.PCAModel(
        model.uid,
        jvm.org.apache.spark.ml.linalg.DenseMatrix(pc.numRows(), k, copy(pc.values(), 0, pc.numRows() * k)),
        jvm.org.apache.spark.ml.linalg.DenseVector(copy(explained.values(), 0, k)),
    )
    kept = PCAModel(truncated)
    kept._set(k=k, inputCol=model.getInputCol(), outputCol=model.getOutputCol())  # sent to the JVM on use/save
    return kept


def fit_pca(features: DataFrame, k: int) -> tuple[PipelineModel, np.ndarray]:
    """The scaler + PCA with k components, and the explained variance of every component (for the 90%/95% counts).

    Spark's PCA eigendecomposes the full covariance whatever k is, so fitting all components once and keeping
    the first k costs no more than fitting k.
    """
    vectors = features.select(array_to_vector("features").alias("features_vector")).persist(StorageLevel.MEMORY_AND_DISK)
    dim = len(vectors.first()["features_vector"])
    pipeline = Pipeline(
        stages=[
            StandardScaler(inputCol="features_vector", outputCol="scaled", withMean=True, withStd=True),
            PCA(k=dim, inputCol="scaled", outputCol="pca_vector"),
        ]
    )
    full = pipeline.fit(vectors)  # passes over the data: scaler statistics, then the covariance
    vectors.unpersist()
    scaler, pca = full.stages
    spectrum = pca.explainedVariance.toArray()
    if not np.isfinite(spectrum).all():  # Spark divides by the total variance: 0/0 when every vector is the same
        raise PcaInputError(
            "The embedded images have no variance at all (every feature vector is the same, e.g. copies of one "
            "photo): there is nothing for a PCA to explain. Embed different images."
        )
    return PipelineModel(stages=[scaler, first_components(pca, k)]), spectrum


@dg.asset(
    io_manager_key="lake_io_manager",
    metadata={FORMAT_KEY: "spark_ml"},
    group_name="reduction",
    kinds={"spark"},
    description=(
        "The model that compresses each 1280-number embedding to k numbers (standardise, then principal "
        "component analysis), fitted on all materialized classes; the variance plot shows how much k keeps."
    ),
)
def pca_model(
    context: dg.AssetExecutionContext,
    mobilenet_features: DataFrame,
    pca: PcaSettings,
    lake_settings: LakeSettings,
    pyspark: PySparkResource,
    step_launcher: StepLauncherParam,
) -> dg.Output[PipelineModel]:
    features = mobilenet_features.select("features")
    stats = mobilenet_features.agg(
        F.count("*").alias("images"), F.countDistinct("label").alias("classes"), F.max(F.size("features")).alias("dim")
    ).first()
    images, classes, dim = stats["images"], stats["classes"], stats["dim"] or 0
    check_pca_size(pca.k, images, dim)
    model, spectrum = fit_pca(features, pca.k)
    explained = spectrum[: pca.k]
    cumulative = np.cumsum(explained)
    spectrum_cumulative = np.cumsum(spectrum)

    spark = pyspark.spark_session
    table = spark.createDataFrame(
        [(i + 1, float(e), float(c), i < pca.k) for i, (e, c) in enumerate(zip(spectrum, spectrum_cumulative))],
        "component int, explained_variance double, cumulative double, kept boolean",
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
            "components_for_90_percent": components_needed(spectrum_cumulative, 0.90),
            "components_for_95_percent": components_needed(spectrum_cumulative, 0.95),
            "variance_plot": png_markdown(variance_plot(spectrum, pca.k), "explained variance"),
            "explained_variance_path": dg.MetadataValue.path(variance_path),
        },
    )


@dg.asset(
    io_manager_key="lake_io_manager",
    metadata={CSV_EXPORT_KEY: True},
    required_resource_keys={STEP_LAUNCHER_KEY},
    group_name="reduction",
    kinds={"spark", "parquet", "csv"},
    description=(
        "Each photo's compressed embedding: the k numbers from pca_model, with its path, label and split "
        "(Parquet, plus a CSV export)."
    ),
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
