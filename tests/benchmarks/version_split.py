"""What the canary split costs a request: the replica's choice of the answering version
(serve/service.py `choose`: the X-Model-Version lookup, a uniform draw against the live share,
the label put in the request's scope; the gate then adds the header and the series label),
timed alone and as a whole in-process /predict, each beside a baseline of one version without
a canary, in the same run. Random weights of the debug model, torch backend, 1 thread.

    .venv/bin/python tests/benchmarks/version_split.py [--calls 200000] [--requests 400]

The last line is one JSON object: ns per choice beyond making the request object (one version
/ a canary at a 50 % share / pinned by the header) and the median in-process /predict in ms
(one version / two at 50 %).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _checkpoints(root: Path) -> list[Path]:
    import torch

    from modresnet import config as configs
    from modresnet.checkpoint import save_model
    from modresnet.data import CLASSES
    from modresnet.model import build_model

    cfg = configs.resolve("debug")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(root / f"ckpt{seed}")
        save_model(paths[-1], build_model(cfg.model).eval(), cfg, CLASSES, 0, {})
    return paths


def _choice_ns(svc, headers: list[tuple[bytes, bytes]], calls: int) -> float:
    """ns per `svc.choose` of a request with these headers, less the making of the request
    (a fresh scope each time, as a request has; svc None: that making alone), best of 5."""
    from starlette.requests import Request

    def each(request: Request) -> object:
        return svc.choose(request) if svc is not None else request

    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(calls):
            each(Request({"type": "http", "headers": headers}))
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


def _request_ms(svc, requests: int) -> float:
    """Median ms of an in-process POST /predict of one image."""
    import torch
    from starlette.testclient import TestClient

    from modresnet.images import encode_png
    from serve.http.asgi import make_api

    files = [
        ("files", ("a.png", encode_png(torch.zeros(3, 32, 32, dtype=torch.uint8)), "image/png"))
    ]
    times = []
    with TestClient(make_api(svc)) as client:
        for _ in range(20):
            client.post("/predict", files=files)
        for _ in range(requests):
            start = time.perf_counter()
            assert client.post("/predict", files=files).status_code == 200
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    import torch

    from serve.args import ServeArgs
    from serve.service import Service

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=400)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        first, second = _checkpoints(Path(tmp))
        one = Service(ServeArgs(checkpoint=str(first), backend="torch").model_dump())
        two = Service(
            ServeArgs(
                checkpoint=str(first),
                backend="torch",
                canary={"checkpoint": str(second), "version": "canary/2"},
                canary_share=0.5,
            ).model_dump()
        )
        pinned = [(b"x-model-version", b"canary/2")]
        other = [(b"content-type", b"multipart/form-data"), (b"content-length", b"1000")]
        floor = _choice_ns(None, other, opts.calls)
        result = {
            "request_object_ns": round(floor, 1),
            "choose_ns_one_version": round(_choice_ns(one, other, opts.calls), 1),
            "choose_ns_canary_50pct": round(_choice_ns(two, other, opts.calls), 1),
            "choose_ns_pinned": round(_choice_ns(two, pinned, opts.calls), 1),
            "predict_ms_one_version": round(_request_ms(one, opts.requests), 3),
            "predict_ms_canary_50pct": round(_request_ms(two, opts.requests), 3),
        }
    for key in ("choose_ns_one_version", "choose_ns_canary_50pct", "choose_ns_pinned"):
        result[key] = round(result[key] - result["request_object_ns"], 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
