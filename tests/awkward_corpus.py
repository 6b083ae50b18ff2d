"""Build a Fruits-360-style image tree that mixes real images with awkward cases.

Everything awkward is generated at test time with PIL/numpy (no committed
binaries); real images are copied byte-for-byte from the shared data set.

Layout produced under ``root`` (A = ``real_classes[0]``)::

    Test/<real class>/<per_class real jpgs>
    Test/<A>/empty.jpg truncated.jpg noise.jpg png_named.jpg real.png gray.jpg
             cmyk.jpg alpha.png deep16.png tiny.jpg UPPER.JPG long_ext.jpeg
             .DS_Store Thumbs.db notes.txt
    Test/<A>/extra/deeper/nested.jpg          (label is still A)
    Test/Huge things/huge.jpg bomb.png
    Test/Pêche "plate", jaune 2/<2 real jpgs>
    Test/Empty class/                         (no files)
    Test/stray.jpg                            (no class)
    Training/<A>/<2 real jpgs>

The build is deterministic: two builds give byte-identical files.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_OK = "image_ok"
IMAGE_ERROR = "image_error"
IGNORED = "ignored"
NO_CLASS = "no_class"
CATEGORIES = (IMAGE_OK, IMAGE_ERROR, IGNORED, NO_CLASS)

TEST_SPLIT = "Test"
TRAIN_SPLIT = "Training"
HUGE_CLASS = "Huge things"
WEIRD_CLASS = 'Pêche "plate", jaune 2'
EMPTY_CLASS = "Empty class"

HUGE_SIZE = (8000, 8000)
BOMB_SIZE = (20000, 20000)  # 400M px > 2 * Image.MAX_IMAGE_PIXELS (~179M)

SEED = 360
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the corpus root, '/'-separated
    category: str  # one of CATEGORIES
    label: str | None  # class folder name; None for no_class
    split: str
    kind: str = ""  # short description of the awkward case ("real", "cmyk", ...)


@dataclass
class Corpus:
    root: Path
    manifest: list[Entry] = field(default_factory=list)
    empty_dirs: list[str] = field(default_factory=list)  # relative, '/'-separated

    def entries(self, category: str | None = None) -> list[Entry]:
        return [e for e in self.manifest if category is None or e.category == category]

    def paths(self, category: str | None = None) -> list[Path]:
        """Absolute paths of the files in ``category`` (all files if None)."""
        return [self.root / e.path for e in self.entries(category)]

    def counts(self) -> dict[str, int]:
        c = Counter(e.category for e in self.manifest)
        return {cat: c.get(cat, 0) for cat in CATEGORIES}

    def classes(self, category: str | None = None) -> dict[str, set[str]]:
        """split -> set of class labels having at least one file (of ``category``,
        any category if None). Empty class folders and no_class files are excluded."""
        out: dict[str, set[str]] = {}
        for e in self.entries(category):
            if e.label is not None:
                out.setdefault(e.split, set()).add(e.label)
        return out

    def entry(self, rel_path: str) -> Entry:
        for e in self.manifest:
            if e.path == rel_path:
                return e
        raise KeyError(rel_path)


# --------------------------------------------------------------------------- helpers


def _real_jpgs(class_dir: Path) -> list[Path]:
    files = sorted(
        p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg")
    )
    if not files:
        raise FileNotFoundError(f"no real JPEGs in {class_dir}")
    return files


def _pick(files: list[Path], start: int, n: int) -> list[Path]:
    """n files starting at ``start`` (wrapping if the class is small)."""
    return [files[(start + i) % len(files)] for i in range(n)]


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)


def _write_bomb_png(path: Path, size: tuple[int, int]) -> None:
    """A valid 1-bit grayscale PNG of ``size`` that is tiny on disk.

    Written chunk by chunk with zlib so that no full-size buffer ever exists
    (raw data is ~50 MB for 20000x20000 at 1 bit/px; compressed ~50 KB).
    """
    w, h = size
    row = b"\x00" * (1 + (w + 7) // 8)  # filter byte 0 + packed zero bits
    rows_per_chunk = 256
    block = row * rows_per_chunk

    comp = zlib.compressobj(9)
    parts = []
    done = 0
    while done < h:
        n = min(rows_per_chunk, h - done)
        parts.append(comp.compress(block if n == rows_per_chunk else row * n))
        done += n
    parts.append(comp.flush())
    idat = b"".join(parts)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- builder


def build_awkward_corpus(
    root: Path, real_test_dir: Path, real_classes: list[str], per_class: int = 3
) -> Corpus:
    """Build the awkward corpus under ``root`` and return its manifest.

    ``real_test_dir`` is e.g. ``.../fruits-360/Test``; ``real_classes`` names
    class folders in it (at least one). Real files are taken in sorted order.
    """
    if not real_classes:
        raise ValueError("need at least one real class")
    root = Path(root)
    real_test_dir = Path(real_test_dir)
    corpus = Corpus(root=root)
    rng = np.random.default_rng(SEED)

    def add(rel: str, category: str, label: str | None, split: str, kind: str) -> None:
        corpus.manifest.append(Entry(rel, category, label, split, kind))

    test = root / TEST_SPLIT
    a = real_classes[0]
    a_dir = test / a
    a_real = _real_jpgs(real_test_dir / a)

    # 1. real classes: per_class real images each, copied byte-for-byte.
    for cls in real_classes:
        dst = test / cls
        dst.mkdir(parents=True, exist_ok=True)
        for src in _pick(_real_jpgs(real_test_dir / cls), 0, per_class):
            shutil.copyfile(src, dst / src.name)
            add(f"{TEST_SPLIT}/{cls}/{src.name}", IMAGE_OK, cls, TEST_SPLIT, "real")

    # Source for derived images: a real A image not otherwise copied.
    src_path = _pick(a_real, per_class + 2, 1)[0]
    src_bytes = src_path.read_bytes()
    with Image.open(src_path) as im:
        base = im.convert("RGB")

    def a_rel(name: str) -> str:
        return f"{TEST_SPLIT}/{a}/{name}"

    # 2. awkward files inside A.
    (a_dir / "empty.jpg").write_bytes(b"")
    add(a_rel("empty.jpg"), IMAGE_ERROR, a, TEST_SPLIT, "zero_bytes")

    (a_dir / "truncated.jpg").write_bytes(src_bytes[: int(len(src_bytes) * 0.4)])
    add(a_rel("truncated.jpg"), IMAGE_ERROR, a, TEST_SPLIT, "truncated_jpeg")

    (a_dir / "noise.jpg").write_bytes(rng.bytes(4096))
    add(a_rel("noise.jpg"), IMAGE_ERROR, a, TEST_SPLIT, "random_bytes")

    _save(base.rotate(90), a_dir / "png_named.jpg", "PNG")
    add(a_rel("png_named.jpg"), IMAGE_OK, a, TEST_SPLIT, "png_named_jpg")

    _save(base.rotate(180), a_dir / "real.png", "PNG")
    add(a_rel("real.png"), IMAGE_OK, a, TEST_SPLIT, "png_rgb")

    _save(base.convert("L"), a_dir / "gray.jpg", "JPEG", quality=_JPEG_QUALITY)
    add(a_rel("gray.jpg"), IMAGE_OK, a, TEST_SPLIT, "jpeg_gray_L")

    _save(base.convert("CMYK"), a_dir / "cmyk.jpg", "JPEG", quality=_JPEG_QUALITY)
    add(a_rel("cmyk.jpg"), IMAGE_OK, a, TEST_SPLIT, "jpeg_cmyk")

    alpha = base.convert("RGBA")
    yy, xx = np.mgrid[0 : alpha.height, 0 : alpha.width]
    alpha.putalpha(Image.fromarray(((xx + yy) * 255 // max(1, xx.max() + yy.max())).astype(np.uint8)))
    _save(alpha, a_dir / "alpha.png", "PNG")
    add(a_rel("alpha.png"), IMAGE_OK, a, TEST_SPLIT, "png_rgba")

    deep = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    deep16 = Image.fromarray(deep)  # mode I;16
    assert deep16.mode == "I;16", deep16.mode
    _save(deep16, a_dir / "deep16.png", "PNG")
    add(a_rel("deep16.png"), IMAGE_OK, a, TEST_SPLIT, "png_gray_16bit")

    _save(Image.new("RGB", (1, 1), (123, 45, 67)), a_dir / "tiny.jpg", "JPEG", quality=_JPEG_QUALITY)
    add(a_rel("tiny.jpg"), IMAGE_OK, a, TEST_SPLIT, "jpeg_1x1")

    _save(base.transpose(Image.Transpose.FLIP_LEFT_RIGHT), a_dir / "UPPER.JPG", "JPEG", quality=_JPEG_QUALITY)
    add(a_rel("UPPER.JPG"), IMAGE_OK, a, TEST_SPLIT, "upper_ext")

    _save(base.transpose(Image.Transpose.FLIP_TOP_BOTTOM), a_dir / "long_ext.jpeg", "JPEG", quality=_JPEG_QUALITY)
    add(a_rel("long_ext.jpeg"), IMAGE_OK, a, TEST_SPLIT, "jpeg_ext")

    (a_dir / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + rng.bytes(64))
    add(a_rel(".DS_Store"), IGNORED, a, TEST_SPLIT, "macos_metadata")
    (a_dir / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + rng.bytes(64))
    add(a_rel("Thumbs.db"), IGNORED, a, TEST_SPLIT, "windows_thumbcache")
    (a_dir / "notes.txt").write_text("not an image\n", encoding="utf-8")
    add(a_rel("notes.txt"), IGNORED, a, TEST_SPLIT, "text")

    _save(base.transpose(Image.Transpose.TRANSPOSE), a_dir / "extra" / "deeper" / "nested.jpg", "JPEG", quality=_JPEG_QUALITY)
    add(a_rel("extra/deeper/nested.jpg"), IMAGE_OK, a, TEST_SPLIT, "nested")

    # 3. huge image + decompression bomb.
    huge_dir = test / HUGE_CLASS
    tile = Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), "RGB")
    huge = tile.resize(HUGE_SIZE, Image.Resampling.NEAREST)
    _save(huge, huge_dir / "huge.jpg", "JPEG", quality=_JPEG_QUALITY)
    del huge
    add(f"{TEST_SPLIT}/{HUGE_CLASS}/huge.jpg", IMAGE_OK, HUGE_CLASS, TEST_SPLIT, "jpeg_8000x8000")

    _write_bomb_png(huge_dir / "bomb.png", BOMB_SIZE)
    add(f"{TEST_SPLIT}/{HUGE_CLASS}/bomb.png", IMAGE_ERROR, HUGE_CLASS, TEST_SPLIT, "decompression_bomb")

    # 4. class folder with unicode, quotes, commas and spaces.
    weird_dir = test / WEIRD_CLASS
    weird_dir.mkdir(parents=True, exist_ok=True)
    if len(real_classes) > 1:
        weird_src = _pick(_real_jpgs(real_test_dir / real_classes[1]), per_class, 2)
    else:
        weird_src = _pick(a_real, per_class + 3, 2)
    for src in weird_src:
        shutil.copyfile(src, weird_dir / src.name)
        add(f"{TEST_SPLIT}/{WEIRD_CLASS}/{src.name}", IMAGE_OK, WEIRD_CLASS, TEST_SPLIT, "real")

    # 5. image directly under the split (no class).
    _save(base.rotate(270), test / "stray.jpg", "JPEG", quality=_JPEG_QUALITY)
    add(f"{TEST_SPLIT}/stray.jpg", NO_CLASS, None, TEST_SPLIT, "no_class")

    # 6. empty class folder.
    (test / EMPTY_CLASS).mkdir(parents=True, exist_ok=True)
    corpus.empty_dirs.append(f"{TEST_SPLIT}/{EMPTY_CLASS}")

    # 7. second split.
    train_dir = root / TRAIN_SPLIT / a
    train_dir.mkdir(parents=True, exist_ok=True)
    for src in _pick(a_real, per_class, 2):
        shutil.copyfile(src, train_dir / src.name)
        add(f"{TRAIN_SPLIT}/{a}/{src.name}", IMAGE_OK, a, TRAIN_SPLIT, "real")

    return corpus
