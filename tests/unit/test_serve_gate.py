"""The request gate of a replica's app, in-process (no Ray): request ids on every response and
in every error body, the queue limit refusing with a counted 429, a failed route a 500 naming
its id, and what each request adds to the replica's series: bounded route labels, status
codes, rejection reasons, images and decode time. (The real series through Ray's metrics agent
and a real Prometheus: tests/e2e/serve/test_serve_metrics.py.)"""

from __future__ import annotations

import asyncio
import logging
import re

import httpx
import torch
from starlette.testclient import TestClient

from modresnet.images import encode_png
from serve.app import build_app, serve_limits
from serve.args import ServeArgs
from serve.batcher import Batcher
from serve.http.asgi import make_api
from serve.http.request_ids import SaneRequestIds, sane_id
from serve.metrics import ROUTES, Metrics, RayMetrics, for_replica, route_of
from serve.service import Service

PNG = encode_png(torch.zeros(3, 32, 32, dtype=torch.uint8))
FILES = [("files", ("a.png", PNG, "image/png"))]
KEY_ENV, KEY = "MODRESNET_TEST_GATE_KEY", "gate-key-0b7e"
NEW_ID = re.compile(r"[0-9a-f]{32}")


class Recorded(Metrics):
    """What the app reports to its series, kept in lists (the replica's own go to Ray)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []
        self.versions: list[str] = []
        self.images_seen: list[tuple[str, int]] = []

    def request(self, route: str, code: int, seconds: float, version: str = "") -> None:
        assert seconds >= 0
        self.requests.append((route, code))
        self.versions.append(version)

    def images(self, route: str, count: int, decode_s: float) -> None:
        assert decode_s >= 0
        self.images_seen.append((route, count))


def _service(checkpoint, **kw) -> tuple[Service, Recorded]:
    svc = Service(ServeArgs(checkpoint=str(checkpoint), backend="torch", **kw).model_dump())
    svc.metrics = recorded = Recorded()
    return svc, recorded


def test_route_labels_come_from_the_table_never_the_path():
    assert route_of("/predict") == "/predict"
    assert route_of("/v2/models/modresnet/infer") == "/v2/infer"
    assert route_of("/v2/models/modresnet") == "/v2/metadata"
    assert route_of("/") == "/page"
    for path in ("/predict/", "/predict/../model", "/v2/models/other/infer", "/%00", "/x" * 500):
        assert route_of(path) == "other", path
    assert set(ROUTES.values()) | {"other"} == {
        "/predict",
        "/v2/infer",
        "/v2/ready",
        "/v2/metadata",
        "/model",
        "/page",
        "/openapi",
        "other",
    }


def test_outside_a_replica_nothing_is_recorded_through_ray():
    metrics = for_replica(True, models=[("0" * 64, "torch", "m/1")], max_replicas=2)
    assert type(metrics) is Metrics and not isinstance(metrics, RayMetrics)


def test_each_request_is_counted_by_route_and_code_and_its_images_with_it(
    random_checkpoint, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, KEY)
    svc, recorded = _service(random_checkpoint, api_key_env=KEY_ENV, api_key_required=True)
    auth = {"Authorization": f"Bearer {KEY}"}
    app = make_api(svc)  # under a route prefix, as Serve runs it: the label drops the prefix
    prefixed = {"root_path": "/secure", "base_url": "http://testserver/secure"}
    with TestClient(app, raise_server_exceptions=False, **prefixed) as client:
        assert client.post("/predict", files=FILES * 3, headers=auth).status_code == 200
        assert client.post("/predict", files=FILES).status_code == 401
        bad = [("files", ("x.png", b"not an image", "image/png"))]
        assert client.post("/predict", files=bad, headers=auth).status_code == 400
        assert client.post("/predict", content=b"x", headers=auth).status_code == 415
        x = {"name": "input", "shape": [2, 32, 32, 3], "datatype": "UINT8", "data": [0] * 6144}
        infer = client.post("/v2/models/modresnet/infer", json={"inputs": [x]}, headers=auth)
        assert infer.status_code == 200
        assert client.get("/").status_code == 200
        assert client.get("/no/such/path").status_code == 404
    assert recorded.requests == [
        ("/predict", 200),
        ("/predict", 401),
        ("/predict", 400),
        ("/predict", 415),
        ("/v2/infer", 200),
        ("/page", 200),
        ("other", 404),
    ]
    label = svc.primary.label  # only the answered model requests name the version
    assert recorded.versions == [label, "", "", "", label, "", ""]
    assert recorded.images_seen == [("/predict", 3), ("/v2/infer", 2)]


def test_every_response_carries_one_request_id_and_errors_name_it(random_checkpoint, caplog):
    svc, _ = _service(random_checkpoint)
    with TestClient(make_api(svc), raise_server_exceptions=False) as client:
        ok = client.post("/predict", files=FILES, headers={"X-Request-Id": "trace-42.a:b_c"})
        assert ok.status_code == 200
        assert ok.headers.get_list("x-request-id") == ["trace-42.a:b_c"]
        for header in ("has space", "x" * 129, "ünïcode".encode(), "a\tb", ""):
            r = client.get("/model", headers={"X-Request-Id": header})
            (given,) = r.headers.get_list("x-request-id")
            assert NEW_ID.fullmatch(given), (header, given)
        twice = client.get("/model", headers=[("X-Request-Id", "a"), ("X-Request-Id", "b")])
        assert NEW_ID.fullmatch(twice.headers["x-request-id"])
        assert NEW_ID.fullmatch(client.get("/model").headers["x-request-id"])
        with caplog.at_level(logging.INFO, logger="ray.serve"):
            for r in (
                client.post("/predict", content=b"x", headers={"X-Request-Id": "req-415"}),
                client.get("/nowhere", headers={"X-Request-Id": "req-404"}),
            ):
                body = r.json()
                assert body["request_id"] == r.headers["x-request-id"], body
                assert set(body) == {"error", "status", "request_id"}
    logged = caplog.text
    assert "request req-415: 415 unsupported Content-Type" in logged, logged
    assert "request req-404: 404" in logged, logged


def test_a_failed_route_is_a_500_naming_its_id_in_the_body_and_the_log(random_checkpoint, caplog):
    class Failing:
        name = "torch"

        def probabilities(self, images):
            raise RuntimeError("backend down")

    svc, recorded = _service(random_checkpoint)
    svc.primary.backend = Failing()
    with TestClient(make_api(svc), raise_server_exceptions=False) as client:
        with caplog.at_level(logging.INFO, logger="ray.serve"):
            r = client.post("/predict", files=FILES, headers={"X-Request-Id": "req-500"})
    assert r.status_code == 500 and r.json()["request_id"] == "req-500", r.text
    assert r.headers.get_list("x-request-id") == ["req-500"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "backend down" not in r.text
    assert recorded.requests == [("/predict", 500)]
    assert "request req-500: 500 on /predict" in caplog.text
    assert "RuntimeError: backend down" in caplog.text  # the traceback, with the id


def test_past_the_queue_a_request_is_refused_at_once_with_a_counted_429(random_checkpoint):
    """One at work and one waiting: the third is refused (429, Retry-After, the JSON error with
    its id), while the first two are answered once the first one's body arrives."""
    svc, recorded = _service(
        random_checkpoint, max_ongoing_requests=1, max_queued_requests=1, retry_after_s=2
    )
    app = make_api(svc)
    boundary = "gateboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def main() -> list[httpx.Response]:
        release = asyncio.Event()

        async def slow_body():
            yield head
            await release.wait()  # holds the one slot while its body is on the way
            yield PNG + tail

        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(
                client.post("/predict", content=slow_body(), headers=headers)
            )
            await asyncio.sleep(0.2)
            second = asyncio.create_task(client.post("/predict", files=FILES))
            await asyncio.sleep(0.2)
            assert svc.admission.waiting == 1
            third = await client.post("/predict", files=FILES, headers={"X-Request-Id": "shed-1"})
            release.set()
            return [await first, await second, third]

    first, second, third = asyncio.run(main())
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert third.status_code == 429 and third.headers["retry-after"] == "2", third.text
    assert third.json()["request_id"] == "shed-1" and "overloaded" in third.json()["error"]
    assert third.headers["x-content-type-options"] == "nosniff"  # inside the security headers
    assert sorted(recorded.requests) == [("/predict", 200), ("/predict", 200), ("/predict", 429)]
    assert svc.admission.waiting == 0


