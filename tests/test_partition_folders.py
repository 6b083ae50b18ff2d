"""Each class lives in a folder `fruit_class=<name>` that Spark names: our Python twin of Spark's escaping must agree
with Spark's, since preflight uses it (without Spark) to refuse names the file system cannot hold."""

import pytest

from fruit_assets import lake
from fruit_assets.lake import LakePathError, check_partition_names, partition_name
from tests.awkward_corpus import WEIRD_CLASS

NAMES = [WEIRD_CLASS, "Apple Red 1", "50% = half?", "a/b:c*d", "x#y'z^{[]}\\", "tab\there\x7f", "Pêche", "日本の柿", "~!@$&()+;"]


def test_partition_names_are_the_folders_spark_writes(spark, tmp_path):
    df = spark.createDataFrame([(i, name) for i, name in enumerate(NAMES)], f"n int, {lake.PARTITION_COLUMN} string")
    df.write.partitionBy(lake.PARTITION_COLUMN).parquet(str(tmp_path / "out"))
    written = {p.name for p in (tmp_path / "out").iterdir() if p.is_dir()}
    assert written == {partition_name(name) for name in NAMES}


def test_folder_names_over_255_bytes_are_refused_before_any_write():
    prefix = len(lake.PARTITION_COLUMN) + 1
    check_partition_names(["A" * (255 - prefix), "#" * ((255 - prefix) // 3), "é" * ((255 - prefix) // 2)])
    for name in ["A" * (256 - prefix), "#" * ((255 - prefix) // 3 + 1), "é" * ((255 - prefix) // 2 + 1)]:
        with pytest.raises(LakePathError, match=r"1 class folder name\(s\) too long for the lake: .*255 bytes"):
            check_partition_names(["Kiwi", name])
