"""Image decoding for predict and Serve: every valid mode converts, bad bytes are refused."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from modresnet.images import ImageError, decode_image, encode_png


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


def test_32x32_png_round_trips_exactly(small_cifar):
    image = small_cifar.test.x[0]
    assert torch.equal(decode_image(encode_png(image)), image)


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
