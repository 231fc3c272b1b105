"""Structure-aware fuzzing of image decoding, the part of the Serve app that reads hostile bytes.

Valid PNG, JPEG (with EXIF), WebP, BMP and GIF files, built here with Pillow, are mutated:
byte flips, truncations, inserts and cuts, header fields set to edge values, PNG and RIFF
(WebP) chunks and JPEG segments edited, dropped, duplicated or retyped (PNG CRCs fixed, so
the edit reaches the decoder), EXIF entries given wrong types, counts, offsets and
Orientation values. Each result goes through `decode_image` (a 3x32x32 tensor or one
`ImageError` line, nothing else) and through `/predict`, multipart and JSON (a 2xx or 4xx,
never a 5xx). Hypothesis runs derandomized with a fixed number of examples, so every run
tries the same inputs and the fast tier stays fast. Each distinct crasher it found is kept in
tests/regressions/images/ and replayed by the `test_regression_files_*` tests.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin
from starlette.testclient import TestClient

from modresnet.images import ImageError, decode_image
from serve.args import ServeArgs
from serve.http.asgi import make_api
from serve.service import Service

REGRESSIONS = Path(__file__).parents[1] / "regressions" / "images"
DECODE_EXAMPLES = 3000
HTTP_EXAMPLES = 500
EDGE_INTS = (
    *(0, 1, 2, 3, 7, 8, 9, 15, 16, 255, 256),
    *(2**15 - 1, 2**15, 2**16 - 1, 2**16, 2**31 - 1, 2**32 - 1),
)
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- seeds ---------------------------------------------------------------------------------------


def _tiff(
    entries: list[tuple[int, int, int, bytes]], sub: list[tuple[int, int, int, bytes]]
) -> bytes:
    """A big-endian TIFF block (the body of an EXIF segment): IFD0 `entries`, whose last one
    points at an Exif sub-IFD with `sub`; values that do not fit in 4 bytes follow the IFDs."""
    ifd0 = 8
    sub_at = ifd0 + 2 + 12 * (len(entries) + 1) + 4
    extra_at = sub_at + 2 + 12 * len(sub) + 4
    extra = b""

    def ifd(rows: list[tuple[int, int, int, bytes]]) -> bytes:
        nonlocal extra
        out = struct.pack(">H", len(rows))
        for tag, kind, count, value in rows:
            if len(value) > 4:
                out += struct.pack(">HHII", tag, kind, count, extra_at + len(extra))
                extra += value
            else:
                out += struct.pack(">HHI", tag, kind, count) + value.ljust(4, b"\0")
        return out + b"\0\0\0\0"

    head = ifd([*entries, (0x8769, 4, 1, struct.pack(">I", sub_at))])
    return b"MM\0*" + struct.pack(">I", ifd0) + head + ifd(sub) + extra


EXIF = _tiff(
    [
        (0x010F, 2, 10, b"modresnet\0"),  # Make, ASCII
        (0x0112, 3, 1, struct.pack(">H", 6)),  # Orientation, SHORT: rotate 270
        (0x011A, 5, 1, struct.pack(">II", 72, 1)),  # XResolution, RATIONAL
        (0x0128, 3, 1, struct.pack(">H", 2)),  # ResolutionUnit, SHORT
    ],
    [
        (0x9003, 2, 20, b"2024:01:02 03:04:05\0"),  # DateTimeOriginal, ASCII
        (0x829A, 5, 1, struct.pack(">II", 1, 250)),  # ExposureTime, RATIONAL
        (0x9209, 3, 1, struct.pack(">H", 0)),  # Flash, SHORT
    ],
)
RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8), "RGB")
# Over serve/decode.py's INLINE_BYTES, so the Serve app decodes it on its pool, not inline.
LARGE = Image.fromarray(
    np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8), "RGB"
)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_metadata() -> PngImagePlugin.PngInfo:
    """EXIF as ImageMagick writes it in PNG (hex in a text chunk), and an XMP Orientation."""
    raw = Image.Exif()
    raw[0x0112] = 6
    tiff = raw.tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(tiff):8}\n{tiff.hex()}\n")
    info.add_itxt(
        "XML:com.adobe.xmp",
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
        '22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
        'tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>',
    )
    return info


def with_exif(kind: str, exif: bytes) -> bytes:
    """The `kind` seed image, carrying `exif` (a TIFF block) verbatim."""
    return EXIF_CARRIERS[kind](b"Exif\0\0" + exif)


EXIF_CARRIERS: dict[str, Callable[[bytes], bytes]] = {
    "jpeg-exif": lambda e: _save(RGB, "JPEG", exif=e),
    "jpeg-progressive-exif": lambda e: _save(RGB, "JPEG", exif=e, progressive=True),
    "png-exif": lambda e: _save(RGB, "PNG", exif=e),
    "webp-exif": lambda e: _save(RGB, "WEBP", exif=e),
}
SEEDS: dict[str, bytes] = {
    **{kind: with_exif(kind, EXIF) for kind in EXIF_CARRIERS},
    "jpeg-large": _save(LARGE.resize((128, 128)), "JPEG", quality=95),
    "mpo": _save(RGB, "MPO", save_all=True, append_images=[RGB.rotate(90)]),
    "jpeg-gray": _save(RGB.convert("L"), "JPEG"),
    "jpeg-cmyk": _save(RGB.convert("CMYK"), "JPEG"),
    "png-large": _save(LARGE, "PNG"),
    "png-text-exif-xmp": _save(RGB, "PNG", pnginfo=_png_metadata()),
    "png-palette-trns": _save(RGB.convert("P"), "PNG", transparency=3),
    "png-16bit": _save(
        Image.fromarray((np.arange(480, dtype=np.uint16) * 130).reshape(24, 20)), "PNG"
    ),
    "png-la-interlaced": _save(RGB.convert("LA"), "PNG", interlace=1),
    "apng": _save(RGB, "PNG", save_all=True, append_images=[RGB.rotate(90)]),
    "webp-lossless-rgba": _save(RGB.convert("RGBA"), "WEBP", lossless=True),
    "webp-animated": _save(RGB, "WEBP", save_all=True, append_images=[RGB.rotate(90)]),
    "bmp-rgb": _save(RGB, "BMP"),
    "bmp-palette": _save(RGB.convert("P"), "BMP"),
    "bmp-gray": _save(RGB.convert("L"), "BMP"),
    "gif": _save(RGB.convert("P"), "GIF"),
    "gif-animated": _save(
        RGB.convert("P"),
        "GIF",
        save_all=True,
        append_images=[RGB.rotate(90).convert("P")],
        disposal=2,
    ),
}


# --- mutations: each takes hypothesis' `draw` and the bytes, and returns new bytes ----------------


def _edge(draw) -> int:
    return draw(st.one_of(st.sampled_from(EDGE_INTS), st.integers(0, 2**32 - 1)))


def _pack(draw, value: int, width: int) -> bytes:
    order = draw(st.sampled_from("<>"))
    return struct.pack(order + {1: "B", 2: "H", 4: "I"}[width], value % (1 << (8 * width)))


def flip_bytes(draw, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    return bytes(out)


def truncate(draw, data: bytes) -> bytes:
    return data[: draw(st.integers(1, len(data) - 1))]


def insert_bytes(draw, data: bytes) -> bytes:
    at = draw(st.integers(0, len(data)))
    return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]


def cut_bytes(draw, data: bytes) -> bytes:
    at = draw(st.integers(0, len(data) - 1))
    return data[:at] + data[at + draw(st.integers(1, 64)) :]


def header_field(draw, data: bytes) -> bytes:
    """A 1, 2 or 4-byte field in the first 64 bytes (BMP, GIF and IHDR headers live there)."""
    width = draw(st.sampled_from((1, 2, 4)))
    at = draw(st.integers(0, min(64, len(data)) - width))
    return data[:at] + _pack(draw, _edge(draw), width) + data[at + width :]


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at + 8 <= len(data):
        (size,) = struct.unpack(">I", data[at : at + 4])
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + size]))
        at += 12 + size
    return chunks


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, body in chunks:
        out += (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )
    return out


PNG_TYPES = tuple(
    b"IHDR PLTE IDAT IEND tRNS gAMA iCCP sBIT tEXt zTXt iTXt pHYs eXIf acTL fcTL fdAT cHRM "
    b"sRGB bKGD".split()
)


def png_chunk(draw, data: bytes) -> bytes:
    """Edit one chunk (field, type, body), or drop, duplicate, move or add one; CRCs fixed."""
    chunks = _png_chunks(data)
    if not chunks:
        return flip_bytes(draw, data)
    i = draw(st.integers(0, len(chunks) - 1))
    kind, body = chunks[i]
    op = draw(st.sampled_from(("field", "retype", "body", "drop", "dup", "move", "add", "zlib")))
    if op == "field" and len(body) >= 1:
        width = draw(st.sampled_from((1, 2, 4)))
        at = draw(st.integers(0, max(0, len(body) - width)))
        chunks[i] = (kind, body[:at] + _pack(draw, _edge(draw), width) + body[at + width :])
    elif op == "retype":
        chunks[i] = (draw(st.sampled_from(PNG_TYPES)), body)
    elif op == "body":
        chunks[i] = (kind, draw(st.binary(max_size=64)))
    elif op == "drop":
        del chunks[i]
    elif op == "dup":
        chunks.insert(i, (kind, body))
    elif op == "move":
        chunks.insert(draw(st.integers(0, len(chunks))), chunks.pop(i))
    elif op == "add":
        chunks.insert(i, (draw(st.sampled_from(PNG_TYPES)), draw(st.binary(max_size=64))))
    else:  # a zlib stream that decompresses to more, less or other data
        chunks[i] = (kind, zlib.compress(draw(st.binary(max_size=256)) * draw(st.integers(1, 64))))
    return _png(chunks)


def _riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 12
    while at + 8 <= len(data):
        (size,) = struct.unpack("<I", data[at + 4 : at + 8])
        chunks.append((data[at : at + 4], data[at + 8 : at + 8 + size]))
        at += 8 + size + (size & 1)
    return chunks


def _riff(chunks: list[tuple[bytes, bytes]], declared: int | None = None) -> bytes:
    body = b"WEBP" + b"".join(
        kind + struct.pack("<I", len(b)) + b + b"\0" * (len(b) & 1) for kind, b in chunks
    )
    return b"RIFF" + struct.pack("<I", len(body) if declared is None else declared) + body


RIFF_TYPES = (b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF", b"ICCP", b"EXIF", b"XMP ")


def riff_chunk(draw, data: bytes) -> bytes:
    """WebP: edit a chunk's fields or type, drop or duplicate one, or lie about the RIFF size."""
    chunks = _riff_chunks(data)
    if not chunks:
        return flip_bytes(draw, data)
    i = draw(st.integers(0, len(chunks) - 1))
    kind, body = chunks[i]
    op = draw(st.sampled_from(("field", "retype", "drop", "dup", "riff-size")))
    if op == "field" and body:
        width = draw(st.sampled_from((1, 2, 4)))
        at = draw(st.integers(0, max(0, len(body) - width)))
        chunks[i] = (kind, body[:at] + _pack(draw, _edge(draw), width) + body[at + width :])
    elif op == "retype":
        chunks[i] = (draw(st.sampled_from(RIFF_TYPES)), body)
    elif op == "drop" and len(chunks) > 1:
        del chunks[i]
    elif op == "dup":
        chunks.insert(i, (kind, body))
    elif op == "riff-size":
        return _riff(chunks, _edge(draw))
    return _riff(chunks)


