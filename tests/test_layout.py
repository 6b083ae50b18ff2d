"""Labelling from paths, class discovery and partition keys."""

import os

import boto3
import pytest

from fruit_assets.assets.ingest import read_class_files, with_location
from fruit_assets.layout import LayoutError, class_folders, discover, glob_escape
from fruit_assets.partitions import class_name, contiguous_ranges, partition_key
from tests.aws_server import moto_endpoint  # noqa: F401  (pytest fixture)


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


def _files(root, *relative):
    for rel in relative:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def test_a_root_one_level_too_high_gets_a_warning_naming_the_right_root(tmp_path, monkeypatch):
    _files(tmp_path, "fruits-360/Test/Apple 1/a.jpg", "fruits-360/Test/Kiwi/b.jpg", "fruits-360/Training/Kiwi/c.jpg")
    found = discover(str(tmp_path))  # fruits-360 taken for the split, Test and Training for classes
    assert found.class_names == ["Test", "Training"]
    assert f"the images root is one level too high: use {tmp_path}/fruits-360 " in found.nesting_note()
    assert discover(str(tmp_path / "fruits-360")).nesting_note() is None

    from fruit_assets.preflight import preflight
    from resources import settings_resources

    monkeypatch.setenv("FRUITS_IMAGES_ROOT", str(tmp_path))
    monkeypatch.setenv("FRUITS_LAKE_ROOT", str(tmp_path / "lake"))
    monkeypatch.setenv("FRUITS_PCA_K", "1")
    assert found.nesting_note() in preflight(settings_resources(), weights=False).notes  # `fruits run` prints it


def test_images_nested_below_their_class_folders_keep_their_class(tmp_path):
    """Subfolders of a class folder (say one per day) are legal: every image there is labelled with its class."""
    _files(tmp_path, "Test/Apple/2024-01/a.jpg", "Test/Kiwi/batch1/b.jpg", "Training/Kiwi/batch2/c.jpg")
    found = discover(str(tmp_path))
    assert found.classes == {"Apple": ["Test"], "Kiwi": ["Test", "Training"]}
    assert found.inventory["Kiwi"].in_subfolders == 2 and "one level too high" in found.nesting_note()
    _files(tmp_path, "Test/Apple/d.jpg")
    assert discover(str(tmp_path)).nesting_note() is None


def test_an_s3_root_one_level_too_high_gets_the_same_warning(moto_endpoint):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="layout-too-high", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for key in ["data/fruits-360/Test/Apple 1/a.jpg", "data/fruits-360/Test/Kiwi/b.jpg"]:
        s3.put_object(Bucket="layout-too-high", Key=key, Body=b"x")
    assert "one level too high: use s3://layout-too-high/data/fruits-360 " in discover("s3://layout-too-high/data").nesting_note()
    assert discover("s3://layout-too-high/data/fruits-360").nesting_note() is None


def test_discover_follows_folder_links_as_spark_does(tmp_path):
    _files(tmp_path, "Test/Apple/a.jpg", "elsewhere/more/b.jpg", "elsewhere/more/c.png", "kiwis/k.jpg")
    (tmp_path / "Test/Apple/more").symlink_to(tmp_path / "elsewhere/more")
    (tmp_path / "Test/Kiwi").symlink_to(tmp_path / "kiwis")  # a class folder that is a link
    (tmp_path / "Test/Apple/gone.jpg").symlink_to("missing")
    found = discover(str(tmp_path))
    apple = found.inventory["Apple"]
    assert (apple.files, apple.images, apple.in_subfolders, apple.ignored) == (4, 3, 2, 1)
    assert apple.ignored_examples == [(f"{tmp_path}/Test/Apple/gone.jpg", "broken symbolic link: its target does not exist")]
    assert found.inventory["Kiwi"].images == 1


