"""Two versions in one replica, in-process (`make_api(Service(args))`, two real checkpoints): the
split per request by the canary share, pinning with X-Model-Version, the header on every model
answer and on none refused before the model, each version's own series label, a canary that
fails on purpose, /model's versions, and the page's sample strip. No Ray, no data set."""

from __future__ import annotations

import base64
import json
import random
import re
from collections import Counter

import pytest
import torch
from pydantic import ValidationError
from starlette.testclient import TestClient

from modresnet import config as configs
from modresnet.checkpoint import load_model, save_model
from modresnet.data import CLASSES
from modresnet.images import encode_png
from modresnet.model import build_model
from serve.args import ServeArgs
from serve.http.asgi import make_api
from serve.metrics import Metrics
from serve.protocols import samples
from serve.service import Service, default_label

PNG = encode_png(torch.zeros(3, 32, 32, dtype=torch.uint8))
FILES = [("files", ("a.png", PNG, "image/png"))]
V2 = "/v2/models/modresnet"
PIXELS = {"name": "input", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}
CANARY = "cifar/2"
LINEAGE = {"run_uri": "file:///runs/b", "search": "asha-1", "trial": "t3", "code_version": "abc"}
TOLERANCE = 0.06  # on a share measured over 600 draws: more than 3 standard deviations


class Recorded(Metrics):
    def __init__(self) -> None:
        self.requests: list[tuple[str, int, str]] = []

    def request(self, route: str, code: int, seconds: float, version: str = "") -> None:
        self.requests.append((route, code, version))


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory):
    """A second checkpoint, other weights, as a run's best/ with the test.json that scored it."""
    cfg = configs.resolve("debug")
    torch.manual_seed(1)
    run = tmp_path_factory.mktemp("canary-run")
    save_model(run / "best", build_model(cfg.model), cfg, CLASSES, 2, {"val_acc": 0.2})
    sha = load_model(run / "best").sha256
    (run / "test.json").write_text(json.dumps({"sha256": sha, "test_acc": 0.25, "n": 40}))
    return run


def _service(primary, canary=None, share=0.0, **kw) -> tuple[Service, Recorded]:
    args = ServeArgs(
        checkpoint=str(primary),
        backend="torch",
        canary=None if canary is None else {"checkpoint": str(canary), **kw},
        canary_share=share,
    )
    svc = Service(args.model_dump())
    svc.metrics = recorded = Recorded()
    return svc, recorded


def _labels(client: TestClient, n: int) -> Counter:
    return Counter(
        client.post("/predict", files=FILES).headers["x-model-version"] for _ in range(n)
    )


@pytest.mark.parametrize("share", [0.0, 0.25])  # each then at 1 - share: 1.0, 0.75
def test_the_canary_answers_its_share_of_requests(random_checkpoint, canary_run, share):
    svc, _ = _service(random_checkpoint, canary_run / "best", share, version=CANARY)
    random.seed(7)
    with TestClient(make_api(svc)) as client:
        seen = _labels(client, 600)
    assert set(seen) <= {svc.primary.label, CANARY}, seen
    assert abs(seen[CANARY] / 600 - share) <= TOLERANCE, seen
    svc.share = 1 - share  # the live share, as the traffic table's poll sets it
    with TestClient(make_api(svc)) as client:
        seen = _labels(client, 600)
    assert abs(seen[CANARY] / 600 - (1 - share)) <= TOLERANCE, seen