def _jpeg_segments(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """(marker, payload) up to and including the first SOS; then the entropy-coded rest."""
    segments, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        (size,) = struct.unpack(">H", data[at + 2 : at + 4])
        segments.append((marker, data[at + 4 : at + 2 + size]))
        at += 2 + size
        if marker == 0xDA:
            break
    return segments, data[at:]


def _jpeg(
    segments: list[tuple[int, bytes]], rest: bytes, lie: tuple[int, int] | None = None
) -> bytes:
    out = b"\xff\xd8"
    for i, (marker, payload) in enumerate(segments):
        size = len(payload) + 2 if lie is None or lie[0] != i else lie[1]
        out += bytes((0xFF, marker)) + struct.pack(">H", size & 0xFFFF) + payload
    return out + rest


JPEG_MARKERS = (
    *(0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC9, 0xCC),  # SOF0-3, DHT, SOF9 (arithmetic), DAC
    *(0xD9, 0xDA, 0xDB, 0xDD),  # EOI, SOS, DQT, DRI
    *(0xE0, 0xE1, 0xE2, 0xEE, 0xFE),  # APP0 JFIF, APP1 EXIF, APP2 ICC/MPF, APP14 Adobe, COM
)


def jpeg_segment(draw, data: bytes) -> bytes:
    """Edit a segment's fields (SOF sizes, table ids, sampling), marker or length; drop or
    duplicate one; or cut or corrupt the entropy-coded data after SOS."""
    segments, rest = _jpeg_segments(data)
    if not segments:
        return flip_bytes(draw, data)
    i = draw(st.integers(0, len(segments) - 1))
    marker, payload = segments[i]
    op = draw(st.sampled_from(("field", "remark", "length", "drop", "dup", "scan")))
    if op == "field" and payload:
        width = draw(st.sampled_from((1, 2)))
        at = draw(st.integers(0, max(0, len(payload) - width)))
        segments[i] = (
            marker,
            payload[:at] + _pack(draw, _edge(draw), width) + payload[at + width :],
        )
    elif op == "remark":
        segments[i] = (draw(st.sampled_from(JPEG_MARKERS)), payload)
    elif op == "length":
        return _jpeg(segments, rest, (i, _edge(draw)))
    elif op == "drop" and len(segments) > 1:
        del segments[i]
    elif op == "dup":
        segments.insert(i, (marker, payload))
    elif op == "scan" and rest:
        rest = flip_bytes(draw, rest) if draw(st.booleans()) else truncate(draw, rest + b"\0")
    return _jpeg(segments, rest)


EXIF_TYPES = (*range(14), 0xFFFF)
# Orientation, the Exif, GPS and Interop IFD pointers, the thumbnail's offset and length,
# Make, XResolution
EXIF_TAGS = (0x0112, 0x8769, 0x8825, 0xA005, 0x0201, 0x0202, 0x010F, 0x011A)


def _entries(exif: bytes) -> list[int]:
    """Where IFD0's entries are, and the Exif IFD's (IFD0's last entry points at it)."""
    (count,) = struct.unpack(">H", exif[8:10])
    ifd0 = [10 + 12 * k for k in range(count)]
    (sub,) = struct.unpack(">I", exif[ifd0[-1] + 8 : ifd0[-1] + 12])
    (count,) = struct.unpack(">H", exif[sub : sub + 2])
    return ifd0 + [sub + 2 + 12 * k for k in range(count)]


def exif_entries(draw, exif: bytes) -> bytes:
    """Edit IFD0 and Exif IFD entries: a wrong type, count or value offset; Orientation out
    of range or of another type; IFD0's entry count or offset, or the byte order."""
    out = bytearray(exif)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.sampled_from(_entries(exif)))
        op = draw(st.sampled_from(("type", "count", "value", "orientation", "tag", "ifd", "order")))
        if op == "type":
            out[at + 2 : at + 4] = struct.pack(">H", draw(st.sampled_from(EXIF_TYPES)))
        elif op == "count":
            out[at + 4 : at + 8] = struct.pack(">I", _edge(draw))
        elif op == "value":
            out[at + 8 : at + 12] = struct.pack(">I", _edge(draw))
        elif op == "orientation":
            kind = draw(st.sampled_from((3, 3, 2, 4, 5, 7, 9, 12)))
            count = draw(st.sampled_from((1, 1, 0, 2, 4, 0xFFFF)))
            out[at : at + 12] = struct.pack(">HHI", 0x0112, kind, count) + struct.pack(
                ">HH", draw(st.sampled_from((0, 1, 8, 9, 255, 0xFFFF))), draw(st.integers(0, 9))
            )
        elif op == "tag":
            out[at : at + 2] = struct.pack(">H", draw(st.sampled_from(EXIF_TAGS)))
        elif op == "ifd":  # IFD0's offset, or its entry count
            at, width = draw(st.sampled_from(((4, 4), (8, 2))))
            out[at : at + width] = _pack(draw, _edge(draw), width)
        else:
            out[0:2] = b"II" if draw(st.booleans()) else b"XX"
    return bytes(out)


