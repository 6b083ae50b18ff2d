"""Reading and replacing datasets in the lake, so readers never see a half-written dataset.

Everything goes through Hadoop's FileSystem (via Spark's JVM), which speaks both local paths and, on EMR, `s3://`.
- Class-partitioned datasets are Parquet partitioned by `fruit_class`; a write replaces exactly the classes it
  names (Spark's dynamic partition overwrite, which stages files and moves them in at commit), and clears named
  classes that now have no rows.
- Whole datasets (and Spark ML models) are written beside the target and swapped in by rename, so a killed write
  leaves the previous version in place.
"""

from __future__ import annotations

import json
import posixpath
import uuid

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

PARTITION_COLUMN = "fruit_class"
SCHEMA_FILE = "_schema.json"  # kept beside the data so an empty dataset still reads back with its columns


class LakePathError(ValueError):
    """A configured path would escape the lake root or is malformed."""


def join(root: str, *parts: str) -> str:
    for part in parts:
        if not part or part in (".", "..") or ".." in part.split("/") or part.startswith("/"):
            raise LakePathError(f"Refusing lake path part {part!r}: no empty, absolute or '..' segments allowed.")
    return posixpath.join(root.rstrip("/"), *parts)


def validate_root(root: str) -> str:
    """Lake roots are absolute local paths or s3:// URIs without '..' segments."""
    if not root:
        raise LakePathError("The lake root is empty (set FRUITS_LAKE_ROOT or --lake).")
    body = root.split("://", 1)[1] if "://" in root else root
    if ".." in body.split("/"):
        raise LakePathError(f"Refusing lake root {root!r}: '..' segments are not allowed.")
    if "://" in root and not root.startswith(("s3://", "s3a://", "file://")):
        raise LakePathError(f"Unsupported lake root scheme in {root!r}; use a local path or s3://bucket/prefix.")
    return root.rstrip("/")


def _jvm(spark: SparkSession):
    return spark.sparkContext._jvm


def _fs(spark: SparkSession, path: str):
    jvm = _jvm(spark)
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    return jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), jpath


def exists(spark: SparkSession, path: str) -> bool:
    fs, jpath = _fs(spark, path)
    return fs.exists(jpath)


def delete(spark: SparkSession, path: str) -> None:
    fs, jpath = _fs(spark, path)
    if fs.exists(jpath):
        fs.delete(jpath, True)


def _rename(spark: SparkSession, src: str, dst: str) -> None:
    fs, jsrc = _fs(spark, src)
    jdst = _jvm(spark).org.apache.hadoop.fs.Path(dst)
    if not fs.rename(jsrc, jdst):
        raise OSError(f"Could not move {src} to {dst}")


def write_text(spark: SparkSession, path: str, text: str) -> None:
    fs, jpath = _fs(spark, path)
    stream = fs.create(jpath, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def read_text(spark: SparkSession, path: str) -> str:
    fs, jpath = _fs(spark, path)
    stream = fs.open(jpath)
    try:
        return _jvm(spark).org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def partition_dir(spark: SparkSession, path: str, class_name: str) -> str:
    escaped = _jvm(spark).org.apache.spark.sql.catalyst.catalog.ExternalCatalogUtils.escapePathName(class_name)
    return f"{path}/{PARTITION_COLUMN}={escaped}"


def write_classes(df: DataFrame, path: str, class_names: list[str]) -> None:
    """Replace exactly `class_names` in the class-partitioned dataset at `path`."""
    spark = df.sparkSession
    stray = df.where(~F.col(PARTITION_COLUMN).isin(class_names)).limit(1).count() if class_names else 0
    if stray:
        raise ValueError(f"DataFrame holds rows of classes other than {class_names}; refusing to write them.")
    (
        df.repartition(PARTITION_COLUMN)  # one file per class and task, not one per class in every task
        .write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy(PARTITION_COLUMN)
        .parquet(path)
    )
    write_text(spark, f"{path}/{SCHEMA_FILE}", df.schema.json())
    present = {r[0] for r in df.select(PARTITION_COLUMN).distinct().collect()}
    for name in set(class_names) - present:
        delete(spark, partition_dir(spark, path, name))


def replace(path: str, spark: SparkSession, write) -> None:
    """Write via `write(tmp_path)` next to `path`, then swap it in; the old version survives a failed write."""
    tmp = f"{path}.__writing-{uuid.uuid4().hex}"
    old = f"{path}.__old-{uuid.uuid4().hex}"
    try:
        write(tmp)
        if exists(spark, path):
            _rename(spark, path, old)
        _rename(spark, tmp, path)
    finally:
        delete(spark, tmp)
    delete(spark, old)


def write_table(df: DataFrame, path: str) -> None:
    def write(tmp: str) -> None:
        df.write.mode("error").parquet(tmp)
        write_text(df.sparkSession, f"{tmp}/{SCHEMA_FILE}", df.schema.json())

    replace(path, df.sparkSession, write)


def write_csv(df: DataFrame, path: str) -> None:
    """CSV for people and spreadsheets: array columns flattened to `<name>_1..n`, with a header."""
    flat = []
    for field in df.schema.fields:
        if field.dataType.typeName() == "array":
            width = df.select(F.max(F.size(field.name))).first()[0] or 0
            flat += [F.col(field.name)[i].alias(f"{field.name}_{i + 1}") for i in range(width)]
        else:
            flat.append(F.col(field.name))
    out = df.select(*flat)
    replace(path, df.sparkSession, lambda tmp: out.write.mode("error").option("header", True).csv(tmp))


def read(spark: SparkSession, path: str, class_names: list[str] | None = None) -> DataFrame:
    """The dataset at `path`, restricted to `class_names` when given (class-partitioned datasets only)."""
    if not exists(spark, path):
        raise FileNotFoundError(f"No dataset at {path}: materialize its asset first.")
    reader = spark.read.option("basePath", path)
    schema_path = f"{path}/{SCHEMA_FILE}"
    if exists(spark, schema_path):
        reader = reader.schema(StructType.fromJson(json.loads(read_text(spark, schema_path))))
    df = reader.parquet(path)
    if class_names is not None:
        df = df.where(F.col(PARTITION_COLUMN).isin(class_names))
    return df
