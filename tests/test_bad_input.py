"""Bad input through the whole graph: the awkward corpus (tests/awkward_corpus.py) mixed into real classes, one run.

What is decided here (and asserted):
- every decodable image gets a feature vector: grayscale, CMYK, alpha, PNG (also one named .jpg), 16-bit, 1x1,
  upper-case extension, .jpeg, deeper nesting (labelled with the class folder under the split), a second split, and
  the 8000x8000 image. The 16-bit PNG goes through PIL's convert("RGB") exactly as keras.utils.load_img does,
  which clips 16-bit values to 255: faithful to Keras, on purpose.
- every undecodable image file is a row in image_errors with its path, label and a specific reason;
- non-image files (.DS_Store, Thumbs.db, notes.txt) are counted as ignored, with a reason, in raw_images metadata;
- counts conserve exactly, per class: files found = feature vectors + error rows + ignored files;
- the decompression bomb is refused from its header, before any pixel is decoded; the huge image is embedded; the
  Spark Python workers' peak resident memory stays bounded (measured from /proc while the run goes);
- the image directly under the split is named, with the expected layout, in the CLI output and in raw_images
  metadata and logs, and is processed nowhere;
- the empty class folder is reported (CLI output, raw_images log and metadata), is no partition, has no rows, and no
  check fails.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from fruit_assets.cli import main
from fruit_assets.images import INPUT_SIZE, decode
from fruit_assets.layout import EXPECTED_LAYOUT
from fruit_assets.partitions import partition_key
from tests.awkward_corpus import (
    EMPTY_CLASS,
    HUGE_CLASS,
    IGNORED,
    IMAGE_ERROR,
    IMAGE_OK,
    NO_CLASS,
    WEIRD_CLASS,
    build_awkward_corpus,
)
from tests import lake_tables
from tests.conftest import TEST_SPLIT, _require_shared
from tests.materializations import latest, per_class

pytestmark = pytest.mark.slow
REAL_CLASSES = ["Banana", "Kiwi"]
K = 3
WORKER_PEAK_LIMIT = 1536 * 2**20  # bytes; one 8000x8000 RGB decode is 192 MB on top of a ~300 MB worker

# The reason each undecodable case must get (a substring of it).
EXPECTED_REASONS = {
    "zero_bytes": "empty file (0 bytes)",
    "truncated_jpeg": "truncated or corrupt image data (JPEG)",
    "random_bytes": "not a decodable image (unknown format or corrupt header)",
    "decompression_bomb": "decompression bomb refused",
}
IGNORED_REASONS = {
    ".DS_Store": "hidden file name '.DS_Store'",
    "Thumbs.db": "not an image file",
    "notes.txt": "not an image file",
}


# --------------------------------------------------------------------------------- process-tree measurements


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state) for every process we can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                table[int(entry)] = (int(fields[1]), fields[0])
            except (OSError, IndexError, ValueError):
                pass
    return table


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def spark_python_workers(root: int | None = None) -> list[int]:
    """Spark's Python workers started under `root` (this process by default): forks of a `pyspark.daemon`."""
    table = _proc_table()
    mine = _descendants(root or os.getpid(), table)
    daemons = {pid for pid in mine if b"pyspark.daemon" in _cmdline(pid)}
    return sorted(pid for pid in daemons if table[pid][0] in daemons)


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler(threading.Thread):
    """Samples, every 50 ms, the peak RSS (VmHWM) of each Spark Python worker under this process, and the total RSS
    of this process's whole tree (driver, JVM, daemon and workers)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.worker_peak = 0  # bytes
        self.tree_peak = 0  # bytes
        self.workers_seen: set[int] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            workers = spark_python_workers()
            self.workers_seen.update(workers)
            for pid in workers:
                self.worker_peak = max(self.worker_peak, _status_kb(pid, "VmHWM") * 1024)
            tree = _descendants(os.getpid(), _proc_table()) | {os.getpid()}
            self.tree_peak = max(self.tree_peak, sum(_status_kb(pid, "VmRSS") for pid in tree) * 1024)
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------------------ the run


def read(lake, name):
    return lake_tables.read(lake, name).to_pandas()


@pytest.fixture(scope="module")
def awkward_run(tmp_path_factory, weights, engine_cache):
    """One `fruits run` over the awkward corpus, with the Python workers' memory sampled throughout."""
    _require_shared()
    base = tmp_path_factory.mktemp("bad-input")
    corpus = build_awkward_corpus(base / "images", TEST_SPLIT, REAL_CLASSES, per_class=3)
    saved = dict(os.environ)
    os.environ.update(DAGSTER_HOME=str(base), FRUITS_CACHE_DIR=str(engine_cache), FRUITS_DEPLOYMENT="local")
    lake = base / "lake"
    out = io.StringIO()
    sampler = MemorySampler()
    sampler.start()
    try:
        with contextlib.redirect_stdout(out):
            code = main(["run", "--images", str(corpus.root), "--lake", str(lake), "--weights", str(weights),
                         "--pca-k", str(K)])
        sampler.stop.set()
        sampler.join()
        print(out.getvalue())
        yield {"code": code, "lake": lake, "corpus": corpus, "out": out.getvalue(), "sampler": sampler,
               "instance": dg.DagsterInstance.get()}
    finally:
        sampler.stop.set()
        os.environ.clear()
        os.environ.update(saved)