@pytest.mark.parametrize("target", [".", "..", "../.."])
def test_discover_refuses_a_folder_link_that_loops(tmp_path, target):
    _files(tmp_path, "Test/Apple/a.jpg")
    (tmp_path / "Test/Apple/sub").mkdir()
    (tmp_path / "Test/Apple/sub/loop").symlink_to(target)
    with pytest.raises(LayoutError, match=f"symbolic link '{tmp_path}/Test/Apple/sub/loop' .*list it endlessly"):
        discover(str(tmp_path))


def test_discover_counts_what_spark_reads(spark, tmp_path):
    """Spark lists `_metadata*` folders but reads no file named `_...` (without '='), follows folder links, and skips
    broken links: discovery's image count must be exactly what binaryFile reads."""
    names = ["plain.jpg", "_metadata_1.jpg", "_common_metadata.png", "_x.jpg", "a=_b.jpg", "_a=b.jpg", ".h.jpg",
             "x.jpg._COPYING_", "_metadata_dir/y.jpg", "_common_metadata/y.jpg", "_sub/y.jpg", "_k=v/y.jpg",
             ".hid/y.jpg", "ok/_z.jpg", "ok/z.jpg"]
    _files(tmp_path / "Test/C", *names)
    _files(tmp_path, "outside/o.jpg", "outside/_o.jpg")
    (tmp_path / "Test/C/linked").symlink_to(tmp_path / "outside")
    (tmp_path / "Test/C/gone.jpg").symlink_to("missing")
    found = discover(str(tmp_path))
    spark_paths = [r.path for r in read_class_files(spark, [f"{tmp_path}/Test/C"]).collect()]
    assert sorted(p.rsplit("/C/", 1)[1] for p in spark_paths) == [
        "_a=b.jpg", "_common_metadata/y.jpg", "_k=v/y.jpg", "_metadata_dir/y.jpg", "a=_b.jpg", "linked/o.jpg",
        "ok/z.jpg", "plain.jpg"]
    c = found.inventory["C"]
    assert (c.images, c.files) == (len(spark_paths), len(names) + 3)


def test_what_spark_never_enters_cannot_fail_discovery(tmp_path):
    """Hidden folders: a loop or a name that is not UTF-8 inside `__MACOSX/` or behind `.parent` is Spark's to skip."""
    _files(tmp_path, "Test/Apple/a.jpg", "Test/Apple/__MACOSX/x.jpg")
    (tmp_path / "Test/Apple/.parent").symlink_to("..")
    (tmp_path / "Test/Apple/__MACOSX/up").symlink_to("../..")
    open(os.fsencode(tmp_path) + b"/Test/Apple/__MACOSX/\xe9t\xe9.jpg", "wb").close()
    apple = discover(str(tmp_path)).inventory["Apple"]
    assert (apple.images, apple.ignored) == (1, 4)
    assert f"{tmp_path}/Test/Apple/__MACOSX/\\xe9t\\xe9.jpg" in [path for path, _ in apple.ignored_examples]


def test_a_class_folder_link_to_nothing_is_an_error_not_an_empty_class(tmp_path):
    _files(tmp_path, "Test/Apple/a.jpg")
    (tmp_path / "Test/Kiwi").symlink_to(tmp_path / "unmounted/Kiwi")
    with pytest.raises(LayoutError, match=f"class folder '{tmp_path}/Test/Kiwi' is a symbolic link to .*does not exist"):
        discover(str(tmp_path))


def test_discover_refuses_names_that_are_not_utf8(tmp_path):
    _files(tmp_path, "Test/Kiwi/ok.jpg")
    root = os.fsencode(tmp_path)
    os.makedirs(root + b"/Test/P\xeache")
    open(root + b"/Test/P\xeache/a.jpg", "wb").close()
    open(root + b"/Test/Kiwi/\xe9t\xe9.jpg", "wb").close()
    with pytest.raises(LayoutError) as raised:
        discover(str(tmp_path))
    message = str(raised.value)
    assert message.startswith(f"2 name(s) under '{tmp_path}' are not valid UTF-8")
    assert repr(root + b"/Test/P\xeache") in message and repr(root + b"/Test/Kiwi/\xe9t\xe9.jpg") in message
    assert "convmv -r -f latin1 -t utf-8" in message


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
