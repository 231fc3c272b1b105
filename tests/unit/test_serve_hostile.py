"""Hostile input against the Serve app's FastAPI routes, in-process (no Ray, seconds).

`make_api(Service(args))` is the very app each Serve replica builds, batching included.
Every case here was a 500, a blocked event loop or an accepted-but-wrong input before issue 10.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from collections import Counter

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from modresnet.images import encode_png

pytest.importorskip("ray")

from serve.args import ServeArgs  # noqa: E402
from serve.http.asgi import make_api  # noqa: E402
from serve.service import Service  # noqa: E402

INFER = "/v2/models/modresnet/infer"


@pytest.fixture(scope="module")
def checkpoint(random_checkpoint):
    return random_checkpoint


def _service(checkpoint, **kw) -> Service:
    return Service(ServeArgs(checkpoint=str(checkpoint), backend="torch", **kw).model_dump())


@pytest.fixture(scope="module")
def service(checkpoint):
    return _service(checkpoint, max_images=8, max_body_bytes=2 * 1024 * 1024)


@pytest.fixture(scope="module")
def app(service):
    return make_api(service)


@pytest.fixture()
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _v2(data: bytes | str, datatype: str = "UINT8") -> bytes:
    """A v2 request whose last data value is `data`, written verbatim into the JSON."""
    data = data.encode() if isinstance(data, str) else data
    return (
        b'{"inputs":[{"name":"input","shape":[1,32,32,3],"datatype":"'
        + datatype.encode()
        + b'","data":['
        + b"0," * 3071
        + data
        + b"]}]}"
    )


JSON = {"content-type": "application/json"}
PNG = encode_png(torch.zeros(3, 32, 32, dtype=torch.uint8))


# --- item 1: no 5xx for any client input --------------------------------------------------------


@pytest.mark.parametrize(
    "path,body,fragment",
    [
        ("/predict", b"[" * 100_000 + b"]" * 100_000, "nested 100,000 levels"),
        (INFER, b"[" * 100_000 + b"]" * 100_000, "nested 100,000 levels"),
        (INFER, b'{"inputs": ' + b"[" * 40 + b"]" * 40 + b"}", "nested"),
        ("/predict", b'{"images": [], "top_k": ' + b"9" * 5000 + b"}", "5,000 digits"),
        (INFER, _v2(b"1" + b"0" * 400), "401 digits"),  # 1e400 written out
        (INFER, _v2(b"9" * 5000), "5,000 digits"),
        (INFER, _v2(b"1e400", "FP32"), "0..1"),  # parses to inf
        (INFER, _v2(b"NaN", "FP32"), "NaN is not JSON"),
        (INFER, _v2(b'"7"'), "got string"),
        (INFER, _v2(b"true"), "got boolean"),
        (INFER, _v2(b"null"), "got null"),
        (INFER, _v2(b"7.5"), "non-integer"),  # UINT8 takes integers only
        (INFER, _v2(b"[1]"), "got array"),
        (INFER, _v2(b'"0.5"', "FP32"), "got string"),
        (INFER, _v2(b"256"), "0..255"),
    ],
)
def test_hostile_json_is_400_with_a_reason(client, path, body, fragment):
    r = client.post(path, content=body, headers=JSON)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert fragment in r.json()["error"], r.json()


@pytest.mark.parametrize(
    "body",
    [
        b'"' + b'\\"' * 1_000_000,  # one unterminated string of escaped quotes (2 MB)
        b"[" + b'"\\' * 660_000 + b"]",  # quotes and backslashes interleaved
        b'"' * 2_000_001,  # two million empty strings
    ],
    ids=["escaped-quotes", "interleaved", "quotes"],
)
def test_json_limits_are_linear_time(client, body):
    """The depth/number pre-scan must not be the DoS: a quadratic string scanner took a
    minute on 80 KB of escaped quotes. (/predict: a v2 body this size is refused unread.)"""
    start = time.perf_counter()
    r = client.post("/predict", content=body, headers=JSON)
    took = time.perf_counter() - start
    assert r.status_code == 400, r.text[:200]
    assert took < 2.0, took


def test_json_scan_in_blocks_is_one_pass_and_small(monkeypatch):
    """The pre-scan reads a body in blocks carrying strings, escapes, depth and digit runs
    across their edges, so what it finds does not depend on the block size, and its memory is
    a few blocks whatever the body (it was ~16 bytes per byte of a digit-dense body)."""
    import tracemalloc

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from serve.http import jsonlimits

    def found(body: bytes, block: int) -> tuple[int, int, int, str]:
        monkeypatch.setattr(jsonlimits, "BLOCK_BYTES", block)
        scan = jsonlimits._scan(body)
        return scan.max_depth, scan.max_digits, scan.commas, scan.constant

    @given(st.lists(st.sampled_from(list(b'"\\[]{},09 aNI')), max_size=80).map(bytes))
    @settings(max_examples=500, deadline=None, derandomize=True, database=None)
    def same(body):
        whole = found(body, 1 << 20)
        for block in (1, 2, 3, 7):
            assert found(body, block) == whole, (body, block)

    same()
    monkeypatch.setattr(jsonlimits, "BLOCK_BYTES", 256 * 1024)
    body = b"0 " * 3_000_000 + b'"' + b"\\n" * 1_000_000  # 6 MB and 2 MB of digit and escape runs
    tracemalloc.start()
    with pytest.raises(ValueError):
        jsonlimits.loads(body)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 1024**2, f"{peak / 1024**2:.0f} MiB"


def test_v2_body_over_what_max_images_needs_is_413(client):
    """The app's max_images is 8: its v2 JSON may be 64 KiB + 8 x 3072 values x 32 bytes, and
    hold 1,024 + 8 x 3072 values; binary data adds 4 bytes a value. Each is refused before
    anything is parsed: from the headers, while reading, or by counting the values."""
    from serve.protocols.v2 import v2_json_limits

    limit, values = v2_json_limits(8)
    assert (limit, values) == (65_536 + 8 * 3072 * 32, 1024 + 8 * 3072)
    head = b'{"inputs":[{"name":"input","shape":[8,32,32,3],"datatype":"UINT8","data":['
    over = head + b"0" * (limit + 1 - len(head))
    binary = {"Inference-Header-Content-Length": "60", "content-type": "application/octet-stream"}

    def chunks():
        for i in range(0, len(over), 65536):
            yield over[i : i + 65536]

    cases = [
        (dict(content=over, headers=JSON), "over the limit of 851,968 bytes"),
        (dict(content=chunks(), headers=JSON), "over the limit of 851,968 bytes"),
        (dict(content=head + b"0," * values + b"0]}]}", headers=JSON), "the limit is 25,600"),
        (
            dict(content=b"{}", headers={**binary, "Inference-Header-Content-Length": "900000"}),
            "does not fit",
        ),
        (dict(content=b"0" * (60 + 8 * 3072 * 4 + 1), headers=binary), "over the limit of"),
    ]
    for kwargs, fragment in cases:
        r = client.post(INFER, **kwargs)
        assert r.status_code in (400, 413), (fragment, r.status_code, r.text[:300])
        assert fragment in r.json()["error"], r.json()
        assert r.status_code == 400 or "images needs" in r.json()["error"], r.json()
    r = client.post(INFER, content=head + b"0," * (values - 101) + b"0]}]}", headers=JSON)
    assert r.status_code == 400 and "has 25500 values" in r.json()["error"], r.text[:300]


def test_hostile_top_k_in_query_and_form(client):
    files = [("files", ("a.png", PNG, "image/png"))]
    r = client.post("/predict", params={"top_k": "9" * 5000}, files=files)
    assert r.status_code == 400 and "top_k" in r.json()["error"]
    assert "9999" not in r.json()["error"]  # the reason names the field, not a 5,000-digit echo
    r = client.post("/predict", data={"top_k": "9" * 5000}, files=files)
    assert r.status_code == 400 and "top_k" in r.json()["error"]


def test_strict_v2_accepts_numbers_of_the_datatype(client):
    for datatype, last in (("UINT8", b"255"), ("FP32", b"1.0"), ("FP32", b"1"), ("FP32", b"0.25")):
        r = client.post(INFER, content=_v2(last, datatype), headers=JSON)
        assert r.status_code == 200, (datatype, r.text)
        assert r.json()["outputs"][0]["shape"] == [1, 10]


def _infer_with(**changes) -> dict:
    """A valid v2 JSON request with top-level keys, or the input's (`input_KEY`), changed."""
    tensor = {"name": "input", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}
    request: dict = {"inputs": [tensor]}
    for key, value in changes.items():
        (tensor if key.startswith("input_") else request)[key.removeprefix("input_")] = value
    return request


