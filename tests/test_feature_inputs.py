"""How mobilenet_features reads its inputs: image bytes scanned in tasks without a shuffle, vectors stored plain,
and catalogued images whose bytes are gone reported as errors rather than dropped."""

from __future__ import annotations

import os

import dagster as dg
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from fruit_assets import lake
from fruit_assets.assets.features import MISSING_BYTES, split_scans
from fruit_assets.cli import main
from fruit_assets.partitions import partition_key
from tests.conftest import TEST_SPLIT, copy_images
from tests.materializations import latest

pytestmark = pytest.mark.slow


def _files(path):
    return sorted(p for p in path.rglob("*.parquet") if not any(part.startswith((".", "_")) for part in p.parts))


def _written_encodings(df, path) -> dict:
    """The Parquet encodings of each column, after lake.write_classes wrote `df` (one class) to `path`."""
    lake.write_classes(df, str(path), ["Kiwi"])
    (file,) = _files(path)
    meta = pq.ParquetFile(file).metadata.row_group(0)
    return {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}


def test_small_row_groups_let_one_large_class_be_read_by_several_tasks(spark, tmp_path):
    rows = 600  # Parquet closes a row group after 100 rows at least
    one_class = spark.createDataFrame(
        [(f"/images/Test/Only class/{i}.jpg", 5000, bytearray(os.urandom(5000)), "Only class") for i in range(rows)],
        "path string, length long, content binary, fruit_class string",
    )
    total = rows * 5000
    target = tmp_path / "raw"
    lake.write_classes(one_class, str(target), ["Only class"], row_group_bytes=total // 5)
    (file,) = _files(target)
    assert pq.ParquetFile(file).metadata.num_row_groups >= 4

    with split_scans(spark, total // 4):
        rows_per_task = lake.read(spark, str(target)).rdd.glom().map(len).collect()
    assert sum(rows_per_task) == rows
    assert sum(1 for n in rows_per_task if n) >= 3, rows_per_task  # not one task holding the whole class
    assert spark.conf.get("spark.sql.files.maxPartitionBytes", None) != str(total // 4)  # restored afterwards


def test_many_small_classes_are_scanned_in_about_the_wanted_number_of_tasks(fruits_env, tmp_path, spark):
    """raw_images holds one small file per class; Spark charges each file an open cost when it packs a scan, so
    the split size must include it, or every class becomes a task of its own (~0.2 s of hand-over each)."""
    wanted = 2 * spark.sparkContext.defaultParallelism  # what mobilenet_features asks for below 1,024 images a task
    classes = sorted(p.name for p in TEST_SPLIT.iterdir())[: max(12, 3 * wanted)]
    images = copy_images(tmp_path / "images", classes=classes, per_class=3)
    assert main(["run", "--images", str(images), "--lake", str(fruits_env["lake"]), "--pca-k", "2"]) == 0

    meta = latest(dg.DagsterInstance.get(), "mobilenet_features")
    assert meta["images_embedded"] == 3 * len(classes)
    assert meta["spark_tasks"] <= wanted + 1, (meta["spark_tasks"], wanted, len(classes))


def test_vectors_are_stored_without_a_dictionary_and_strings_with_one(spark, tmp_path):
    df = spark.createDataFrame(
        [(f"p{i}", "Kiwi", [float(i) + j / 7 for j in range(64)], "Kiwi") for i in range(200)],
        "path string, label string, features array<float>, fruit_class string",
    )
    encodings = _written_encodings(df, tmp_path / "t")
    assert not any("DICTIONARY" in e for e in encodings["features.list.element"]), encodings
    assert any("DICTIONARY" in e for e in encodings["label"]), encodings


def test_file_bytes_are_stored_without_a_dictionary(spark, tmp_path):
    df = spark.createDataFrame([(f"p{i}", bytearray(os.urandom(300)), "Kiwi") for i in range(50)], "path string, content binary, fruit_class string")
    encodings = _written_encodings(df, tmp_path / "t")
    assert not any("DICTIONARY" in e for e in encodings["content"]), encodings


def test_catalogued_images_whose_bytes_are_gone_become_error_rows(fruits_env, tmp_path, spark):
    images = copy_images(tmp_path / "images", classes=["Kiwi"], per_class=4)
    lake_root = fruits_env["lake"]
    assert main(["run", "--images", str(images), "--lake", str(lake_root), "--pca-k", "2"]) == 0

    raw_path = str(lake_root / "raw_images")
    raw = lake.read(spark, raw_path).toPandas()
    gone = sorted(raw["path"])[1]
    kept = spark.createDataFrame(raw[raw["path"] != gone]).select(*lake.read(spark, raw_path).columns)
    lake.write_classes(kept, raw_path, ["Kiwi"])

    from fruit_assets.assets import ALL_ASSETS
    from resources import build_resources

    result = dg.materialize(
        ALL_ASSETS,
        selection=[dg.AssetKey("mobilenet_features"), dg.AssetKey("image_errors")],
        resources=build_resources(),
        partition_key=partition_key("Kiwi"),
        instance=dg.DagsterInstance.get(),
    )
    assert result.success
    errors = ds.dataset(str(lake_root / "image_errors"), partitioning="hive", ignore_prefixes=[".", "_"]).to_table().to_pandas()
    features = ds.dataset(str(lake_root / "mobilenet_features"), partitioning="hive", ignore_prefixes=[".", "_"]).to_table()
    assert errors["path"].tolist() == [gone] and errors["reason"].tolist() == [MISSING_BYTES]
    assert errors["label"].tolist() == ["Kiwi"]
    assert sorted(features.column("path").to_pylist()) == sorted(p for p in raw["path"] if p != gone)
    meta = result.asset_materializations_for_node("mobilenet_features_and_errors")[0].metadata
    assert meta["errors"].value == 1 and meta["images_in"].value == 4 and meta["images_embedded"].value == 3
