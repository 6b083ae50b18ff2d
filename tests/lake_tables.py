"""The lake as a reader other than Spark sees it: pyarrow, Hive partitions, names starting with '.' or '_' ignored."""

import pyarrow as pa
import pyarrow.dataset as ds


def lake_dataset(lake, name: str) -> ds.Dataset:
    return ds.dataset(str(lake / name), format="parquet", partitioning="hive", ignore_prefixes=[".", "_"])


def read(lake, name: str) -> pa.Table:
    return lake_dataset(lake, name).to_table()