@pytest.mark.parametrize(
    "body,fragment",
    [
        (
            _infer_with(outputs=[{"name": "probabilities", "parameters": "x"}]),
            "outputs.0.parameters",
        ),
        (
            _infer_with(outputs=[{"name": "probabilities", "parameters": {"binary_data": "no"}}]),
            "binary_data",
        ),
        (
            _infer_with(outputs=[{"name": "probabilities", "parameters": {"binary_data": 1}}]),
            "binary_data",
        ),
        (
            _infer_with(outputs=[{"name": "probabilities", "parameters": {"classification": 3}}]),
            "classification extension is not supported",
        ),
        (_infer_with(outputs=["probabilities"]), "outputs.0"),
        (_infer_with(outputs=[{"name": 5}]), "outputs.0.name"),
        (_infer_with(outputs=[{"name": "logits"}]), "'probabilities'"),
        (_infer_with(parameters="x"), "parameters"),
        (_infer_with(parameters={"binary_data_output": "false"}), "binary_data_output"),
        (_infer_with(parameters={"priority": {"a": 1}}), "parameters.priority"),
        (_infer_with(id=5), "id"),
        (_infer_with(input_parameters="x"), "inputs.0.parameters"),
        (_infer_with(input_parameters={"binary_data_size": "3072"}), "binary_data_size"),
        (_infer_with(input_parameters={"binary_data_size": -1}), "binary_data_size"),
        (_infer_with(input_parameters={"tag": [1]}), "inputs.0.parameters.tag"),
        (_infer_with(input_shape=["1", 32, 32, 3]), "inputs.0.shape.0"),
        (_infer_with(input_shape=[1.0, 32, 32, 3]), "inputs.0.shape.0"),
        (_infer_with(input_shape=[True, 32, 32, 3]), "inputs.0.shape.0"),
        (_infer_with(input_shape=[1, 32, 32]), "expected [N,32,32,3]"),
        (_infer_with(input_datatype=5), "inputs.0.datatype"),
        (_infer_with(input_datatype="INT8"), "'UINT8' or 'FP32'"),
        (_infer_with(input_name=7), "inputs.0.name"),
        (_infer_with(input_datatyp="UINT8"), "datatyp"),
        (_infer_with(inputs=[]), "inputs"),
    ],
)
def test_v2_fields_are_typed_and_refused_before_inference(client, service, body, fragment):
    """Every nested field of a v2 request is checked by the schema: a wrong one is a 400
    naming it, before any inference runs (a bad output parameter used to be a 500 after)."""
    batches = sum(service.batch_sizes.values())
    r = client.post(INFER, json=body)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert fragment in r.json()["error"], r.json()
    assert sum(service.batch_sizes.values()) == batches


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_openapi_no_5xx_and_responses_match_schema(app, mode):
    """schemathesis generates requests from /openapi.json (valid ones, and ones that violate
    it) for every route; none may get a 5xx, and every response must match the schema."""
    schemathesis = pytest.importorskip("schemathesis")  # `pip install -e .[test]`
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    mode = GenerationMode(mode)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", INFER, "/model"}
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    calls = Counter()
    for op in operations:
        if mode is GenerationMode.NEGATIVE and op.method.upper() != "POST":
            continue  # a GET without parameters has no way to violate the schema

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case):
            response = case.call_and_validate(checks=checks)
            calls[(op.path, response.status_code)] += 1  # noqa: B023 - runs in this pass

        fuzz()
    print(f"{mode}: {dict(calls)}")
    assert sum(calls.values()) >= 20


