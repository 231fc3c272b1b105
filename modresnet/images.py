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
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from modresnet.errors import UserError

MAX_PIXELS = 40_000_000  # ~ a 6300 x 6300 photo; larger declared sizes are refused unread
SIDE = 32
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
MAX_JPEG_SCANS = 64  # libjpeg's progressive default writes 10; mozjpeg ~ 10-20


class ImageError(UserError, ValueError):
    """The bytes are not an image we can classify; the message says why."""


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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            "not an image in an accepted format (PNG, JPEG, WebP, BMP, GIF); "
            "convert it to PNG or JPEG"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            "image declares too many pixels (a decompression bomb?); refusing to decode it"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"truncated or corrupt image ({err})") from None
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if img.format in ("JPEG", "MPO"):
                img.draft(img.mode, (4 * SIDE, 4 * SIDE))
            img.seek(0)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            "image declares too many pixels (a decompression bomb?); refusing to decode it"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"truncated or corrupt image ({err})") from None
    try:
        img = ImageOps.exif_transpose(img) if img.mode != "CMYK" else img
        rgb = _to_rgb(img)
        if rgb.size != (SIDE, SIDE):
            rgb = rgb.resize((SIDE, SIDE), Image.Resampling.BICUBIC, reducing_gap=3.0)
        arr = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(f"truncated or corrupt image ({err})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def encode_png(image: torch.Tensor) -> bytes:
    """uint8 3 x H x W -> PNG bytes (for tests, demos and the CLI)."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB").save(buf, format="PNG")
    return buf.getvalue()
