"""Open Inference Protocol v2 with a real inference client: `tritonclient.http` in its default
binary tensor mode and in JSON mode, against the app each replica builds, served by uvicorn
on a loopback port (no Ray: seconds)."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch

pytest.importorskip("ray")
uvicorn = pytest.importorskip("uvicorn")
httpclient = pytest.importorskip("tritonclient.http")

from serve.args import ServeArgs  # noqa: E402
from serve.http.asgi import make_api  # noqa: E402
from serve.service import Service  # noqa: E402


@pytest.fixture(scope="module")
def served(random_checkpoint):
    svc = Service(ServeArgs(checkpoint=str(random_checkpoint), backend="torch").model_dump())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(make_api(svc), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield svc, f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def batch():
    return torch.randint(
        0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8
    )


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype,layout", [("UINT8", "NHWC"), ("FP32", "NCHW")])
def test_tritonclient_infer(served, batch, binary, datatype, layout):
    svc, url = served
    expected = svc.primary.backend.probabilities(batch)
    x = batch.permute(0, 2, 3, 1).numpy() if layout == "NHWC" else batch.numpy()
    x = np.ascontiguousarray(x if datatype == "UINT8" else x.astype(np.float32) / 255.0)
    client = httpclient.InferenceServerClient(url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("modresnet")
        meta = client.get_model_metadata("modresnet")
        assert [i["name"] for i in meta["inputs"]] == ["input"]  # unique input names
        inp = httpclient.InferInput("input", list(x.shape), datatype)
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer("modresnet", [inp], outputs=[out], request_id="r1")
        probs = result.as_numpy("probabilities")
        assert probs.shape == (4, 10) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        response = result.get_response()
        assert response["id"] == "r1"
        assert ("binary_data_size" in (response["outputs"][0].get("parameters") or {})) == binary
        # tritonclient's very defaults: binary input, no outputs named (binary_data_output)
        plain = httpclient.InferInput("input", list(x.shape), datatype)
        plain.set_data_from_numpy(x)
        np.testing.assert_allclose(
            client.infer("modresnet", [plain]).as_numpy("probabilities"), expected, atol=1e-6
        )
    finally:
        client.close()


@pytest.mark.parametrize(
    "case,fragment",
    [
        ("short", "need 3072"),
        ("size_mismatch", "bytes follow the JSON"),
        ("header_too_big", "does not fit"),
        ("header_not_number", "not a byte count"),
        ("fp32_nan", "finite"),
        ("both", "both"),
    ],
)
def test_binary_framing_errors_are_400(served, case, fragment):
    import httpx

    _, url = served

    def request(size, data, datatype="UINT8", with_data=False):
        tensor = {
            "name": "input",
            "shape": [1, 32, 32, 3],
            "datatype": datatype,
            "parameters": {"binary_data_size": size},
        }
        if with_data:
            tensor["data"] = [0] * 3072
        import json

        head = json.dumps({"inputs": [tensor]}).encode()
        return head, data

    cases = {
        "short": request(100, b"\0" * 100),
        "size_mismatch": request(3072, b"\0" * 3000),
        "header_too_big": request(3072, b"\0" * 3072),
        "header_not_number": request(3072, b"\0" * 3072),
        "fp32_nan": request(4 * 3072, np.full(3072, np.nan, "<f4").tobytes(), "FP32"),
        "both": request(3072, b"\0" * 3072, with_data=True),
    }
    head, data = cases[case]
    length = {"header_too_big": "999999", "header_not_number": "12abc"}.get(case, str(len(head)))
    r = httpx.post(
        f"http://{url}/v2/models/modresnet/infer",
        content=head + data,
        headers={
            "Inference-Header-Content-Length": length,
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"], r.json()
