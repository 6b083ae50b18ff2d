"""Decoding and preprocessing match Keras's own load_img + preprocess_input, and bad bytes get specific reasons."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fruit_assets.images import ImageDecodeError, decode, is_image_path
from tests.conftest import TEST_SPLIT


def keras_reference(path):
    import keras

    img = keras.utils.load_img(path, target_size=(224, 224), interpolation="bilinear")
    x = keras.utils.img_to_array(img)
    return keras.applications.mobilenet_v2.preprocess_input(x)


def _save(tmp_path, name, img, **kwargs):
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


@pytest.fixture
def real_jpeg():
    return sorted((TEST_SPLIT / "Banana").iterdir())[0]


def test_real_jpeg_matches_keras_exactly(real_jpeg):
    ours = decode(real_jpeg.read_bytes())
    assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, keras_reference(str(real_jpeg)))
    assert -1.0 <= ours.min() and ours.max() <= 1.0


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_other_modes_match_keras(tmp_path, real_jpeg, mode):
    img = Image.open(real_jpeg).convert(mode)
    path = _save(tmp_path, f"x.{'jpg' if mode in ('L', 'CMYK') else 'png'}", img)
    np.testing.assert_array_equal(decode(path.read_bytes()), keras_reference(str(path)))


def test_already_224_and_larger_images_match_keras(tmp_path, real_jpeg):
    for size in [(224, 224), (640, 480), (1, 1)]:
        path = _save(tmp_path, f"s{size[0]}.png", Image.open(real_jpeg).resize(size))
        np.testing.assert_array_equal(decode(path.read_bytes()), keras_reference(str(path)))


def test_bilinear_not_nearest(real_jpeg):
    """A regression guard: nearest-neighbour resizing would give visibly different inputs."""
    img = Image.open(real_jpeg).convert("RGB")
    nearest = np.asarray(img.resize((224, 224), Image.NEAREST), dtype=np.float32) / 127.5 - 1
    assert np.abs(decode(real_jpeg.read_bytes()) - nearest).max() > 0.05


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"\x00\x01 definitely not an image" * 10, "not a decodable image"),
    ],
)
def test_bad_bytes_give_specific_reasons(content, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode(content)


def test_truncated_jpeg_is_refused(real_jpeg):
    data = real_jpeg.read_bytes()
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode(data[: len(data) // 2])


def test_pixel_limit_refuses_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (300, 300)).save(buffer, format="PNG")
    with pytest.raises(ImageDecodeError, match="decompression bomb refused: 300x300"):
        decode(buffer.getvalue(), max_pixels=300 * 300 - 1)
    assert decode(buffer.getvalue(), max_pixels=300 * 300).shape == (224, 224, 3)


def test_image_extensions_any_case():
    assert all(is_image_path(p) for p in ["a.jpg", "b.JPG", "c.jpeg", "d.Png", "dir.x/e.JPEG"])
    assert not any(is_image_path(p) for p in [".DS_Store", "Thumbs.db", "notes.txt", "x.jpg.txt", "gif.gif"])


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size but holds no pixel data: opening reads the size, loading fails."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_pixel_limit_above_pils_own_is_ours_to_set():
    """195 MP is over twice PIL's global limit: PIL alone would refuse it in Image.open whatever the setting."""
    huge = png_header(15000, 13000)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 194999999 \\(FRUITS_MAX_IMAGE_PIXELS\\)"):
        decode(huge, max_pixels=195_000_000 - 1)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt image data"):  # past both limits: decoding
        decode(huge, max_pixels=300_000_000)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # lifted for the call only
