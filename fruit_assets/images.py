"""Decoding and preprocessing of one image, exactly as Keras would feed it to MobileNetV2.

Keras's `load_img(path, target_size=(224, 224), interpolation="bilinear")` opens the bytes with PIL, converts any
mode other than RGB to RGB, and resizes with PIL's bilinear filter when the size differs; `preprocess_input` for
MobileNetV2 then maps [0, 255] to [-1, 1]. We do the same steps, but write into a caller-owned float32 buffer so a
batch costs no fresh 600 KB temporaries per image.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
INPUT_SIZE = (224, 224)
# PIL's own decompression-bomb threshold (it raises only at twice this); we refuse at the threshold itself.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
UNREADABLE = (
    "cannot be read: no read permission for the user running Spark (make the file readable, then re-materialize "
    "its class)"
)


class ImageDecodeError(Exception):
    """An image that cannot be embedded; `reason` is the line that lands in the errors table."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_image_path(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


@contextmanager
def _pil_limit_at_least(max_pixels: int):
    """PIL refuses images over twice its own global limit inside `Image.open`, before our check could run: a
    FRUITS_MAX_IMAGE_PIXELS above ~179 MP must lift it, for this call only."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or max_pixels <= limit:
        yield
        return
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def open_image(content: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode `content`, raising ImageDecodeError with a specific reason."""
    if content is None:  # raw_images' row for a file the listing found unreadable (layout.ClassFiles)
        raise ImageDecodeError(UNREADABLE)
    if len(content) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with _pil_limit_at_least(max_pixels):
                img = Image.open(io.BytesIO(content))
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(f"decompression bomb refused: {exc}") from None
        except UnidentifiedImageError:
            raise ImageDecodeError("not a decodable image (unknown format or corrupt header)") from None
        except Exception as exc:  # PIL raises many types for broken headers
            raise ImageDecodeError(f"cannot open image: {type(exc).__name__}: {exc}") from None
        width, height = img.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"decompression bomb refused: {width}x{height} = {width * height} pixels exceeds the limit of "
                f"{max_pixels} (FRUITS_MAX_IMAGE_PIXELS)"
            )
        try:
            img.load()
        except Exception as exc:
            raise ImageDecodeError(f"truncated or corrupt image data ({img.format}): {exc}") from None
    return img


def to_rgb_224(img: Image.Image) -> Image.Image:
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != INPUT_SIZE:
        img = img.resize(INPUT_SIZE, Image.BILINEAR)
    return img


def decode_into(content: bytes, out: np.ndarray, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """Decode one image into `out` (224x224x3 float32), scaled like MobileNetV2's preprocess_input."""
    img = to_rgb_224(open_image(content, max_pixels))
    np.copyto(out, np.asarray(img), casting="unsafe")
    np.divide(out, 127.5, out=out)
    np.subtract(out, 1.0, out=out)


def decode(content: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    out = np.empty((*INPUT_SIZE, 3), dtype=np.float32)
    decode_into(content, out, max_pixels)
    return out