def test_a_request_pins_a_version_and_an_unknown_one_is_a_404_naming_the_served(
    random_checkpoint, canary_run
):
    svc, recorded = _service(random_checkpoint, canary_run / "best", 0.5, version=CANARY)
    primary = svc.primary.label
    canary_sha = load_model(canary_run / "best").sha256
    with TestClient(make_api(svc)) as client:
        for _ in range(20):
            r = client.post("/predict", files=FILES, headers={"X-Model-Version": CANARY})
            assert r.headers["x-model-version"] == CANARY
            assert r.json()["model_sha256"] == canary_sha and r.json()["model_version"] == CANARY
            r = client.post(
                V2 + "/infer", json={"inputs": [PIXELS]}, headers={"X-Model-Version": primary}
            )
            assert r.headers["x-model-version"] == primary and r.json()["model_version"] == primary
        r = client.post("/predict", files=FILES, headers={"X-Model-Version": "cifar/9"})
    assert r.status_code == 404 and "x-model-version" not in r.headers
    body = r.json()
    assert set(body) == {"error", "status", "request_id"}
    assert body["error"] == (
        f"X-Model-Version 'cifar/9' is not served here; served: {primary}, {CANARY}"
    )
    assert recorded.requests[-1] == ("/predict", 404, "")


def test_every_model_answer_names_its_version_and_no_refusal_before_the_model_does(
    random_checkpoint, canary_run
):
    svc, recorded = _service(random_checkpoint, canary_run / "best", 0.0, version=CANARY)
    primary = svc.primary.label
    assert (
        primary
        == default_label(svc.primary.loaded.sha256)
        == "sha-" + svc.primary.loaded.sha256[:12]
    )
    with TestClient(make_api(svc)) as client:
        answers = {
            "/predict": client.post("/predict", files=FILES),
            "/v2/infer": client.post(V2 + "/infer", json={"inputs": [PIXELS]}),
            "/v2/metadata": client.get(V2),
            "/model": client.get("/model"),
        }
        refused = {
            415: client.post("/predict", content=b"x", headers={"content-type": "text/plain"}),
            400: client.post("/predict", files=[("files", ("a.png", b"no", "image/png"))]),
            413: client.post("/predict", json={"images": [base64.b64encode(PNG).decode()] * 65}),
        }
        pinned_meta = client.get(V2, headers={"X-Model-Version": CANARY})
    for route, r in answers.items():
        assert r.status_code == 200 and r.headers["x-model-version"] == primary, route
    for code, r in refused.items():
        assert r.status_code == code and "x-model-version" not in r.headers, (code, r.text)
    assert answers["/v2/metadata"].json()["versions"] == [primary, CANARY]
    assert pinned_meta.headers["x-model-version"] == CANARY
    assert recorded.requests[:4] == [(route, 200, primary) for route in answers]
    assert [v for _, _, v in recorded.requests[4:7]] == ["", "", ""]


def test_a_failing_canary_gets_500s_under_its_own_label_and_spares_the_champion(
    random_checkpoint, canary_run
):
    """fail_rate 1: every canary batch fails (a 500 named by the canary's label, which is what
    a canary watch counts); the champion answers on, and the replica stays healthy."""
    svc, recorded = _service(
        random_checkpoint, canary_run / "best", 1.0, version=CANARY, fail_rate=1.0
    )
    primary = svc.primary.label
    with TestClient(make_api(svc), raise_server_exceptions=False) as client:
        failed = [client.post("/predict", files=FILES) for _ in range(5)]
        ok = client.post("/predict", files=FILES, headers={"X-Model-Version": primary})
    for r in failed:
        assert r.status_code == 500 and r.headers["x-model-version"] == CANARY, r.text
        assert "chaos" not in r.text  # the client gets the one 500 line, the log the cause
    assert ok.status_code == 200 and ok.headers["x-model-version"] == primary
    assert recorded.requests == [("/predict", 500, CANARY)] * 5 + [("/predict", 200, primary)]
    svc.check_health()  # failures on purpose are not the replica's


