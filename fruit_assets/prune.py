"""Classes whose folder has no images any more: their rows leave every per-class dataset, so that the lake and the
PCA follow the photos (the features of a deleted photo must not outlive it). `fruits run --prune` runs this job,
then deletes the classes' partitions from Dagster and refits the PCA."""

import dagster as dg

from fruit_assets import lake
from resources import STEP_LAUNCHER_KEY

CLASS_DATASETS = ("raw_images", "labelled_images", "mobilenet_features", "image_errors")  # the per-class assets


class PruneConfig(dg.Config):
    classes: list[str]  # class folder names, as in the `fruit_class` column


@dg.op(required_resource_keys={"pyspark", "lake_settings", STEP_LAUNCHER_KEY})
def prune_classes_from_lake(context: dg.OpExecutionContext, config: PruneConfig) -> None:
    spark = context.resources.pyspark.spark_session
    root = lake.validate_root(context.resources.lake_settings.root)
    for dataset in CLASS_DATASETS:
        path = lake.join(root, dataset)
        if lake.exists(spark, path):
            lake.clear_classes(spark, path, config.classes)
    context.log.info(f"removed {len(config.classes)} class(es) from {', '.join(CLASS_DATASETS)}: {config.classes}")


@dg.job(description="Remove classes (config: their folder names) from every per-class dataset in the lake.")
def prune_classes():
    prune_classes_from_lake()