def test_serve_holds_twice_what_the_gate_admits_so_the_gate_refuses_first(random_checkpoint):
    args = ServeArgs(
        checkpoint=str(random_checkpoint), max_ongoing_requests=4, max_queued_requests=6
    )
    assert serve_limits(args) == {"max_ongoing_requests": 20, "max_queued_requests": 6}
    unbounded = args.model_copy(update={"max_queued_requests": -1})
    assert serve_limits(unbounded) == {"max_ongoing_requests": 4, "max_queued_requests": -1}
    no_queue = args.model_copy(update={"max_queued_requests": 0})  # Serve's least queue is 1
    assert serve_limits(no_queue) == {"max_ongoing_requests": 8, "max_queued_requests": 1}
    deployment = build_app(args)._bound_deployment
    assert deployment.max_ongoing_requests == 20 and deployment.max_queued_requests == 6


def test_the_batcher_reports_each_batch_its_waits_and_run_time():
    seen: list[tuple[list[float], float]] = []

    async def run(items: list[int]) -> list[int]:
        await asyncio.sleep(0.01)
        return [i * 2 for i in items]

    async def main() -> list[int]:
        batcher = Batcher(run, max_batch_size=4, observe=lambda w, s: seen.append((w, s)))
        return list(await asyncio.gather(*(batcher(i) for i in range(6))))

    assert asyncio.run(main()) == [0, 2, 4, 6, 8, 10]
    assert [len(waits) for waits, _ in seen] == [4, 2]
    assert all(w >= 0 for waits, _ in seen for w in waits) and all(s >= 0.01 for _, s in seen)
    assert min(seen[1][0]) >= 0.01  # the second batch's images waited for the first to run


def test_serve_servers_get_a_sane_id_before_they_echo_one():
    """SaneRequestIds runs in front of Serve's own id handling (serve/environment.py)."""
    seen: list[list] = []

    async def echo(scope, receive, send):
        seen.append([v for k, v in scope["headers"] if k == b"x-request-id"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = TestClient(SaneRequestIds(echo))  # no lifespan: `echo` speaks only HTTP
    client.get("/", headers={"X-Request-Id": "ok-1"})
    client.get("/", headers={"X-Request-Id": "not ok"})
    client.get("/")
    assert seen[0] == [b"ok-1"]
    assert len(seen[1]) == 1 and NEW_ID.fullmatch(seen[1][0].decode())
    assert seen[2] == []  # none sent: Serve makes one
    assert sane_id([(b"x-request-id", b"a" * 128)]) == "a" * 128
    assert sane_id([(b"x-request-id", b"a" * 129)]) is None
