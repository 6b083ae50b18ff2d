"""Tests of the awkward-corpus fixture itself (PIL only, no pipeline code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageFile, UnidentifiedImageError

from tests.awkward_corpus import (
    BOMB_SIZE,
    CATEGORIES,
    EMPTY_CLASS,
    HUGE_CLASS,
    HUGE_SIZE,
    IGNORED,
    IMAGE_ERROR,
    IMAGE_OK,
    NO_CLASS,
    WEIRD_CLASS,
    Corpus,
    build_awkward_corpus,
)

REPO = Path(__file__).resolve().parents[1]
REAL_TEST_DIR = Path(
    os.environ.get("FRUITS360_TEST_DIR", "/work/shared/data/fruits-360/Test")
)
REAL_CLASSES = ["Apple Braeburn", "Banana", "Kiwi"]
PER_CLASS = 3
A = REAL_CLASSES[0]

pytestmark = pytest.mark.skipif(
    not all((REAL_TEST_DIR / c).is_dir() for c in REAL_CLASSES),
    reason=f"real Fruits-360 images not found under {REAL_TEST_DIR}",
)


def _build(root: Path) -> Corpus:
    return build_awkward_corpus(root, REAL_TEST_DIR, REAL_CLASSES, per_class=PER_CLASS)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return _build(tmp_path_factory.mktemp("awkward") / "images")


def _files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- manifest shape


def test_manifest_matches_disk(corpus: Corpus):
    on_disk = set(_files_under(corpus.root))
    listed = [e.path for e in corpus.manifest]
    assert len(listed) == len(set(listed)), "duplicate manifest paths"
    assert set(listed) == on_disk
    for e in corpus.manifest:
        assert e.category in CATEGORIES
        assert "\\" not in e.path
        assert e.path.split("/")[0] == e.split
        if e.category == NO_CLASS:
            assert e.label is None
        else:
            # label is always the first folder under the split, however deep the file
            assert e.label == e.path.split("/")[1]


def test_counts_and_classes(corpus: Corpus):
    n_real = PER_CLASS * len(REAL_CLASSES) + 2 + 2  # + weird class + Training
    assert corpus.counts() == {
        IMAGE_OK: n_real + 11,  # 10 awkward-but-decodable in A (incl. nested) + huge.jpg
        IMAGE_ERROR: 4,
        IGNORED: 3,
        NO_CLASS: 1,
    }
    assert corpus.classes() == {
        "Test": set(REAL_CLASSES) | {HUGE_CLASS, WEIRD_CLASS},
        "Training": {A},
    }
    assert corpus.classes(IMAGE_ERROR) == {"Test": {A, HUGE_CLASS}}
    assert {p.name for p in corpus.paths(IMAGE_ERROR)} == {
        "empty.jpg", "truncated.jpg", "noise.jpg", "bomb.png"
    }
    assert {p.name for p in corpus.paths(IGNORED)} == {".DS_Store", "Thumbs.db", "notes.txt"}
    assert corpus.paths(NO_CLASS) == [corpus.root / "Test" / "stray.jpg"]


def test_layout_details(corpus: Corpus):
    root = corpus.root
    assert (root / "Test" / EMPTY_CLASS).is_dir()
    assert not any((root / "Test" / EMPTY_CLASS).iterdir())
    assert corpus.empty_dirs == [f"Test/{EMPTY_CLASS}"]
    assert corpus.entry(f"Test/{A}/extra/deeper/nested.jpg").label == A
    weird = [e for e in corpus.manifest if e.label == WEIRD_CLASS]
    assert len(weird) == 2 and all(e.category == IMAGE_OK for e in weird)
    assert (root / "Test" / WEIRD_CLASS).is_dir()
    train = [e for e in corpus.manifest if e.split == "Training"]
    assert len(train) == 2 and {e.label for e in train} == {A}
    for cls in REAL_CLASSES:
        reals = sorted(p for p in (REAL_TEST_DIR / cls).iterdir() if p.suffix == ".jpg")[:PER_CLASS]
        for src in reals:
            assert (root / "Test" / cls / src.name).read_bytes() == src.read_bytes()
    # no byte-identical duplicates among decodable images (keeps dedup logic honest)
    blobs = [p.read_bytes() for p in corpus.paths(IMAGE_OK) + corpus.paths(NO_CLASS)]
    assert len(set(blobs)) == len(blobs)


# ---------------------------------------------------------------- decodability


def _open_rgb_224(path: Path) -> tuple[str, str, tuple[int, int]]:
    with Image.open(path) as im:
        fmt, mode, size = im.format, im.mode, im.size
        rgb = im.convert("RGB")
    out = rgb.resize((224, 224), Image.BILINEAR)
    assert out.mode == "RGB" and out.size == (224, 224)
    return fmt, mode, size


def test_image_ok_files_decode(corpus: Corpus):
    seen = {}
    for p in corpus.paths(IMAGE_OK) + corpus.paths(NO_CLASS):
        seen[p.relative_to(corpus.root).as_posix()] = _open_rgb_224(p)
    t = f"Test/{A}/"
    assert seen[t + "png_named.jpg"][:2] == ("PNG", "RGB")  # content wins over extension
    assert seen[t + "real.png"][:2] == ("PNG", "RGB")
    assert seen[t + "gray.jpg"][:2] == ("JPEG", "L")
    assert seen[t + "cmyk.jpg"][:2] == ("JPEG", "CMYK")
    assert seen[t + "alpha.png"][:2] == ("PNG", "RGBA")
    assert seen[t + "deep16.png"][:2] == ("PNG", "I;16")
    assert seen[t + "tiny.jpg"] == ("JPEG", "RGB", (1, 1))
    assert seen[t + "UPPER.JPG"][:2] == ("JPEG", "RGB")
    assert seen[t + "long_ext.jpeg"][:2] == ("JPEG", "RGB")
    assert seen[t + "extra/deeper/nested.jpg"][:2] == ("JPEG", "RGB")
    assert seen[f"Test/{HUGE_CLASS}/huge.jpg"] == ("JPEG", "RGB", HUGE_SIZE)
    assert seen["Test/stray.jpg"][:2] == ("JPEG", "RGB")


def test_alpha_really_has_alpha(corpus: Corpus):
    with Image.open(corpus.root / "Test" / A / "alpha.png") as im:
        lo, hi = im.getchannel("A").getextrema()
    assert lo < 64 and hi > 192


def test_deep16_is_16_bit_and_rgb_convert_clips(corpus: Corpus):
    """Documented PIL quirk: I;16 -> RGB clips at 255 instead of scaling."""
    with Image.open(corpus.root / "Test" / A / "deep16.png") as im:
        im.load()
        lo, hi = im.getextrema()
        assert hi > 255  # genuinely uses the 16-bit range
        rgb = im.convert("RGB")
    r_lo, r_hi = rgb.getchannel("R").getextrema()
    assert r_hi == 255
    # nearly everything saturates: values are v*257, so only v == 0 stays below 255
    hist = rgb.getchannel("R").histogram()
    assert hist[255] > 0.9 * sum(hist)


def test_image_error_files_raise(corpus: Corpus):
    assert Image.MAX_IMAGE_PIXELS is not None
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    d = corpus.root / "Test"

    for name in ("empty.jpg", "noise.jpg"):
        with pytest.raises(UnidentifiedImageError, match="cannot identify image file"):
            Image.open(d / A / name)

    # truncated: header parses fine, open() succeeds; the failure only shows at load()
    with Image.open(d / A / "truncated.jpg") as im:
        assert im.format == "JPEG" and im.size == (100, 100)
        with pytest.raises(OSError, match="image file is truncated") as ei:
            im.load()
        assert type(ei.value) is OSError

    with pytest.raises(Image.DecompressionBombError, match="could be decompression bomb"):
        Image.open(d / HUGE_CLASS / "bomb.png")

    # every image_error path raises somewhere in open/load/convert
    for p in corpus.paths(IMAGE_ERROR):
        with pytest.raises(Exception):
            with Image.open(p) as im:
                im.load()
                im.convert("RGB")


def test_truncated_loads_when_load_truncated_images_on(corpus: Corpus, monkeypatch):
    """With LOAD_TRUNCATED_IMAGES the truncated JPEG 'succeeds' (grey-filled)."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _open_rgb_224(corpus.root / "Test" / A / "truncated.jpg")


