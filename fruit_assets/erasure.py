"""Classes whose folder is gone from the images root: their rows leave every per-class dataset, so the lake and the
PCA follow the photos (the features of a deleted photo must not outlive it)."""

import dagster as dg

from fruit_assets import lake
from resources import STEP_LAUNCHER_KEY

CLASS_DATASETS = ("raw_images", "labelled_images", "mobilenet_features", "image_errors")


class RemoveClassesConfig(dg.Config):
    classes: list[str]  # class folder names, as in the `fruit_class` column


@dg.op(required_resource_keys={"pyspark", "lake_settings", STEP_LAUNCHER_KEY})
def remove_classes(context: dg.OpExecutionContext, config: RemoveClassesConfig) -> None:
    """Clears the classes from each per-class dataset with the same swap as a re-materialization (a class written
    with no rows), so a kill midway leaves each class either whole or gone."""
    spark = context.resources.pyspark.spark_session
    root = lake.validate_root(context.resources.lake_settings.root)
    for dataset in CLASS_DATASETS:
        path = lake.join(root, dataset)
        if lake.exists(spark, path):
            lake.write_classes(lake.read(spark, path, []), path, config.classes)
    context.log.info(f"removed {len(config.classes)} class(es) from {', '.join(CLASS_DATASETS)}: {config.classes}")


@dg.job(description="Remove classes (config: their folder names) from every per-class dataset in the lake.")
def prune_classes():
    remove_classes()
