"""What serving a canary costs a request end to end: one real Ray + Serve with two apps side by
side, `one` (a single version) and `canary` (the same settings, a second version answering 50 %
of the requests, each with its own backend and batcher), one replica each, loaded in turn over
HTTP (multipart PNG to /predict, serve_load.py's closed-loop generator) at each concurrency,
for --rounds rounds (one, canary, canary, one, ...: a busy moment of a shared CPU hits both
alike). Random weights of the debug model, ONNX backend. Not part of the pytest run.

    .venv/bin/python tests/benchmarks/canary_load.py [--requests 300] [--rounds 3]

Prints, per app and concurrency, the median over the rounds of requests/s, p50 and p99; the
last line is one JSON object. The split itself is timed alone in version_split.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)

APPS = ("one", "canary")


def main() -> None:
    import ray
    from ray import serve
    from serve_load import load
    from version_split import _checkpoints

    from modresnet.images import encode_png
    from serve.args import HttpOptions, ServeArgs
    from serve.client import wait_ready
    from serve.environment import INGRESS, serve_env
    from serve.launch import deploy, start
    from serve.ports import free_port

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    opts = parser.parse_args()

    import torch

    png = encode_png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    os.environ.update(serve_env(INGRESS[0]))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MODRESNET_CACHE"] = str(Path(tmp) / "cache")
        first, second = _checkpoints(Path(tmp))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            start(HttpOptions(port=port))
            base = ServeArgs(
                checkpoint=str(first),
                version="bench/1",
                backend="onnx",
                min_replicas=1,
                max_replicas=1,
                replica_cpus=0.5,
            )
            canary = ServeArgs.model_validate(
                {
                    **base.model_dump(),
                    "canary": {"checkpoint": str(second), "version": "bench/2"},
                    "canary_share": 0.5,
                }
            )
            for app, args in zip(APPS, (base, canary), strict=True):
                deploy(args, name=app, route_prefix=f"/{app}")
                wait_ready(f"{url}/{app}", timeout=300)
            for app in APPS:  # warm both before measuring
                load(f"{url}/{app}", [png], 4, 100)
            runs: dict[str, dict[int, list[dict]]] = {
                app: {c: [] for c in opts.concurrency} for app in APPS
            }
            for i in range(opts.rounds):
                for app in APPS if i % 2 == 0 else APPS[::-1]:
                    for c in opts.concurrency:
                        runs[app][c].append(load(f"{url}/{app}", [png], c, opts.requests))
        finally:
            serve.shutdown()
            ray.shutdown()
    result: dict[str, dict[str, dict[str, float]]] = {}
    for app in APPS:
        result[app] = {}
        for c, rs in runs[app].items():
            row = {
                k: statistics.median(r[k] for r in rs)
                for k in ("throughput_rps", "p50_ms", "p99_ms")
            }
            row["errors"] = sum(r["errors"] for r in rs)
            result[app][str(c)] = row
            print(
                f"{app:>6} concurrency {c:>2}: {row['throughput_rps']:.0f} req/s, p50 "
                f"{row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, {row['errors']} errors"
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
