"""Ingest: the photos of each fruit class, read with Spark's binaryFile source, then labelled from their folders."""


import time

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from fruit_assets.images import IMAGE_EXTENSIONS
from fruit_assets.lake import PARTITION_COLUMN, check_partition_names
from fruit_assets.layout import EXPECTED_LAYOUT, LayoutError, discover, glob_escape, normalize_root, spark_path
from fruit_assets.metadata import add_class_counts, count_table
from fruit_assets.partitions import class_name, fruit_class_partitions
from resources import StepLauncherParam
from resources.io_managers import ROW_GROUP_KEY
from resources.settings import ImageSource

IMAGE_PATH_REGEX = r"(?i)\.(" + "|".join(e.lstrip(".") for e in IMAGE_EXTENSIONS) + r")$"


class RawImagesConfig(dg.Config):
    limit_per_class: int | None = None  # "mini" mode: the first N images of each class, by path


def read_class_files(spark, folders: list[str]) -> DataFrame:
    """Every file under the given class folders (Spark reads a file's bytes only if `content` is used).

    A file Spark lists but cannot open (no read permission, or removed since the listing) is skipped rather than
    failing the whole run after four task retries; raw_images writes the unreadable images' rows itself."""
    return (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("ignoreMissingFiles", "true")  # Java reports "Permission denied" as FileNotFoundException
        .load([glob_escape(f) for f in folders])
    )


# Both ingest assets: one partition per class, backfilled in one run, stored as Parquet in the lake.
PER_CLASS_INGEST = dict(
    partitions_def=fruit_class_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    io_manager_key="lake_io_manager",
    group_name="ingest",
    kinds={"spark", "parquet"},
)


