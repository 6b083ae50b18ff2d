"""Asset checks, next to what they guard. Blocking checks stop downstream assets from building on bad data.

Each check's logic is a plain function of DataFrames or arrays so tests can show it failing on bad data.
"""


import dagster as dg
import numpy as np
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruit_assets.lake import PARTITION_COLUMN
from fruit_assets.partitions import class_name, fruit_class_partitions
from resources import STEP_LAUNCHER_KEY

EMBEDDING_DIM = 1280
MIN_1NN_ACCURACY = 0.9
KNN_MAX_IMAGES = 20_000  # leave-one-out 1-NN is quadratic: above this, a seeded sample is scored


def counts_conserved(raw: DataFrame, features: DataFrame, errors: DataFrame) -> dg.AssetCheckResult:
    def per_class(df):
        return {r[0]: r[1] for r in df.groupBy(PARTITION_COLUMN).count().collect()}

    images, embedded, failed = per_class(raw), per_class(features), per_class(errors)
    off = {
        c: {"images": images.get(c, 0), "features": embedded.get(c, 0), "errors": failed.get(c, 0)}
        for c in set(images) | set(embedded) | set(failed)
        if images.get(c, 0) != embedded.get(c, 0) + failed.get(c, 0)
    }
    return dg.AssetCheckResult(
        passed=not off,
        metadata={
            "images": sum(images.values()),
            "features": sum(embedded.values()),
            "errors": sum(failed.values()),
            "classes_off": dg.MetadataValue.json(off),
        },
    )


def features_valid(features: DataFrame) -> dg.AssetCheckResult:
    # array_max is NaN if any element is NaN (Spark orders NaN above +inf); array_compact drops null elements.
    bad = features.where(
        F.col("features").isNull()
        | (F.size(F.array_compact("features")) != EMBEDDING_DIM)
        | F.isnan(F.array_max("features"))
        | F.array_max("features").isin(float("inf"))
        | F.array_min("features").isin(float("-inf"))
    )
    bad_count = bad.count()
    examples = [r["path"] for r in bad.select("path").limit(5).collect()]
    return dg.AssetCheckResult(
        passed=bad_count == 0,
        metadata={"bad_vectors": bad_count, "examples": dg.MetadataValue.json(examples), "dimension": EMBEDDING_DIM},
    )


def labels_match_partitions(labelled: DataFrame, partition_classes: list[str]) -> dg.AssetCheckResult:
    present = {r[0] for r in labelled.select(PARTITION_COLUMN).distinct().collect()}
    mislabelled = labelled.where(F.col("label").isNull() | (F.col("label") != F.col(PARTITION_COLUMN)))
    wrong = mislabelled.count()
    missing = sorted(set(partition_classes) - present)
    return dg.AssetCheckResult(
        passed=not missing and wrong == 0,
        metadata={
            "classes_checked": len(partition_classes),
            "classes_without_rows": dg.MetadataValue.json(missing),
            "rows_with_wrong_label": wrong,
        },
    )


def variance_valid(explained: np.ndarray) -> dg.AssetCheckResult:
    explained = np.asarray(explained, dtype=float)
    cumulative = np.cumsum(explained)
    problems = []
    if not np.all(np.isfinite(explained)):
        problems.append("non-finite values")
    if np.any(explained < -1e-12):
        problems.append("negative variance")
    if np.any(np.diff(explained) > 1e-9):
        problems.append("not monotone non-increasing")
    if len(cumulative) and cumulative[-1] > 1 + 1e-9:
        problems.append(f"cumulative {cumulative[-1]:.6f} > 1")
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={"problems": dg.MetadataValue.json(problems), "cumulative": float(cumulative[-1]) if len(cumulative) else 0.0},
    )


def loo_1nn_accuracy(points: np.ndarray, labels: np.ndarray, chunk: int = 2048) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy (Euclidean), in chunks to bound memory."""
    points = np.asarray(points, dtype=np.float64)
    labels = np.asarray(labels)
    if len(points) < 2:
        return float("nan")
    squared = np.einsum("ij,ij->i", points, points)
    hits = 0
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk]
        distances = squared[start : start + chunk, None] - 2.0 * block @ points.T + squared[None, :]
        distances[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        hits += int(np.sum(labels[np.argmin(distances, axis=1)] == labels[start : start + chunk]))
    return hits / len(points)


def nearest_neighbour_quality(pca_features: DataFrame) -> dg.AssetCheckResult:
    total = pca_features.count()
    rows = pca_features.select("label", "pca_features")
    if total > KNN_MAX_IMAGES:
        rows = rows.sample(fraction=min(1.0, 1.2 * KNN_MAX_IMAGES / total), seed=11).limit(KNN_MAX_IMAGES)
    data = rows.toPandas()
    accuracy = loo_1nn_accuracy(np.stack(data["pca_features"].to_numpy()) if len(data) else np.empty((0, 0)), data["label"].to_numpy())
    return dg.AssetCheckResult(
        passed=bool(accuracy >= MIN_1NN_ACCURACY),
        metadata={
            "loo_1nn_accuracy": round(float(accuracy), 4),
            "threshold": MIN_1NN_ACCURACY,
            "images_scored": len(data),
            "images_total": total,
        },
    )


@dg.asset_check(
    required_resource_keys={STEP_LAUNCHER_KEY},
    asset="mobilenet_features",
    additional_ins={"raw_images": dg.AssetIn(), "image_errors": dg.AssetIn()},
    blocking=True,
    description="Counts conserved per class: raw images = feature vectors + error rows.",
)
def counts_are_conserved(mobilenet_features: DataFrame, raw_images: DataFrame, image_errors: DataFrame):
    return counts_conserved(raw_images.select("path", PARTITION_COLUMN), mobilenet_features, image_errors)


@dg.asset_check(
    asset="mobilenet_features",
    blocking=True,
    description="Every vector has 1280 finite floats.",
    required_resource_keys={STEP_LAUNCHER_KEY},
)
def features_are_finite_1280(mobilenet_features: DataFrame):
    return features_valid(mobilenet_features)


@dg.asset_check(
    required_resource_keys={STEP_LAUNCHER_KEY},
    asset="labelled_images",
    blocking=True,
    description="Every class partition has rows, and each row's label is its class folder.",
)
def labels_present(context: dg.AssetCheckExecutionContext, labelled_images: DataFrame):
    materialized = context.instance.get_materialized_partitions(dg.AssetKey("labelled_images"))
    keys = fruit_class_partitions.get_partition_keys(dynamic_partitions_store=context.instance)
    return labels_match_partitions(labelled_images, sorted(class_name(k) for k in keys if k in materialized))


@dg.asset_check(
    required_resource_keys={STEP_LAUNCHER_KEY},
    asset="pca_model",
    blocking=True,
    description="Explained variance per component is finite, non-negative, non-increasing and sums to at most 1.",
)
def explained_variance_is_valid(pca_model: PipelineModel):
    return variance_valid(pca_model.stages[-1].explainedVariance.toArray())


@dg.asset_check(
    required_resource_keys={STEP_LAUNCHER_KEY},
    asset="pca_features",
    description=f"Leave-one-out 1-nearest-neighbour accuracy by label is at least {MIN_1NN_ACCURACY}.",
)
def pca_features_separate_classes(pca_features: DataFrame):
    return nearest_neighbour_quality(pca_features)


ALL_CHECKS = [
    counts_are_conserved,
    features_are_finite_1280,
    labels_present,
    explained_variance_is_valid,
    pca_features_separate_classes,
]
