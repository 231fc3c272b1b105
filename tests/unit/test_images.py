"""Image decoding for predict and Serve: every valid mode converts, bad bytes are refused."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from modresnet.images import ImageError, decode_image


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize(
    "data",
    [
        _bytes(RGB, "PNG"),
        _bytes(RGB, "JPEG"),
        _bytes(RGB.convert("L"), "PNG"),
        _bytes(RGB.convert("P"), "PNG"),
        _bytes(RGB.convert("RGBA"), "PNG"),
        _bytes(RGB.convert("CMYK"), "JPEG"),
        _bytes(Image.fromarray((np.arange(64 * 48, dtype=np.uint16) * 20).reshape(48, 64)), "PNG"),
        _bytes(RGB, "GIF", save_all=True, append_images=[RGB.rotate(90)]),
        _bytes(RGB.resize((1000, 700)), "WEBP"),
    ],
    ids=["png", "jpeg", "gray", "palette", "rgba", "cmyk", "16bit", "animated-gif", "large-webp"],
)
def test_valid_images_become_3x32x32_uint8(data):
    out = decode_image(data)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


def _bomb_png(side: int) -> bytes:
    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello, not an image", "not an image"),
        (_bytes(RGB, "PNG")[:200], "truncated or corrupt"),
        (_bytes(RGB, "JPEG")[:300], "truncated or corrupt"),
        (_bomb_png(100_000), "pixels"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(data, message):
    with pytest.raises(ImageError, match=message):
        decode_image(data)


SQUARE = Image.fromarray(
    np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB"
)


def _with_orientation(mode: str, value: int, kind: int = 3, count: int = 1) -> bytes:
    """A 32x32 JPEG (no resize, so a turn is exact) whose EXIF Orientation entry is raw."""
    exif = Image.Exif()
    exif[0x0112] = 1
    tiff = bytearray(exif.tobytes()[6:])
    order = "<" if tiff[:2] == b"II" else ">"
    at = 8 + 2  # IFD0's first (only) entry
    tiff[at : at + 12] = struct.pack(order + "HHIHH", 0x0112, kind, count, value, 0)
    return _bytes(SQUARE.convert(mode), "JPEG", exif=b"Exif\0\0" + bytes(tiff), quality=95)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(mode, orientation):
    data = _with_orientation(mode, orientation)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert torch.equal(decode_image(data), torch.from_numpy(np.asarray(expected)).permute(2, 0, 1))


@pytest.mark.parametrize(
    "value, kind, count",
    [(0, 3, 1), (9, 3, 1), (0xFFFF, 3, 1), (6, 5, 1), (6, 2, 2), (6, 7, 4), (6, 12, 1)],
    ids=["zero", "nine", "65535", "rational", "ascii", "undefined", "double"],
)
def test_orientation_out_of_range_or_of_another_type_means_upright(value, kind, count):
    assert torch.equal(
        decode_image(_with_orientation("RGB", value, kind, count)),
        decode_image(_with_orientation("RGB", 1)),
    )


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "JPEG"])
def test_an_exif_block_pillow_cannot_parse_means_upright(fmt):
    """Orientation is metadata: the pixels are still fine, so they are classified as sent."""
    good = Image.Exif()
    good[0x0112] = 6
    broken = b"Exif\0\0XX" + good.tobytes()[8:]  # no TIFF byte order
    kw = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    assert torch.equal(
        decode_image(_bytes(SQUARE, fmt, exif=broken, **kw)),
        decode_image(_bytes(SQUARE, fmt, **kw)),
    )
