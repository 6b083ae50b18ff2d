"""Labelling from paths, class discovery and partition keys."""

import pytest

from fruit_assets.assets.ingest import with_location
from fruit_assets.layout import LayoutError, class_folders, discover, glob_escape
from fruit_assets.partitions import class_name, contiguous_ranges, partition_key


@pytest.mark.parametrize(
    "root, path, split, label",
    [
        ("/data/fruits", "file:/data/fruits/Test/Apple Red Yellow 1/r_12_100.jpg", "Test", "Apple Red Yellow 1"),
        ("/data/fruits", "file:/data/fruits/Training/Cherry 1/x/y/deep.jpg", "Training", "Cherry 1"),
        ("/data/fruits", 'file:/data/fruits/Test/Pêche "plate", jaune 2/a b.png', "Test", 'Pêche "plate", jaune 2'),
        ("/data/fruits", "file:/data/fruits/Test/stray.jpg", "Test", None),
        ("/data/fruits", "file:/elsewhere/Test/Kiwi/1.jpg", None, None),
        ("s3://bucket/fruits", "s3://bucket/fruits/Test/Kiwi 2/1_100.jpg", "Test", "Kiwi 2"),
    ],
)
def test_split_and_label_from_path(spark, root, path, split, label):
    row = with_location(spark.createDataFrame([(path,)], "path string"), root).first()
    assert (row["split"], row["label"]) == (split, label)


def test_discover_finds_classes_empty_folders_and_strays(tmp_path):
    for rel in ["Test/Apple 1/a.jpg", "Test/Apple 1/deep/b.PNG", "Training/Apple 1/c.jpeg", "Test/Kiwi, gold/d.jpg",
                "Test/Notes only/readme.txt", "Test/stray.jpg", "top.jpg", "Test/.hidden/e.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "Test" / "Empty").mkdir()
    found = discover(str(tmp_path))
    assert found.classes == {"Apple 1": ["Test", "Training"], "Kiwi, gold": ["Test"]}
    assert found.empty_classes == ["Empty", "Notes only"]
    assert sorted(p.rsplit("/", 1)[1] for p in found.outside_classes) == ["stray.jpg", "top.jpg"]
    folders = class_folders(str(tmp_path), ["Apple 1"])
    assert folders == {"Apple 1": [f"{tmp_path}/Test/Apple 1", f"{tmp_path}/Training/Apple 1"]}


def test_discover_refuses_missing_or_flat_roots(tmp_path):
    with pytest.raises(LayoutError, match="does not exist"):
        discover(str(tmp_path / "nope"))
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(LayoutError, match=r"Expected <images root>/<Split>/<Class name>/"):
        discover(str(tmp_path))


@pytest.mark.parametrize("name", ["Apple Red 1", 'Pêche "plate", jaune 2', "a,b", "x[1]*", "50% off", "wait...what", "tab\there"])
def test_partition_keys_round_trip_and_avoid_dagster_separators(name):
    key = partition_key(name)
    assert class_name(key) == name
    assert not any(bad in key for bad in [",", "[", "]", "*", "...", "\t"])


def test_contiguous_ranges():
    ordered = ["a", "b", "c", "d", "e"]
    assert contiguous_ranges(["a", "b", "c", "d", "e"], ordered) == [("a", "e")]
    assert contiguous_ranges(["b", "d", "e"], ordered) == [("b", "b"), ("d", "e")]
    assert contiguous_ranges([], ordered) == []


def test_glob_escape_reads_brackets_literally(spark, tmp_path):
    folder = tmp_path / "Test" / "A[1]{x}"
    folder.mkdir(parents=True)
    (folder / "q.jpg").write_bytes(b"abc")
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(glob_escape(str(folder)))
    assert [r["length"] for r in df.collect()] == [3]