MUTATIONS = [flip_bytes, truncate, insert_bytes, cut_bytes, header_field]
FORMAT_MUTATIONS = {
    "png": png_chunk,
    "apng": png_chunk,
    "webp": riff_chunk,
    "jpeg": jpeg_segment,
    "mpo": jpeg_segment,
}


@st.composite
def mutated_images(draw) -> bytes:
    """Any seed with one to three mutations of its bytes, fields or chunks."""
    kind = draw(st.sampled_from(sorted(SEEDS)))
    data = SEEDS[kind]
    mutations = [*MUTATIONS, FORMAT_MUTATIONS.get(kind.split("-")[0], flip_bytes)]
    for _ in range(draw(st.integers(1, 3))):
        if len(data) < 8:
            break
        data = draw(st.sampled_from(mutations))(draw, data)
    return data


@st.composite
def exif_images(draw) -> bytes:
    """A JPEG, PNG or WebP whose EXIF entries were edited, its container left valid."""
    kind = draw(st.sampled_from(sorted(EXIF_CARRIERS)))
    return with_exif(kind, exif_entries(draw, EXIF))


# Half the examples edit EXIF: metadata is parsed by Pillow's pure-Python code, where the
# crashes were; the other half reach the C decoders through the containers.
hostile_images = st.one_of(exif_images(), mutated_images())