def test_model_lists_the_versions_with_accuracy_lineage_and_the_canary_share(
    random_checkpoint, canary_run
):
    svc, _ = _service(random_checkpoint, canary_run / "best", 0.2, version=CANARY, lineage=LINEAGE)
    svc.canary_state = {"phase": "canary", "candidate": CANARY}
    with TestClient(make_api(svc)) as client:
        info = client.get("/model").json()
        pinned = client.get("/model", headers={"X-Model-Version": CANARY}).json()
    primary, canary = info["versions"]
    assert primary["label"] == svc.primary.label and primary["role"] == "primary"
    assert primary["share"] == pytest.approx(0.8) and primary["val_acc"] == 0.1
    assert primary["test_acc"] is None and primary["lineage"] == {}
    assert canary == {
        "label": CANARY,
        "role": "canary",
        "sha256": load_model(canary_run / "best").sha256,
        "val_acc": 0.2,
        "test_acc": 0.25,
        "test_n": 40,
        "lineage": LINEAGE,
        "path": str(canary_run / "best"),
        "share": pytest.approx(0.2),
        "backend": "torch",
    }
    assert info["canary"] == {"share": 0.2, "state": {"phase": "canary", "candidate": CANARY}}
    assert info["version"] == svc.primary.label
    assert pinned["version"] == CANARY and pinned["test_acc"] == 0.25


def test_one_version_has_no_canary(random_checkpoint):
    svc, _ = _service(random_checkpoint)
    with TestClient(make_api(svc)) as client:
        info = client.get("/model").json()
    assert info["canary"] is None and [v["share"] for v in info["versions"]] == [1.0]


def test_a_registered_version_shows_the_registry_figures_beside_a_bare_checkpoint(
    random_checkpoint,
):
    """A version fetched from the registry is a bare checkpoint folder (no test.json beside
    it): its test accuracy is the one the registry recorded (its lineage)."""
    recorded = {"test_acc": 0.61, "test_n": 10000, "val_acc": 0.6, "run_uri": "s3://b/r"}
    args = ServeArgs(
        checkpoint=str(random_checkpoint), backend="torch", version="cifar/1", lineage=recorded
    )
    with TestClient(make_api(Service(args.model_dump()))) as client:
        (version,) = client.get("/model").json()["versions"]
    assert (version["label"], version["test_acc"], version["test_n"]) == ("cifar/1", 0.61, 10000)
    assert version["val_acc"] == 0.1  # the checkpoint's own figure comes first


@pytest.mark.parametrize(
    "args,message",
    [
        ({"canary": {"checkpoint": "b", "fial_rate": 1}}, "did you mean 'canary.fail_rate'?"),
        ({"canary": {"checkpoint": "b", "fail_rate": 2}}, "less than or equal to 1"),
        ({"canary_share": -0.1}, "greater than or equal to 0"),
        ({"version": "a/1\r\nSet-Cookie: x"}, "should match pattern"),
    ],
)
def test_canary_args_are_checked_and_named(args, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        ServeArgs.model_validate({"checkpoint": "a", **args})


def test_the_same_label_twice_is_refused(random_checkpoint, canary_run):
    with pytest.raises(ValueError, match="the canary has the primary's label 'x/1'"):
        Service(
            ServeArgs(
                checkpoint=str(random_checkpoint),
                version="x/1",
                backend="torch",
                canary={"checkpoint": str(canary_run), "version": "x/1"},
            ).model_dump()
        )


def test_the_page_carries_the_bundled_test_images_in_itself(random_checkpoint):
    """One request loads the page, strip included: a burst of image requests would meet a
    small queue's 429s."""
    svc, recorded = _service(random_checkpoint)
    bundled = samples.load()
    assert len(bundled) == samples.COUNT == 16
    with TestClient(make_api(svc)) as client:
        page = client.get("/")
        gone = client.get("/samples/0.png")
    buttons = re.findall(
        r'data-index="(\d+)" data-label="(\w+)".*?src="data:image/png;base64,([A-Za-z0-9+/=]+)"',
        page.text,
    )
    on_disk = json.loads(samples.PATH.read_text())
    assert [(int(i), label, base64.b64decode(png)) for i, label, png in buttons] == [
        (s["index"], s["label"], s["png"]) for s in bundled
    ]
    assert [base64.b64decode(row["png"]) for row in on_disk] == [s["png"] for s in bundled]
    assert "img-src 'self' blob: data:;" in page.headers["content-security-policy"]
    assert gone.status_code == 404
    assert {route for route, _, _ in recorded.requests} == {"/page", "other"}
