"""MobileNetV2 embeddings of every labelled image, and the images that could not be embedded."""


import math
import platform
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruit_assets import lake
from fruit_assets.embedding import embed_column
from fruit_assets.images import INPUT_SIZE
from fruit_assets.lake import PARTITION_COLUMN
from fruit_assets.metadata import add_class_counts
from fruit_assets.partitions import fruit_class_partitions
from resources import StepLauncherParam
from resources.settings import ImageSource, LakeSettings, MobileNetSettings

# ~1,000 images per task: each task costs ~0.2 s of Spark/Python hand-over, and the last wave should be short
# (measured: 16-18 tasks for the 17,845-image split beat 70 by 5%, and 12 unequal ones by 3%).
IMAGES_PER_TASK = 1024
MISSING_BYTES = "listed in labelled_images but absent from raw_images: re-materialize both for this class"
PREPROCESSING = (
    "PIL decode; convert to RGB if needed; bilinear resize to 224x224 (as keras.utils.load_img); "
    "x / 127.5 - 1 (keras.applications.mobilenet_v2.preprocess_input)"
)


def local_weights(weights: str | None, cache_dir: str) -> str | None:
    """A local path for the weights, downloading an s3:// URI once into the cache."""
    if not weights or not weights.startswith("s3://"):
        return weights
    import boto3

    bucket, _, key = weights[len("s3://"):].partition("/")
    cache = (Path(cache_dir).expanduser() / "weights").resolve()
    target = (cache / bucket / key).resolve()
    if cache not in target.parents:
        raise ValueError(f"Refusing weights URI {weights!r}: it would be cached outside {cache}.")
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        boto3.client("s3").download_file(bucket, key, str(partial))
        partial.replace(target)
    return str(target)


