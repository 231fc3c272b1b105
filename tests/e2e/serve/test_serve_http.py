"""The Serve app over real HTTP: /predict, v2, model info, the CLI client and bad input
(the shared server: conftest.py)."""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modresnet.images import decode_image

httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
from helpers.serve import (  # noqa: E402
    _bomb,
    _png,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


# --- predictions over both protocols equal the in-process Predictor ---------------------------


def test_predict_multipart_and_json_match_predictor(server, images, predictor):
    x, y, pngs, classes = images
    expected = predictor.probabilities(torch.stack([decode_image(p) for p in pngs]))
    want = predictor.top_k(expected, 5)
    r = httpx.post(
        server["url"] + "/predict",
        files=[("files", (f"img{i}.png", p, "image/png")) for i, p in enumerate(pngs)],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backend"] == "onnx" and body["model_sha256"] == predictor.loaded.sha256
    assert [p["filename"] for p in body["predictions"]] == [f"img{i}.png" for i in range(len(pngs))]
    for got, exp in zip(body["predictions"], want, strict=False):
        assert [g["label"] for g in got["top_k"]] == [e.label for e in exp]
        np.testing.assert_allclose(
            [g["probability"] for g in got["top_k"]], [e.probability for e in exp], atol=1e-5
        )
    r = httpx.post(
        server["url"] + "/predict",
        json={"images": [base64.b64encode(p).decode() for p in pngs[:3]], "top_k": 2},
    )
    assert r.status_code == 200, r.text
    assert [[g["label"] for g in p["top_k"]] for p in r.json()["predictions"]] == [
        [e.label for e in row[:2]] for row in want[:3]
    ]
    # the torch backend (the `secure` app) gives the same answers
    r = httpx.post(
        server["url"] + "/secure/predict",
        headers=server["auth"],
        files=[("files", ("a.png", pngs[0], "image/png"))],
    )
    assert r.status_code == 200 and r.json()["backend"] == "torch"
    np.testing.assert_allclose(
        [g["probability"] for g in r.json()["predictions"][0]["top_k"]],
        [e.probability for e in want[0]],
        atol=1e-6,
    )


def test_v2_protocol(server, images, predictor):
    x, _, _, classes = images
    url = server["url"]
    assert httpx.get(url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(url + "/v2/health/ready").json() == {"ready": True}
    meta = httpx.get(url + "/v2/models/modresnet").json()
    assert meta["name"] == "modresnet" and meta["outputs"][0]["name"] == "probabilities"
    expected = predictor.probabilities(x).numpy()
    nhwc = x.permute(0, 2, 3, 1).numpy()
    for datatype, shape, data in (
        ("UINT8", [len(x), 32, 32, 3], nhwc.reshape(-1).tolist()),
        ("FP32", [len(x), 3, 32, 32], (x.numpy() / 255.0).reshape(-1).tolist()),
    ):
        r = httpx.post(
            url + "/v2/models/modresnet/infer",
            json={
                "id": "req-1",
                "inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}],
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "modresnet" and body["id"] == "req-1"
        out = body["outputs"][0]
        assert out["name"] == "probabilities" and out["datatype"] == "FP32"
        assert out["shape"] == [len(x), len(classes)]
        np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), expected, atol=1e-5)


def test_model_info_openapi_and_headers(server, predictor):
    url = server["url"]
    info = httpx.get(url + "/model").json()
    assert info["sha256"] == predictor.loaded.sha256
    assert info["classes"] == list(predictor.classes)
    assert info["val_acc"] == predictor.loaded.meta["metrics"]["val_acc"]
    assert "test_acc" in info and info["config"]["model"]["widths"]
    assert httpx.get(url + "/docs").status_code == 404  # no third-party Swagger UI page
    paths = httpx.get(url + "/openapi.json").json()["paths"]  # no auth on the main app
    assert {"/predict", "/v2/models/modresnet/infer", "/model"} <= set(paths)
    assert httpx.get(url + "/secure/openapi.json").status_code == 401
    r = httpx.get(url + "/secure/openapi.json", headers=server["auth"])
    assert r.status_code == 200 and "/predict" in r.json()["paths"]
    # the replica's headers arrive through Serve's ingress, on answers and errors alike
    for r in (
        httpx.get(url + "/model"),
        httpx.get(url + "/secure/model"),
        httpx.get(url + "/no-such-route"),
        httpx.post(url + "/predict", content=b"x", headers={"content-type": "text/plain"}),
        httpx.get(url + "/v2/health/ready"),  # the health app, a deployment of its own
    ):
        assert r.headers.get("x-content-type-options") == "nosniff", (r.status_code, r.headers)
        assert "frame-ancestors 'none'" in r.headers.get("content-security-policy", "")
        assert r.headers.get("cache-control") == "no-store"
        assert r.headers.get("referrer-policy") == "no-referrer"


def test_cli_predict_url(server, images, predictor, tmp_path):
    """`modresnet predict IMAGE... --url URL`: the client mode beside --checkpoint."""
    import json as jsonlib

    from typer.testing import CliRunner

    from modresnet.cli import app

    paths = []
    for i, png in enumerate(images[2][:3]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png)
    want = predictor.top_k(
        predictor.probabilities(torch.stack([decode_image(p) for p in images[2][:3]])), 2
    )
    result = CliRunner().invoke(
        app, ["predict", *map(str, paths), "--url", server["url"], "--top-k", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    got = jsonlib.loads(result.stdout)
    assert [[r["label"] for r in g["top_k"]] for g in got] == [
        [w.label for w in row] for row in want
    ]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["predict", str(bad), "--url", server["url"]])
    assert result.exit_code == 2 and "400" in result.output
    result = CliRunner().invoke(app, ["predict", str(paths[0]), "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "cannot reach" in result.output


# --- every class of bad input is a 4xx with a JSON reason -----------------------------------


@pytest.mark.parametrize("case", ["text", "truncated_png", "corrupt_jpeg", "bomb", "empty_file"])
def test_bad_image_bytes_are_400(server, images, case):
    png = images[2][0]
    jpeg = _png(Image.new("RGB", (64, 64), (200, 10, 10)), format="JPEG")
    data = {
        "text": b"hello, not an image",
        "truncated_png": png[: len(png) // 2],
        "corrupt_jpeg": jpeg[:200] + b"\xff" * 50 + jpeg[250:300],
        "bomb": _bomb(),
        "empty_file": b"",
    }[case]
    r = httpx.post(server["url"] + "/predict", files=[("files", ("x.png", data, "image/png"))])
    assert r.status_code == 400, (case, r.status_code, r.text)
    assert r.json()["error"] and r.json()["status"] == 400


@pytest.mark.parametrize(
    "case,status",
    [
        ("empty_body", 400),
        ("oversize", 413),
        ("content_type", 415),
        ("bad_json", 400),
        ("bad_base64", 400),
        ("json_no_images", 400),
        ("multipart_no_files", 400),
        ("v2_shape", 400),
        ("v2_dtype", 400),
        ("v2_length", 400),
        ("v2_name", 400),
        ("v2_range", 400),
        ("v2_bad_json", 400),
        ("v2_content_type", 415),
        ("top_k", 400),
    ],
)
def test_bad_requests_are_4xx_json(server, case, status):
    url = server["url"]
    v2 = url + "/v2/models/modresnet/infer"

    def tensor(**kw):
        t = {"name": "input", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}
        return {"inputs": [{**t, **kw}]}

    requests = {
        "empty_body": lambda: httpx.post(
            url + "/predict", content=b"", headers={"content-type": "application/json"}
        ),
        "oversize": lambda: httpx.post(
            url + "/predict",
            content=b"\0" * (2 * 1024 * 1024),
            headers={"content-type": "application/json"},
        ),
        "content_type": lambda: httpx.post(
            url + "/predict", content=b"abc", headers={"content-type": "text/plain"}
        ),
        "bad_json": lambda: httpx.post(
            url + "/predict", content=b"{not json", headers={"content-type": "application/json"}
        ),
        "bad_base64": lambda: httpx.post(url + "/predict", json={"images": ["***"]}),
        "json_no_images": lambda: httpx.post(url + "/predict", json={"pictures": []}),
        "multipart_no_files": lambda: httpx.post(
            url + "/predict", data={"other": "x"}, files=[("nope", ("a", b"x"))]
        ),
        "v2_shape": lambda: httpx.post(v2, json=tensor(shape=[1, 28, 28, 1], data=[0] * 784)),
        "v2_dtype": lambda: httpx.post(v2, json=tensor(datatype="INT64")),
        "v2_length": lambda: httpx.post(v2, json=tensor(data=[0] * 100)),
        "v2_name": lambda: httpx.post(v2, json=tensor(name="pixels")),
        "v2_range": lambda: httpx.post(v2, json=tensor(data=[300] * 3072)),
        "v2_bad_json": lambda: httpx.post(
            v2, content=b"[1,2", headers={"content-type": "application/json"}
        ),
        "v2_content_type": lambda: httpx.post(
            v2, content=b"x", headers={"content-type": "image/png"}
        ),
        "top_k": lambda: httpx.post(url + "/predict?top_k=99", files=[("files", ("a", b"x"))]),
    }
    r = requests[case]()
    assert r.status_code == status, (case, r.status_code, r.text)
    assert r.json()["status"] == status and r.json()["error"], r.text


def test_unusual_image_modes_accepted(server):
    rgb = Image.effect_mandelbrot((40, 40), (-2, -1.5, 1, 1.5), 80).convert("RGB")
    frames = [rgb, rgb.rotate(90), rgb.rotate(180)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    sixteen = Image.fromarray(np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 28)
    assert sixteen.mode == "I;16"
    cases = {
        "animated.gif": gif.getvalue(),
        "16bit.png": _png(sixteen),
        "gray.png": _png(rgb.convert("L")),
        "palette.png": _png(rgb.convert("P")),
        "rgba.png": _png(rgb.convert("RGBA")),
        "cmyk.jpg": _png(rgb.convert("CMYK"), format="JPEG"),
        "big.jpg": _png(rgb.resize((800, 600)), format="JPEG"),
    }
    r = httpx.post(
        server["url"] + "/predict",
        files=[("files", (name, data, "application/octet-stream")) for name, data in cases.items()],
    )
    assert r.status_code == 200, r.text
    assert [p["filename"] for p in r.json()["predictions"]] == list(cases)


# --- request ids --------------------------------------------------------------------------------


def test_every_response_carries_one_request_id_and_the_replica_logs_errors_with_it(server, images):
    """Serve's own servers echo the request id; the one they echo is sane (serve_env's HTTP
    callback swaps any other for a new one), and error bodies and the replica's log name it."""
    url = server["url"]
    files = [("files", ("a.png", images[2][0], "image/png"))]
    ok = httpx.post(url + "/predict", files=files, headers={"X-Request-Id": "trace-e2e-1"})
    assert ok.status_code == 200 and ok.headers.get_list("x-request-id") == ["trace-e2e-1"]
    for sent in ("no spaces allowed", "x" * 200, "<script>"):
        r = httpx.get(url + "/model", headers={"X-Request-Id": sent})
        (given,) = r.headers.get_list("x-request-id")
        assert re.fullmatch(r"[0-9a-f]{32}", given), (sent, given)
    (given,) = httpx.get(url + "/v2/health/live").headers.get_list("x-request-id")  # health app
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", given), given
    rid = f"trace-e2e-{time.time_ns()}"
    bad = httpx.post(url + "/predict", content=b"x", headers={"X-Request-Id": rid})
    assert bad.status_code == 415 and bad.json()["request_id"] == rid, bad.text
    assert bad.headers.get_list("x-request-id") == [rid]
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    deadline = time.monotonic() + 30
    while True:
        lines = [
            line
            for path in logs.glob("replica_modresnet_Classifier_*.log")
            for line in path.read_text(errors="replace").splitlines()
            if f"request {rid}: 415" in line
        ]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lines, f"no replica log line names {rid}"