# --- properties ----------------------------------------------------------------------------------


def assert_decodes_or_refuses(data: bytes) -> None:
    try:
        out = decode_image(data)
    except ImageError as err:
        assert "\n" not in str(err) and str(err), repr(str(err))
        return
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_seeds_are_valid_images(kind):
    """The mutations start from images that decode, so a refusal is the mutation's doing."""
    assert decode_image(SEEDS[kind]).shape == (3, 32, 32)


@settings(FUZZ, max_examples=DECODE_EXAMPLES)
@given(hostile_images)
def test_decode_image_returns_an_image_or_one_line_error(data):
    assert_decodes_or_refuses(data)


@pytest.fixture(scope="module")
def client(random_checkpoint):
    """The Serve app in-process (no Ray), on a checkpoint of the untrained debug model."""
    path = random_checkpoint
    args = ServeArgs(checkpoint=str(path), backend="torch", max_images=4)
    with TestClient(make_api(Service(args.model_dump())), raise_server_exceptions=False) as c:
        yield c


def assert_predict_answers_4xx_at_worst(client, data: bytes) -> None:
    for form in ("multipart", "json"):
        if form == "multipart":
            r = client.post(
                "/predict", files=[("files", ("x.img", data, "application/octet-stream"))]
            )
        else:
            r = client.post("/predict", json={"images": [base64.b64encode(data).decode()]})
        assert r.status_code < 500, f"{form}: {r.status_code} {r.text[:300]}"
        if r.status_code >= 400:
            assert "\n" not in r.json()["error"], r.text[:300]


