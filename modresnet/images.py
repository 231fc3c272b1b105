"""Decoding user images (any size, mode or format Pillow reads) into CIFAR-shaped tensors.

Used by `modresnet predict` and by the Serve app, so both accept and refuse the same
inputs: bad bytes raise `ImageError` with a message fit for a 4xx, never a crash.
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


class ImageError(UserError, ValueError):
    """The bytes are not an image we can classify; the message says why."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        img = Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Image bytes -> uint8 tensor 3 x 32 x 32 (RGB); the first frame of an animation."""
    if not data:
        raise ImageError("empty image: the request carried no bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise ImageError(f"image declares {img.width}x{img.height} pixels, over the "
                                 f"limit of {max_pixels:,}; refusing to decode it")
            img.seek(0)
            img.load()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not an image Pillow can read (expected PNG, JPEG, GIF, BMP, WebP, "
                         "TIFF...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image declares too many pixels (a decompression bomb?); refusing "
                         "to decode it") from None
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
