"""What the Serve app tells browsers, in-process (no Ray): security headers on every
response, the OpenAPI spec behind the API key, no third-party page on the origin."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
import torch
from starlette.testclient import TestClient

from modresnet.images import encode_png
from serve.args import ServeArgs
from serve.http.asgi import make_api
from serve.service import Service

KEY_ENV, KEY = "MODRESNET_TEST_HEADERS_KEY", "headers-key-81d2"
AUTH = {"Authorization": f"Bearer {KEY}"}
PNG = encode_png(torch.zeros(3, 32, 32, dtype=torch.uint8))
INFER = "/v2/models/modresnet/infer"


@pytest.fixture(scope="module")
def checkpoint(random_checkpoint):
    return random_checkpoint


def _client(checkpoint, monkeypatch, auth: bool) -> TestClient:
    kw = {}
    if auth:
        monkeypatch.setenv(KEY_ENV, KEY)
        kw = {"api_key_env": KEY_ENV, "api_key_required": True}
    svc = Service(ServeArgs(checkpoint=str(checkpoint), backend="torch", **kw).model_dump())
    return TestClient(make_api(svc), raise_server_exceptions=False)


@pytest.fixture()
def secure(checkpoint, monkeypatch):
    with _client(checkpoint, monkeypatch, auth=True) as client:
        yield client


def _assert_secure_headers(r, case) -> None:
    h = r.headers
    csp = h.get("content-security-policy", "")
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives.get("default-src") == "'self'", (case, csp)
    assert directives.get("frame-ancestors") == "'none'", (case, csp)
    assert "unsafe" not in csp and "http" not in csp, (case, csp)  # no inline-anything, no CDN
    assert h.get("x-content-type-options") == "nosniff", (case, dict(h))
    assert h.get("referrer-policy") == "no-referrer", (case, dict(h))
    assert h.get("cache-control") == "no-store", (case, dict(h))


def test_security_headers_on_every_response(secure):
    files = [("files", ("a.png", PNG, "image/png"))]
    cases = {
        "page": (secure.get("/"), 200),
        "predict": (secure.post("/predict", files=files, headers=AUTH), 200),
        "infer": (
            secure.post(
                INFER,
                json={
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 32, 32, 3],
                            "datatype": "UINT8",
                            "data": [0] * 3072,
                        }
                    ]
                },
                headers=AUTH,
            ),
            200,
        ),
        "model": (secure.get("/model", headers=AUTH), 200),
        "live": (secure.get("/v2/health/live"), 200),
        "openapi": (secure.get("/openapi.json", headers=AUTH), 200),
        "no key": (secure.post("/predict", files=files), 401),
        "bad image": (
            secure.post("/predict", files=[("files", ("a.png", b"no", "image/png"))], headers=AUTH),
            400,
        ),
        "content type": (
            secure.post("/predict", content=b"x", headers={**AUTH, "content-type": "text/plain"}),
            415,
        ),
        "unknown route": (secure.get("/nope"), 404),
        "wrong method": (secure.get("/predict"), 405),
    }
    for case, (r, status) in cases.items():
        assert r.status_code == status, (case, r.status_code, r.text[:200])
        _assert_secure_headers(r, case)


def test_a_server_error_carries_the_headers_too(checkpoint):
    """A 500 comes from Starlette's outermost middleware, past every other: a backend that
    fails (the one 5xx left: not the client's doing) still answers with the headers."""

    class Failing:
        name = "torch"

        def probabilities(self, images):
            raise RuntimeError("backend down")

    svc = Service(ServeArgs(checkpoint=str(checkpoint), backend="torch").model_dump())
    svc.primary.backend = Failing()
    with TestClient(make_api(svc), raise_server_exceptions=False) as client:
        r = client.post("/predict", files=[("files", ("a.png", PNG, "image/png"))])
    assert r.status_code == 500 and r.json()["status"] == 500, r.text
    assert "backend down" not in r.text  # the traceback goes to the log, not the client
    _assert_secure_headers(r, "500")


def test_openapi_needs_the_key_and_no_docs_pages(secure, checkpoint, monkeypatch):
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert secure.get(path).status_code == 404, path
        assert secure.get(path, headers=AUTH).status_code == 404, path
    r = secure.get("/openapi.json")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    r = secure.get("/openapi.json", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "wrong" in r.json()["error"]
    r = secure.get("/openapi.json", headers=AUTH)
    assert r.status_code == 200 and {"/predict", INFER, "/model"} <= set(r.json()["paths"])
    with _client(checkpoint, monkeypatch, auth=False) as open_client:  # no auth: open
        assert open_client.get("/openapi.json").status_code == 200
        assert open_client.get("/docs").status_code == 404


def test_the_page_runs_only_its_own_inline_code_and_keeps_no_key(secure):
    r = secure.get("/")
    html, csp = r.text, r.headers["content-security-policy"]
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in csp, (tag, csp)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing off-origin
    assert "sessionStorage" not in html and "localStorage" not in html