def test_bomb_is_valid_png_just_too_big(corpus: Corpus, monkeypatch):
    p = corpus.root / "Test" / HUGE_CLASS / "bomb.png"
    assert p.stat().st_size < 2 * 1024 * 1024
    assert BOMB_SIZE[0] * BOMB_SIZE[1] > 2 * Image.MAX_IMAGE_PIXELS
    # with the limit lifted, the header parses (we do not decode 400M pixels)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(p) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "1", BOMB_SIZE)


def test_ignored_files_are_not_images(corpus: Corpus):
    for p in corpus.paths(IGNORED):
        with pytest.raises(UnidentifiedImageError):
            Image.open(p)


# ---------------------------------------------------------------- determinism & cost


def test_build_is_deterministic(corpus: Corpus, tmp_path):
    again = _build(tmp_path / "images")
    assert again.manifest == corpus.manifest
    assert _files_under(again.root) == _files_under(corpus.root)


_PROBE = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.awkward_corpus import build_awkward_corpus
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
build_awkward_corpus(Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]), 3)
dt = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": dt, "rss_increase_mb": (after - before) / 1024}))
"""


def test_build_time_and_memory(tmp_path):
    """Fresh interpreter so ru_maxrss is not polluted by other tests."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO), str(tmp_path / "images"),
         str(REAL_TEST_DIR), json.dumps(REAL_CLASSES)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["seconds"] < 20, stats
    # the 8000x8000 RGB image is 192 MB in memory; nothing else should be large
    assert stats["rss_increase_mb"] < 400, stats