# --- item 2: formats, scans, pixels, decoding off the event loop -------------------------------


def _img_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8), "RGB")


def _many_scans_jpeg(scans: int) -> bytes:
    """A progressive JPEG with its first scan repeated `scans` times (valid markers)."""
    data = _img_bytes(RGB, "JPEG", progressive=True)
    first = data.index(b"\xff\xda")
    second = data.index(b"\xff\xda", first + 2)
    return data[:second] + data[first:second] * scans + data[second:]


@pytest.mark.parametrize(
    "name,data,status,fragment",
    [
        ("tiff", _img_bytes(RGB, "TIFF"), 400, "accepted format"),
        ("eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 400, "accepted format"),
        ("ico", _img_bytes(RGB, "ICO"), 400, "accepted format"),
        ("scans", _many_scans_jpeg(300), 400, "scans"),
    ],
)
def test_only_allowed_formats_and_bounded_jpegs(client, name, data, status, fragment):
    r = client.post("/predict", files=[("files", (name, data, "application/octet-stream"))])
    assert r.status_code == status, (name, r.text)
    assert fragment in r.json()["error"]


def test_allowed_formats_decode(client):
    files = [(f, _img_bytes(RGB, f)) for f in ("PNG", "JPEG", "WEBP", "BMP", "GIF")]
    files.append(("progressive", _img_bytes(RGB, "JPEG", progressive=True)))
    r = client.post(
        "/predict", files=[("files", (n, d, "application/octet-stream")) for n, d in files]
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == len(files)


def _png_16bit(side: int) -> bytes:
    """A grey 16-bit PNG of side x side that compresses to almost nothing (a few hundred KB)."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\0" + b"\x12\x34" * side
    idat = zlib.compress(row * side, 9)
    header = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_small_images_decode_inline_large_ones_on_the_pool():
    """CIFAR-sized uploads skip the pool trip (serve/decode.py); anything bigger in bytes or
    declared pixels still goes to the pool, and the request's pixel budget still applies."""
    from serve.decode import INLINE_BYTES, _decode_small

    small = _img_bytes(RGB, "PNG")
    tensor, pixels = _decode_small(small, 1_000_000, 1_000_000)
    assert tensor.shape == (3, 32, 32) and pixels == RGB.width * RGB.height
    assert _decode_small(_png_16bit(65), 1_000_000, 1_000_000) is None  # 4,225 pixels > 64 x 64
    assert _decode_small(small + b"\0" * INLINE_BYTES, 1_000_000, 1_000_000) is None
    assert _decode_small(small, 1_000_000, pixels - 1) is None  # the pool refuses it (413)


def test_pixel_budget_per_request(checkpoint):
    app = make_api(_service(checkpoint, max_pixels=2_000_000, request_pixels=3_000_000))
    big = _png_16bit(1200)  # 1.44 MP each: two fit the 3 MP budget, the third does not
    with TestClient(app, raise_server_exceptions=False) as c:
        ok = c.post("/predict", files=[("files", (f"{i}", big, "image/png")) for i in range(2)])
        assert ok.status_code == 200, ok.text
        r = c.post("/predict", files=[("files", (f"{i}", big, "image/png")) for i in range(3)])
        assert r.status_code == 413 and "budget" in r.json()["error"], r.text
        r = c.post("/predict", files=[("files", ("huge", _png_16bit(1500), "image/png"))])
        assert r.status_code == 400 and "limit of 2,000,000" in r.json()["error"], r.text


def test_heavy_decode_does_not_block_probes_and_is_time_bounded(checkpoint):
    """The issue's 6300x6300 16-bit PNG (~40 MP; over the 16 MP default, so allowed here on
    purpose) decodes on the pool while readiness answers in < 1 s throughout; with a 0.5 s
    decode bound the client gets 413 instead of waiting."""
    heavy = _png_16bit(6300)
    svc = _service(
        checkpoint, max_pixels=40_000_000, request_pixels=40_000_000, decode_timeout_s=0.5
    )
    app = make_api(svc)

    async def run():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://app", timeout=60
        ) as c:
            upload = asyncio.create_task(
                c.post("/predict", files=[("files", ("heavy.png", heavy, "image/png"))])
            )
            probes = []
            while not upload.done():
                t = time.perf_counter()
                r = await c.get("/v2/health/ready")
                probes.append(time.perf_counter() - t)
                assert r.status_code == 200
                await asyncio.sleep(0.05)
            return await upload, probes

    start = time.perf_counter()
    response, probes = asyncio.run(run())
    took = time.perf_counter() - start
    print(
        f"heavy decode: HTTP {response.status_code} after {took:.2f}s; {len(probes)} probes, "
        f"slowest {max(probes) * 1000:.0f} ms"
    )
    assert response.status_code == 413 and "took over 0.5 s" in response.json()["error"]
    assert took < 2.0
    assert len(probes) >= 3 and max(probes) < 1.0
    svc.decoder.close()


# --- item 4: auth fails closed; several keys for rotation ------------------------------------


def test_auth_required_without_key_refuses_to_start(checkpoint, monkeypatch):
    from serve.http.auth import MissingApiKey

    monkeypatch.delenv("MODRESNET_TEST_ROTATE", raising=False)
    with pytest.raises(MissingApiKey, match="MODRESNET_TEST_ROTATE is unset or empty"):
        _service(checkpoint, api_key_env="MODRESNET_TEST_ROTATE", api_key_required=True)
    monkeypatch.setenv("MODRESNET_TEST_ROTATE", " , ")
    with pytest.raises(MissingApiKey):
        _service(checkpoint, api_key_env="MODRESNET_TEST_ROTATE", api_key_required=True)


def test_rotation_accepts_every_listed_key(checkpoint, monkeypatch):
    monkeypatch.setenv("MODRESNET_TEST_ROTATE", "new-key, old-key")
    app = make_api(_service(checkpoint, api_key_env="MODRESNET_TEST_ROTATE", api_key_required=True))
    with TestClient(app) as c:
        for key, status in (("new-key", 200), ("old-key", 200), ("other", 401), (None, 401)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            assert c.get("/model", headers=headers).status_code == status, key
        assert c.get("/v2/health/ready").status_code == 200


def test_serve_port_is_outside_rays_port_ranges():
    """Ray's worker ports are 10002-19999 and its other servers take ephemeral ports: a port
    from either range can be taken by a starting Ray before Serve binds it."""
    from pathlib import Path

    from serve.ports import free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(20000 <= p < low for p in ports), ports
    assert len(ports) > 1  # random, so two Serves started together do not pick the same one
