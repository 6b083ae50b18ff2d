"""Storage for the graph: Spark DataFrames as Parquet and Spark ML models, under the lake root.

Dagster's default IO manager pickles outputs, which cannot hold a Spark DataFrame (dagster issue #6187); this one
keeps data in the lake and hands downstream assets lazy DataFrames read back from it.
"""


import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame

from fruit_assets import lake
from fruit_assets.partitions import class_name
from resources.settings import LakeSettings

FORMAT_KEY = "lake/format"  # "parquet" (default) or "spark_ml"
CSV_EXPORT_KEY = "lake/csv_export"  # also write <asset>_csv/ with array columns flattened
ROW_GROUP_KEY = "lake/row_group_bytes"  # Parquet row-group size of a class-partitioned dataset


class SparkLakeIOManager(dg.ConfigurableIOManager):
    lake: dg.ResourceDependency[LakeSettings]
    pyspark: dg.ResourceDependency[PySparkResource]

    def _path(self, key: dg.AssetKey) -> str:
        return lake.join(lake.validate_root(self.lake.root), *key.path)

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        path = self._path(context.asset_key)
        spark = self.pyspark.spark_session
        if isinstance(obj, PipelineModel):
            lake.replace(path, spark, lambda tmp: obj.write().save(tmp))
        elif isinstance(obj, DataFrame):
            if context.has_asset_partitions:
                classes = [class_name(k) for k in context.asset_partition_keys]
                lake.write_classes(obj, path, classes, context.definition_metadata.get(ROW_GROUP_KEY))
            else:
                lake.write_table(obj, path)
            if context.definition_metadata.get(CSV_EXPORT_KEY):
                lake.write_csv(lake.read(spark, path), path + "_csv")
                context.add_output_metadata({"csv_path": dg.MetadataValue.path(path + "_csv")})
        else:
            raise TypeError(f"{type(self).__name__} stores Spark DataFrames and PipelineModels, not {type(obj)}")
        context.add_output_metadata({"path": dg.MetadataValue.path(path)})

    def load_input(self, context: dg.InputContext):
        path = self._path(context.asset_key)
        spark = self.pyspark.spark_session
        upstream = context.upstream_output
        if upstream is not None and upstream.definition_metadata.get(FORMAT_KEY) == "spark_ml":
            lake.recover(spark, path)  # a killed swap may have parked the last complete model aside
            return PipelineModel.load(path)
        classes = [class_name(k) for k in context.asset_partition_keys] if context.has_asset_partitions else None
        return lake.read(spark, path, classes)
