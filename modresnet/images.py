"""Decoding user images (PNG, JPEG, WebP, BMP, GIF; any size and mode) into CIFAR tensors.

Used by `modresnet predict` and by the Serve app, so both accept and refuse the same
inputs: bad bytes raise `ImageError` with a message fit for a 4xx, never a crash.

Cost bounds, because the Serve app decodes untrusted uploads:
* only FORMATS are opened (Pillow would otherwise try dozens of plugins; EPS runs Ghostscript);
* the declared pixel count is checked from the header before any pixel is decoded;
* JPEGs are decoded at reduced DCT scale (`draft`) to >= 4x the 32 px target, and a JPEG
  with more than MAX_JPEG_SCANS scans (each a full pass in progressive mode) is refused;
* 16-bit and float images are rescaled in float32, not float64.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import ExifTags, Image, UnidentifiedImageError

from modresnet.errors import UserError

MAX_PIXELS = 40_000_000  # ~ a 6300 x 6300 photo; larger declared sizes are refused unread
SIDE = 32
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
MAX_JPEG_SCANS = 64  # libjpeg's progressive default writes 10; mozjpeg ~ 10-20


class ImageError(UserError, ValueError):
    """The bytes are not an image we can classify; the message says why."""


# What Pillow raises on hostile bytes: the types its own fuzz test expects (OSError,
# SyntaxError, ValueError, MemoryError, NotImplementedError; EOFError from seeking), and
# what its pure-Python header and metadata parsers fail with when the fields they index,
# look up, unpack or divide by are wrong (struct.error, TypeError and AttributeError were
# found by tests/unit/test_image_fuzz.py, kept in tests/regressions/images/). Only Pillow calls
# and their glue run under `_refusing`; a bug of ours there would refuse every image, which
# the valid images of tests/unit/test_images.py would show.
_CORRUPT = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    MemoryError,
    NotImplementedError,
    struct.error,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    OverflowError,
)
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@contextmanager
def _refusing() -> Iterator[None]:
    """Any failure of Pillow on the bytes -> one ImageError line (a 400 in Serve)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # "Corrupt EXIF data" and the like: about the sender's bytes, not worth a log line
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
            yield
    except UnidentifiedImageError:
        raise ImageError(
            "not an image in an accepted format (PNG, JPEG, WebP, BMP, GIF); "
            "convert it to PNG or JPEG"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            "image declares too many pixels (a decompression bomb?); refusing to decode it"
        ) from None
    except _CORRUPT as err:
        detail = " ".join(str(err).split())[:200] or type(err).__name__
        raise ImageError(
            f"truncated or corrupt image ({detail}); re-save it as PNG or JPEG"
        ) from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF Orientation. Not `ImageOps.exif_transpose`: that also re-encodes the
    EXIF block into the copy it returns, and a hostile block fails there (struct.error,
    TypeError, AttributeError). Orientation is metadata: an EXIF block Pillow cannot parse
    (as it already tolerates in JPEG), or an Orientation that is not one integer 1..8,
    means upright, and the pixels are classified as they are."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation)
    except _CORRUPT:
        orientation = None
    method = _ORIENTATION.get(orientation) if type(orientation) is int else None
    return img if method is None else img.transpose(method)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Parse the header only (cheap): the format is allowed, the size and scans in bounds."""
    if not data:
        raise ImageError("empty image: the request carried no bytes")
    with _refusing():
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    if img.width * img.height > max_pixels:
        raise ImageError(
            f"image declares {img.width}x{img.height} pixels, over the "
            f"limit of {max_pixels:,}; refusing to decode it (downscale it first)"
        )
    if img.format in ("JPEG", "MPO"):
        # 0xFFDA (start of scan) cannot occur inside entropy-coded data (0xFF is stuffed as
        # 0xFF00 there), so this counts scans, or over-counts when a thumbnail holds some.
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise ImageError(
                f"JPEG with {scans} scans, over the limit of {MAX_JPEG_SCANS} (each "
                f"scan of a progressive JPEG is a full decoding pass); re-encode it"
            )
    return img


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Image bytes -> uint8 tensor 3 x 32 x 32 (RGB); the first frame of an animation."""
    return to_tensor(open_image(data, max_pixels))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An image from `open_image` (header read, limits checked) -> uint8 3 x 32 x 32 RGB."""
    with _refusing():
        if img.format in ("JPEG", "MPO"):
            img.draft(img.mode, (4 * SIDE, 4 * SIDE))
        img.seek(0)
        img.load()
        rgb = _to_rgb(_upright(img))
        if rgb.size != (SIDE, SIDE):
            rgb = rgb.resize((SIDE, SIDE), Image.Resampling.BICUBIC, reducing_gap=3.0)
        arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def encode_png(image: torch.Tensor) -> bytes:
    """uint8 3 x H x W -> PNG bytes (for tests, demos and the CLI)."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(buf, format="PNG")
    return buf.getvalue()