@dg.asset(
    **PER_CLASS_INGEST,
    # ~1 MB row groups: mobilenet_features scans the bytes in tasks of about a thousand images without a shuffle,
    # which Spark can split only between row groups (Parquet's default is 128 MB, i.e. a class per task).
    metadata={ROW_GROUP_KEY: 1 << 20},
    description=(
        "Every photo file (.jpg/.jpeg/.png) found under the images root: its path, size and raw bytes, "
        "one partition per fruit class."
    ),
)
def raw_images(
    context: dg.AssetExecutionContext,
    config: RawImagesConfig,
    pyspark: PySparkResource,
    images: ImageSource,
    step_launcher: StepLauncherParam,
) -> dg.Output[DataFrame]:
    started = time.monotonic()
    spark = pyspark.spark_session
    classes = [class_name(k) for k in context.partition_keys]
    found = discover(images.root)  # the inventory: what is in each class folder, and what lies outside any
    missing = sorted(c for c in classes if c not in found.inventory)
    if missing:
        raise LayoutError(
            f"No folder for class(es) {missing} under any split of {found.root!r} "
            f"(expected {EXPECTED_LAYOUT}). Was the folder renamed or removed?"
        )
    check_partition_names(classes)
    inventory = {c: found.inventory[c] for c in classes}
    all_folders = [f"{found.root}/{split}/{c}" for c in classes for split in inventory[c].splits]
    files = read_class_files(spark, all_folders).select("path", "length", "content")
    # Rows Spark would not give: empty files (its file sources skip them) and files this user may not read (Spark
    # lists them, then skips them). Both become error rows downstream; null content marks the unreadable.
    unreadable = {spark_path(p): size for c in classes for p, size in inventory[c].unreadable_images}
    placeholders = [(p, 0, bytearray()) for c in classes for p in map(spark_path, inventory[c].zero_byte_images)]
    placeholders += [(p, size, None) for p, size in unreadable.items()]
    if unreadable:
        files = files.where(~F.col("path").isin(list(unreadable)))
        context.log.warning(
            f"{len(unreadable)} image file(s) cannot be read by this user (no read permission); they become rows of "
            f"image_errors: {sorted(unreadable)[:10]}"
        )
    if placeholders:
        files = files.unionByName(spark.createDataFrame(placeholders, files.schema))
    files = with_location(files, images.root).select("path", "length", "content", F.col("label").alias(PARTITION_COLUMN))
    is_image = F.col("path").rlike(IMAGE_PATH_REGEX)
    listing = files.where(is_image).groupBy(PARTITION_COLUMN)
    summary = listing.agg(F.count("*").alias("files"), F.sum("length").alias("bytes")).collect()
    read = {c: 0 for c in classes}
    for row in summary:
        read[row[PARTITION_COLUMN]] += row["files"]
    changed = {c: {"listed": inventory[c].images, "read_by_spark": read[c]} for c in classes if read[c] != inventory[c].images}
    if changed:
        context.log.warning(f"Image files changed while this run listed them (rows follow what Spark read): {changed}")
    image_files = files.where(is_image)
    selected = dict(read)
    if config.limit_per_class:
        ranked = F.row_number().over(Window.partitionBy(PARTITION_COLUMN).orderBy("path"))
        image_files = image_files.withColumn("_rank", ranked).where(F.col("_rank") <= config.limit_per_class).drop("_rank")
        selected = {c: min(n, config.limit_per_class) for c, n in read.items()}
    bytes_read = sum(r["bytes"] or 0 for r in summary)
    ignored = {c: inventory[c].ignored for c in classes}
    ignored_examples = [{"path": p, "reason": r} for c in classes for p, r in inventory[c].ignored_examples][:50]
    in_subfolders = sum(inventory[c].in_subfolders for c in classes)
    empty = sorted(c for c, n in selected.items() if n == 0)
    if empty:
        context.log.warning(f"Class folders with no image files (no rows written): {empty}")
    if found.empty_classes:
        context.log.warning(
            f"Class folders without image files under {found.root!r} (not partitions, no rows): {found.empty_classes[:20]}"
        )
    if found.outside_classes:
        context.log.warning(found.outside_message(limit=20))
    if note := found.nesting_note():
        context.log.warning(note)
    if sum(ignored.values()):
        context.log.info(f"{sum(ignored.values())} file(s) ignored in class folders, e.g. {ignored_examples[:5]}")
    context.log.info(
        f"{sum(selected.values())} image files in {len(classes)} classes; {sum(ignored.values())} other files ignored"
    )
    add_class_counts(context, {"class_images": selected, "class_ignored_files": ignored})
    return dg.Output(
        image_files,
        metadata={
            "images": sum(selected.values()),
            "classes": len(classes),
            "files_found": sum(inventory[c].files for c in classes),  # = images + ignored (+ images over the limit)
            "ignored_files": sum(ignored.values()),
            "ignored_examples": dg.MetadataValue.json(ignored_examples),
            "images_over_limit": sum(read.values()) - sum(selected.values()),
            "images_in_subfolders": in_subfolders,
            "empty_classes": dg.MetadataValue.json(empty),
            "empty_class_folders": dg.MetadataValue.json(found.empty_classes),
            "files_outside_class_folders": dg.MetadataValue.json(found.outside_classes[:100]),
            "files_outside_class_folders_count": len(found.outside_classes),
            "expected_layout": EXPECTED_LAYOUT,
            "listing_changed_during_run": dg.MetadataValue.json(changed),
            "bytes_listed": int(bytes_read),
            "images_root": images.root,
            "limit_per_class": config.limit_per_class or 0,
            "listing_seconds": round(time.monotonic() - started, 2),
        },
    )


def with_location(files: DataFrame, images_root: str) -> DataFrame:
    """Adds `split` and `label` (the folder right under the split) from each path relative to the images root."""
    prefix = spark_path(normalize_root(images_root)) + "/"
    relative = F.expr(f"substring(path, {len(prefix) + 1})")
    parts = F.split(relative, "/")
    return (
        files.withColumn("_prefix_ok", F.col("path").startswith(prefix))
        .withColumn("split", F.when(F.col("_prefix_ok"), parts.getItem(0)))
        .withColumn("label", F.when(F.col("_prefix_ok") & (F.size(parts) >= 3), parts.getItem(1)))
        .drop("_prefix_ok")
    )


@dg.asset(
    **PER_CLASS_INGEST,
    description=(
        "Each image's label (the class folder name), split (e.g. Test) and SHA-256 of its bytes; "
        "the bytes themselves stay in raw_images."
    ),
)
def labelled_images(
    context: dg.AssetExecutionContext, raw_images: DataFrame, images: ImageSource, step_launcher: StepLauncherParam
) -> dg.Output[DataFrame]:
    labelled = with_location(raw_images, images.root).withColumn("sha256", F.sha2(F.col("content"), 256))
    labelled = labelled.select("path", "label", "split", "sha256", "length", PARTITION_COLUMN)
    per_split = {r["split"] or "?": r["count"] for r in labelled.groupBy("split").count().collect()}
    return dg.Output(
        labelled,
        metadata={
            "images": sum(per_split.values()),
            "images_per_split": count_table(per_split, key="split"),
        },
    )