@contextmanager
def split_scans(spark, max_bytes: int):
    """Plans file scans inside the block with splits of at most `max_bytes`, so reading raw_images yields
    tasks of about the wanted size without shuffling the image bytes (Spark's default is 128 MB per task)."""
    key = "spark.sql.files.maxPartitionBytes"
    previous = spark.conf.get(key, None)
    spark.conf.set(key, str(max_bytes))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def model_info(mobilenet: MobileNetSettings, artifact) -> dict:
    import numpy
    import PIL
    import pyspark

    from fruit_assets.engines import engine_versions

    return {
        "model": "MobileNetV2 (alpha 1.0, ImageNet weights, include_top=False, frozen, global average pooling)",
        "embedding_dim": 1280,
        "input_size": f"{INPUT_SIZE[0]}x{INPUT_SIZE[1]}x3",
        "preprocessing": PREPROCESSING,
        "weights": mobilenet.weights or "keras imagenet download",
        "weights_sha256": artifact.weights_sha256,
        "engine": artifact.engine,
        "versions": {
            **engine_versions(),
            "pyspark": pyspark.__version__,
            "pillow": PIL.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@dg.multi_asset(
    outs={
        "mobilenet_features": dg.AssetOut(
            io_manager_key="lake_io_manager",
            kinds={"spark", "parquet", "tensorflow"},
            description=(
                "A 1280-number fingerprint (embedding) of each photo from MobileNetV2, a network pretrained on "
                "ImageNet: similar-looking fruit get similar vectors. With path, label and split."
            ),
        ),
        "image_errors": dg.AssetOut(
            io_manager_key="lake_io_manager",
            kinds={"spark", "parquet"},
            description="Images that could not be decoded or embedded, each with its path, label and the reason.",
        ),
    },
    partitions_def=fruit_class_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="features",
    ins={"labelled_images": dg.AssetIn(), "raw_images": dg.AssetIn()},
)
def mobilenet_features_and_errors(
    context: dg.AssetExecutionContext,
    labelled_images: DataFrame,
    raw_images: DataFrame,
    pyspark: PySparkResource,
    images: ImageSource,
    mobilenet: MobileNetSettings,
    lake_settings: LakeSettings,
    step_launcher: StepLauncherParam,
):
    from fruit_assets.engines import prepare_artifact

    spark = pyspark.spark_session
    artifact = prepare_artifact(
        mobilenet.engine, local_weights(mobilenet.weights, mobilenet.cache_dir), Path(mobilenet.cache_dir).expanduser()
    )
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(mobilenet.arrow_batch_size))
    broadcast = spark.sparkContext.broadcast(artifact)

    catalogued = (
        labelled_images.groupBy(PARTITION_COLUMN).agg(F.count("*").alias("images"), F.sum("length").alias("bytes")).collect()
    )
    catalogued_per_class = {row[PARTITION_COLUMN]: row["images"] for row in catalogued}
    count = sum(catalogued_per_class.values())
    tasks = max(2 * spark.sparkContext.defaultParallelism, math.ceil(count / IMAGES_PER_TASK))
    # Spark packs files into splits counting each file's bytes plus an open cost, and raw_images holds one file per
    # class (lake.write_classes): left out, 1,000 images of 103 classes made 16 tasks instead of 4.
    open_cost = spark._jsparkSession.sessionState().conf().filesOpenCostInBytes()
    scan_bytes = sum(row["bytes"] or 0 for row in catalogued) + open_cost * len(catalogued_per_class)
    with split_scans(spark, max(1, math.ceil(scan_bytes / tasks))):
        images_in = raw_images.select("path", "content")
        scan_tasks = images_in.rdd.getNumPartitions()
        embedded = (
            images_in.select(
                "path",
                embed_column(
                    F.col("content"), broadcast, mobilenet.threads_per_task, images.max_image_pixels,
                    mobilenet.engine_batch_size,
                ).alias("_out"),
            )
            .join(labelled_images.select("path", "label", "split", "sha256", PARTITION_COLUMN), on="path")
            .select(
                "path", "label", "split", "sha256",
                F.col("_out.features").alias("features"), F.col("_out.error").alias("reason"), PARTITION_COLUMN,
            )
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        started = time.monotonic()
        embedded_count = embedded.count()  # the single pass over the images: decode + forward pass
        seconds = time.monotonic() - started

    features = embedded.where(F.col("reason").isNull()).drop("reason")
    errors = embedded.where(F.col("reason").isNotNull()).drop("features")
    if embedded_count < count:  # catalogued images whose bytes are gone from raw_images: errors, not silence
        missing = labelled_images.join(raw_images.select("path"), on="path", how="left_anti")
        errors = errors.unionByName(missing.select(*errors.columns[:4], F.lit(MISSING_BYTES).alias("reason"), PARTITION_COLUMN))
    embedded_per_class = {
        row[PARTITION_COLUMN]: row["n"] - row["errors"]
        for row in embedded.groupBy(PARTITION_COLUMN).agg(F.count("*").alias("n"), F.count("reason").alias("errors")).collect()
    }
    # every catalogued image is embedded or an error: unreadable, or its bytes missing from raw_images
    errors_per_class = {c: n - embedded_per_class.get(c, 0) for c, n in catalogued_per_class.items()}
    error_count = sum(errors_per_class.values())
    error_rows = errors.select("path", "label", "reason").orderBy("path").limit(200).collect() if error_count else []
    add_class_counts(
        context, {"class_images_embedded": embedded_per_class, "class_errors": errors_per_class}, "mobilenet_features"
    )

    info = model_info(mobilenet, artifact)
    info_df = spark.createDataFrame([{**info, "versions": str(info["versions"])}])
    lake.write_table(info_df, lake.join(lake.validate_root(lake_settings.root), "model_info"))

    yield dg.Output(
        features,
        output_name="mobilenet_features",
        metadata={
            "images_in": count,
            "images_embedded": sum(embedded_per_class.values()),
            "errors": error_count,
            "embedding_dim": 1280,
            "engine": artifact.engine,
            "weights_sha256": artifact.weights_sha256,
            "spark_tasks": scan_tasks,
            "embedding_seconds": round(seconds, 2),
            "images_per_second": round(embedded_count / seconds, 1) if seconds > 0 else 0.0,
            "model_info": dg.MetadataValue.json(info),
        },
    )
    yield dg.Output(
        errors,
        output_name="image_errors",
        metadata={
            "errors": error_count,
            "errors_table": dg.MetadataValue.md(
                "| path | label | reason |\n|---|---|---|\n"
                + "\n".join("| " + " | ".join(str(r[c]).replace("|", "\\|") for c in ("path", "label", "reason")) + " |" for r in error_rows)
            )
            if error_rows
            else dg.MetadataValue.text("no errors"),
        },
    )