def uri(corpus, entry) -> str:
    return "file:" + str(corpus.root / entry.path)


def test_run_completes_and_every_blocking_check_passes(awkward_run):
    assert awkward_run["code"] == 0, awkward_run["out"]
    instance = awkward_run["instance"]
    for asset, check in [
        ("labelled_images", "labels_present"),
        ("mobilenet_features", "counts_are_conserved"),
        ("mobilenet_features", "features_are_finite_1280"),
        ("pca_model", "explained_variance_is_valid"),
    ]:
        key = dg.AssetCheckKey(dg.AssetKey(asset), check)
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        assert record is not None and record.event.dagster_event.event_specific_data.passed, (asset, check)


def test_every_decodable_image_has_a_feature_vector(awkward_run):
    corpus, lake = awkward_run["corpus"], awkward_run["lake"]
    features = read(lake, "mobilenet_features").set_index("path")
    expected = {uri(corpus, e): e for e in corpus.entries(IMAGE_OK)}
    assert features.index.is_unique
    assert set(features.index) == set(expected)
    for path, entry in expected.items():
        row = features.loc[path]
        assert row["label"] == entry.label and row["split"] == entry.split, path
        vector = np.asarray(row["features"])
        assert vector.shape == (1280,) and np.isfinite(vector).all(), path
    kinds = {e.kind for e in expected.values()}
    assert {"png_named_jpg", "png_rgb", "jpeg_gray_L", "jpeg_cmyk", "png_rgba", "png_gray_16bit", "jpeg_1x1",
            "upper_ext", "jpeg_ext", "nested", "jpeg_8000x8000"} <= kinds
    # the second split and the unicode/quotes/commas class came through with their own labels
    assert (features["split"] == "Training").sum() == 2
    weird = features[features["label"] == WEIRD_CLASS]
    assert len(weird) == 2 and (weird["fruit_class"] == WEIRD_CLASS).all()
    pca = read(lake, "pca_features")
    assert sorted(pca["path"]) == sorted(expected) and all(len(v) == K for v in pca["pca_features"])


def test_sixteen_bit_png_is_converted_as_keras_load_img_does(awkward_run):
    """PIL convert("RGB") clips I;16 to 8 bits (keras.utils.load_img does the same); we keep that on purpose."""
    corpus = awkward_run["corpus"]
    (entry,) = [e for e in corpus.entries(IMAGE_OK) if e.kind == "png_gray_16bit"]
    path = corpus.root / entry.path
    with Image.open(path) as img:
        assert img.mode == "I;16"
        reference = np.asarray(img.convert("RGB").resize(INPUT_SIZE, Image.BILINEAR), dtype=np.float32) / 127.5 - 1
    ours = decode(path.read_bytes())
    np.testing.assert_array_equal(ours, reference)
    assert (ours == 1.0).mean() > 0.9  # the clip: most 16-bit values are above 255, so they become white


def test_undecodable_images_are_error_rows_with_specific_reasons(awkward_run):
    corpus, lake = awkward_run["corpus"], awkward_run["lake"]
    errors = read(lake, "image_errors").set_index("path")
    expected = {uri(corpus, e): e for e in corpus.entries(IMAGE_ERROR)}
    assert errors.index.is_unique and set(errors.index) == set(expected)
    for path, entry in expected.items():
        row = errors.loc[path]
        assert row["label"] == entry.label and row["fruit_class"] == entry.label, path
        assert EXPECTED_REASONS[entry.kind] in row["reason"], (entry.kind, row["reason"])
    metadata = latest(awkward_run["instance"], "image_errors")
    assert metadata["errors"] == len(expected)
    assert all(os.path.basename(e.path) in metadata["errors_table"] for e in expected.values())


def test_non_image_files_are_counted_as_ignored_with_reasons(awkward_run):
    corpus = awkward_run["corpus"]
    raw = latest(awkward_run["instance"], "raw_images")
    ignored = corpus.entries(IGNORED)
    assert raw["ignored_files"] == len(ignored) == 3
    examples = {os.path.basename(e["path"]): e["reason"] for e in raw["ignored_examples"]}
    assert set(examples) == set(IGNORED_REASONS)
    for name, reason in IGNORED_REASONS.items():
        assert reason in examples[name], (name, examples[name])
    assert raw["images_in_subfolders"] == 1  # extra/deeper/nested.jpg, embedded with its class label