@settings(FUZZ, max_examples=HTTP_EXAMPLES, suppress_health_check=list(HealthCheck))
@given(data=hostile_images)
def test_predict_never_answers_5xx(client, data):
    assert_predict_answers_4xx_at_worst(client, data)


def _regressions() -> list[Path]:
    return sorted(p for p in REGRESSIONS.iterdir() if p.is_file())


def test_regression_folder_is_not_empty():
    assert len(_regressions()) >= 5


@pytest.mark.parametrize("path", _regressions(), ids=lambda p: p.name)
def test_regression_files_decode_or_refuse(path):
    assert_decodes_or_refuses(path.read_bytes())


@pytest.mark.parametrize("path", _regressions(), ids=lambda p: p.name)
def test_regression_files_get_no_5xx(path, client):
    assert_predict_answers_4xx_at_worst(client, path.read_bytes())


@pytest.mark.parametrize("filename", ["a\nb.png", "tab\there.png", "line\u2028sep.png", "x" * 500])
def test_a_hostile_filename_keeps_the_error_on_one_line(client, filename):
    """Written raw: httpx would percent-encode the newline, a hostile client need not."""
    body = (
        b'--B\r\nContent-Disposition: form-data; name="files"; filename="'
        + filename.encode()
        + b'"\r\nContent-Type: image/png\r\n\r\nnot an image\r\n--B--\r\n'
    )
    headers = {"content-type": "multipart/form-data; boundary=B"}
    r = client.post("/predict", content=body, headers=headers)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.isprintable() and len(error) < 300, error