def test_counts_conserve_exactly(awkward_run):
    corpus, lake, instance = awkward_run["corpus"], awkward_run["lake"], awkward_run["instance"]
    raw = latest(instance, "raw_images")
    features, errors = read(lake, "mobilenet_features"), read(lake, "image_errors")
    in_classes = [e for e in corpus.manifest if e.category != NO_CLASS]
    # our own count of what lies in the class folders, independent of the pipeline's listing
    on_disk = sum(
        len(files) for split in corpus.root.iterdir() for folder in split.iterdir() if folder.is_dir()
        for _, _, files in os.walk(folder)
    )
    assert raw["files_found"] == len(in_classes) == on_disk
    assert raw["files_found"] == len(features) + len(errors) + raw["ignored_files"]
    assert raw["images"] == len(features) + len(errors)

    ignored_per_class = per_class(instance, "raw_images", "class_ignored_files")
    embedded = per_class(instance, "mobilenet_features", "class_images_embedded")
    failed = per_class(instance, "mobilenet_features", "class_errors")
    assert sum(failed.values()) == len(errors) > 0
    for label in {e.label for e in in_classes}:
        found = sum(e.label == label for e in in_classes)
        got = (features["label"] == label).sum() + (errors["label"] == label).sum() + ignored_per_class.get(label, 0)
        assert got == found, label
        assert embedded.get(label, 0) == (features["label"] == label).sum(), label
        assert failed.get(label, 0) == (errors["label"] == label).sum(), label


def test_bomb_is_refused_before_decoding_and_huge_image_is_embedded_in_bounded_memory(awkward_run):
    corpus, lake, sampler = awkward_run["corpus"], awkward_run["lake"], awkward_run["sampler"]
    errors = read(lake, "image_errors").set_index("path")
    (bomb,) = [e for e in corpus.entries(IMAGE_ERROR) if e.kind == "decompression_bomb"]
    reason = errors.loc[uri(corpus, bomb), "reason"]
    assert "decompression bomb refused" in reason and "400000000 pixels" in reason  # from the header: 20000x20000
    assert (corpus.root / bomb.path).stat().st_size < 100_000  # tiny on disk, 400 Mpx (1.2 GB as RGB) if decoded
    (huge,) = [e for e in corpus.entries(IMAGE_OK) if e.kind == "jpeg_8000x8000"]
    features = read(lake, "mobilenet_features")
    assert (features["path"] == uri(corpus, huge)).sum() == 1 and (features["label"] == HUGE_CLASS).sum() == 1

    assert sampler.workers_seen, "no Spark Python worker was seen: the memory measurement measured nothing"
    print(f"peak RSS: Python worker {sampler.worker_peak / 2**20:.0f} MiB, process tree {sampler.tree_peak / 2**20:.0f} MiB")
    assert 192 * 2**20 < sampler.worker_peak < WORKER_PEAK_LIMIT  # the 8000x8000 decode is in it; the bomb is not


def test_image_outside_class_folders_is_reported_with_the_expected_layout(awkward_run):
    corpus, out = awkward_run["corpus"], awkward_run["out"]
    (stray,) = corpus.entries(NO_CLASS)
    stray_path = str(corpus.root / stray.path)
    line = next((ln for ln in out.splitlines() if "outside any class folder" in ln), "")
    assert stray_path in line and EXPECTED_LAYOUT in line, out
    raw = latest(awkward_run["instance"], "raw_images")
    assert raw["files_outside_class_folders"] == [stray_path] and raw["files_outside_class_folders_count"] == 1
    assert raw["expected_layout"] == EXPECTED_LAYOUT
    for name in ["raw_images", "labelled_images", "mobilenet_features", "image_errors", "pca_features"]:
        assert not read(awkward_run["lake"], name)["path"].str.endswith("/" + stray.path).any(), name
    assert _logged(awkward_run["instance"], "raw_images", stray_path)


def test_empty_class_folder_is_reported_and_has_no_rows(awkward_run):
    instance, out, lake = awkward_run["instance"], awkward_run["out"], awkward_run["lake"]
    assert any(EMPTY_CLASS in ln and "without image files" in ln for ln in out.splitlines()), out
    raw = latest(instance, "raw_images")
    assert EMPTY_CLASS in raw["empty_class_folders"]
    assert _logged(instance, "raw_images", EMPTY_CLASS)
    assert partition_key(EMPTY_CLASS) not in instance.get_dynamic_partitions("fruit_class")
    for name in ["raw_images", "labelled_images", "mobilenet_features", "image_errors"]:
        assert EMPTY_CLASS not in set(read(lake, name)["fruit_class"]), name
    assert not (lake / "raw_images" / f"fruit_class={EMPTY_CLASS}").exists()
    key = dg.AssetCheckKey(dg.AssetKey("labelled_images"), "labels_present")
    evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key].event.dagster_event
    assert evaluation.event_specific_data.passed
    assert evaluation.event_specific_data.metadata["classes_without_rows"].value == []


def _logged(instance, step: str, text: str) -> bool:
    """Whether a log message of `step` in any run mentions `text`."""
    for record in instance.get_run_records():
        for entry in instance.all_logs(record.dagster_run.run_id):
            if entry.step_key == step and entry.user_message and text in entry.user_message and entry.level >= 20:
                return True
    return False
