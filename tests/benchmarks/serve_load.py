"""Serve load test: a bounded closed-loop load generator against a real `modresnet` Serve app
at concurrency 1, 8 and 32 (one image per request, multipart PNG), against the raw model's
batched images/s in this process (the ceiling). Not part of the pytest run.

    .venv/bin/python tests/benchmarks/serve_load.py --checkpoint RUN --requests 200
    .venv/bin/python tests/benchmarks/serve_load.py            # trains a tiny paper-model run first

    .venv/bin/python tests/benchmarks/serve_load.py --checkpoint RUN --metrics-overhead

For each concurrency level: throughput (requests/s = images/s), p50/p99 latency, error count.
The ceiling is the same backend (onnx by default), 1 thread, batch = --max-batch-size, in
this process with no HTTP, measured before and after the served levels (the higher counts:
on a CPU shared with other work one 3 s sample can land in a busy moment). The ratio is the
best served images/s over the ceiling. With --hey, `hey` repeats each level. Each level
also prints the CPU milliseconds per request of the replica, the proxy (Serve's or HAProxy),
Ray's background processes and the load generator, and the model's CPU per image: on a CPU
shared with other work those stay put while rates swing. The last line is one JSON object.

--metrics-overhead instead serves the checkpoint twice side by side, with its Prometheus series
(`metrics_on`) and without (`--no-metrics`: `metrics_off`), one replica each, and loads them in
turn at the top concurrency level for --rounds rounds (on, off, off, on, ...: a busy moment of
a shared CPU hits both alike); it reports each one's images/s (median over the rounds) and
replica CPU ms per request, and their ratio, on/off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)


def load(url: str, files: list[bytes], concurrency: int, total: int) -> dict:
    """`total` requests from `concurrency` closed-loop clients, each sending its next request
    as soon as the previous one answers (bounded: never more than `concurrency` in flight).
    One asyncio loop with aiohttp, so the generator itself takes little of the 2 cores that
    the server needs too."""
    import asyncio

    import aiohttp

    async def main() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        counter = iter(range(total))
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=120)
        ) as session:

            async def client() -> None:
                nonlocal errors
                for i in counter:
                    form = aiohttp.FormData()
                    form.add_field(
                        "files", files[i % len(files)], filename="x.png", content_type="image/png"
                    )
                    start = time.perf_counter()
                    try:
                        async with session.post(url + "/predict", data=form) as r:
                            await r.read()
                            ok = r.status == 200
                    except aiohttp.ClientError:
                        ok = False
                    if ok:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors += 1

            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return latencies, errors, time.perf_counter() - start

    latencies, errors, wall = asyncio.run(main())
    lat = sorted(latencies) or [float("nan")]
    return {
        "concurrency": concurrency,
        "requests": total,
        "errors": errors,
        "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(lat), 1),
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
    }


GROUPS = {  # process name (ps) -> what it is
    "metrics_on:Classifier": "replica (metrics on)",
    "metrics_off:Classifier": "replica (metrics off)",
    "Classifier": "replica",
    "ProxyActor": "serve proxy",
    "haproxy": "haproxy",
    "HAProxyManager": "ray+serve background",
    "ServeController": "ray+serve background",
    "raylet": "ray+serve background",
    "gcs_server": "ray+serve background",
}


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process and every process it started (its Ray), by GROUPS.
    Per request, these are what a shared CPU cannot distort much, unlike rates."""
    children: dict[str, list[tuple[str, str, float]]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{pid}/cmdline").read_text()
        except OSError:
            continue
        ticks = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        children.setdefault(stat[1], []).append((pid, cmd, ticks))
    out = {"load generator": time.process_time()}
    todo = [str(os.getpid())]
    while todo:
        for pid, cmd, ticks in children.get(todo.pop(), []):
            group = next((g for k, g in GROUPS.items() if k in cmd), "ray+serve background")
            out[group] = out.get(group, 0.0) + ticks
            todo.append(pid)
    return out


def hey(url: str, png: bytes, concurrency: int, total: int) -> dict:
    """The same request (one multipart PNG to /predict) from `hey`, a load generator this
    project did not write (Debian package `hey`), closed loop like `load`."""
    import re
    import subprocess

    boundary = "modresnetbench"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        out = subprocess.run(
            ["hey", "-n", str(total), "-c", str(concurrency), "-m", "POST", "-D", f.name]
            + ["-T", f"multipart/form-data; boundary={boundary}", url + "/predict"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    p99 = re.search(r"99% in ([\d.]+) secs", out)
    ok = re.search(r"\[200\]\s+(\d+) responses", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    sent = total // concurrency * concurrency  # hey sends n/c requests from each of c workers
    return {
        "concurrency": concurrency,
        "requests": sent,
        "errors": sent - (int(ok.group(1)) if ok else 0),
        "throughput_rps": float(rps.group(1)) if rps else 0.0,
        "p99_ms": round(1000 * float(p99.group(1)), 1) if p99 else float("nan"),
    }


def ceiling(checkpoint: str, backend: str, batch: int, seconds: float = 3.0) -> float:
    import torch
    from serve_backends import rate  # the same timing loop as the backend benchmark

    from modresnet.checkpoint import load_model
    from serve.backends import load_backend

    torch.set_num_threads(1)
    model = load_backend(backend, load_model(checkpoint), threads=1)
    cpu = time.process_time()
    img_s = rate(model, batch, seconds)
    MODEL_CPU_MS.append(1000 * (time.process_time() - cpu) / (img_s * seconds + batch))
    return img_s


MODEL_CPU_MS: list[float] = []  # CPU ms per image of each ceiling sample (robust to sharing)


def metrics_overhead(
    url: str, files: list[bytes], concurrency: int, requests: int, rounds: int
) -> dict:
    """Images/s and replica CPU per request of the app with metrics (at `url`/metrics_on) and
    the one without (`url`/metrics_off), loaded in turn, `rounds` rounds of each."""
    apps = ("metrics_on", "metrics_off")
    rates: dict[str, list[float]] = {app: [] for app in apps}
    cpu: dict[str, dict[str, float]] = {app: {} for app in apps}
    for i in range(rounds):
        for app in apps if i % 2 == 0 else apps[::-1]:
            before = cpu_seconds()
            r = load(f"{url}/{app}", files, concurrency, requests)
            after = cpu_seconds()
            mine = f"replica ({app.replace('_', ' ')})"
            for group, seconds in after.items():
                spent = seconds - before.get(group, 0.0)
                if group.startswith("replica (") and group != mine:
                    group = "replica (the idle one)"
                cpu[app][group] = cpu[app].get(group, 0.0) + spent
            if r["errors"]:
                raise SystemExit(f"{app}: {r['errors']} errors in round {i + 1}")
            rates[app].append(r["throughput_rps"])
            print(f"round {i + 1} {app:>11}: {r['throughput_rps']:7.1f} img/s", flush=True)
    on, off = (statistics.median(rates[app]) for app in apps)
    per_request = {
        app: {g: round(1000 * v / (rounds * requests), 3) for g, v in sorted(cpu[app].items())}
        for app in apps
    }
    total = {app: sum(per_request[app].values()) for app in apps}
    return {
        "concurrency": concurrency,
        "rounds": rates,
        "metrics_on_img_s": on,
        "metrics_off_img_s": off,
        "metrics_ratio": round(on / off, 4),
        "cpu_ms_per_request": per_request,
        "cpu_ratio": round(total["metrics_on"] / total["metrics_off"], 4),
    }


def main() -> None:
    from serve.environment import INGRESS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", help="Run or checkpoint (default: train a tiny run of the paper model)."
    )
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch", "int8"])
    parser.add_argument("--requests", type=int, default=200, help="Requests per level.")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument(
        "--ingress", default=INGRESS[0], choices=INGRESS, help="serve/environment.py"
    )
    parser.add_argument(
        "--hey", action="store_true", help="Also measure each level with `hey` (if installed)."
    )
    parser.add_argument(
        "--metrics-overhead",
        action="store_true",
        help="Compare the app with and without its Prometheus series (the docstring).",
    )
    parser.add_argument("--rounds", type=int, default=4, help="--metrics-overhead rounds.")
    args = parser.parse_args()

    import ray
    from ray import serve

    from modresnet import config as configs
    from modresnet.data import load_cifar10
    from modresnet.images import encode_png
    from serve.args import HttpOptions, ServeArgs
    from serve.client import wait_ready
    from serve.environment import serve_env
    from serve.launch import deploy, start
    from serve.ports import free_port

    data_dir = os.environ.get("MODRESNET_DATA", str(REPO.parent / "shared" / "data"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        from modresnet.local import train_local

        checkpoint = str(Path(tempfile.mkdtemp(prefix="serve-load-")) / "run")
        train_local(
            configs.resolve(
                "debug",
                overrides={
                    "data.data_dir": data_dir,
                    "model.flavor": "paper",
                    "data.subset": 200,
                    "data.val_subset": 100,
                    "data.test_subset": 100,
                },
            ),
            Path(checkpoint),
        )
    test = load_cifar10(
        configs.DataConfig(data_dir=data_dir, subset=100, val_subset=50, test_subset=64)
    ).test
    files = [encode_png(img) for img in test.x]

    served = ServeArgs(
        checkpoint=checkpoint,
        backend=args.backend,
        min_replicas=args.replicas,
        max_replicas=args.replicas,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000,
        max_ongoing_requests=64,
        max_queued_requests=-1,
    )
    top_level = int(args.levels.split(",")[-1])
    if args.metrics_overhead:
        os.environ.update(serve_env(args.ingress))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            port = free_port()
            start(HttpOptions(port=port))
            url = f"http://127.0.0.1:{port}"
            for name, on in (("metrics_on", True), ("metrics_off", False)):
                app = served.model_copy(
                    update={"metrics": on, "min_replicas": 1, "max_replicas": 1}
                )
                deploy(app, name=name, route_prefix=f"/{name}")
                wait_ready(f"{url}/{name}", timeout=300)
                load(f"{url}/{name}", files, 4, 20)  # warm-up
            result = metrics_overhead(url, files, top_level, args.requests, args.rounds)
        finally:
            serve.shutdown()
            ray.shutdown()
        print(
            f"metrics on {result['metrics_on_img_s']:.1f} img/s, off "
            f"{result['metrics_off_img_s']:.1f} img/s: on/off {result['metrics_ratio']:.1%}; "
            f"CPU ms per request, all processes: on/off {result['cpu_ratio']:.1%}"
        )
        for app, groups in result["cpu_ms_per_request"].items():
            print(
                f"   {app} CPU ms per request: " + ", ".join(f"{g} {v}" for g, v in groups.items())
            )
        print(json.dumps({"backend": args.backend, "ingress": args.ingress, **result}))
        return

    ceil = ceiling(checkpoint, args.backend, args.max_batch_size)
    os.environ.update(serve_env(args.ingress))  # before ray.init: Serve reads it at import
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        start(HttpOptions(port=port))
        url = f"http://127.0.0.1:{port}"
        deploy(served)
        wait_ready(url, timeout=300)
        load(url, files, 4, 20)  # warm-up
        results = []
        for level in (int(v) for v in args.levels.split(",")):
            before = cpu_seconds()
            r = load(url, files, level, args.requests)
            after = cpu_seconds()
            r["cpu_ms_per_request"] = {
                g: round(1000 * (after[g] - before.get(g, 0.0)) / args.requests, 2) for g in after
            }
            results.append(r)
            print(
                f"concurrency {level:>3}: {r['throughput_rps']:7.1f} img/s  p50 "
                f"{r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}",
                flush=True,
            )
            print(
                "   CPU ms per request: "
                + ", ".join(f"{g} {v:.2f}" for g, v in r["cpu_ms_per_request"].items())
                + f"; total {sum(r['cpu_ms_per_request'].values()):.2f}",
                flush=True,
            )
        others = []
        if args.hey and shutil.which("hey"):
            for level in (int(v) for v in args.levels.split(",")):
                r = hey(url, files[0], level, args.requests)
                others.append(r)
                print(
                    f"hey concurrency {level:>3}: {r['throughput_rps']:7.1f} img/s  p99 "
                    f"{r['p99_ms']:7.1f} ms  errors {r['errors']}",
                    flush=True,
                )
        batches = __import__("httpx").get(url + "/model").json()["replica"]["batch_sizes"]
    finally:
        serve.shutdown()
        ray.shutdown()
    ceil = max(ceil, ceiling(checkpoint, args.backend, args.max_batch_size))
    best = max(r["throughput_rps"] for r in results)
    top = results[-1]
    print(
        f"in-process ceiling ({args.backend}, batch {args.max_batch_size}, 1 thread): "
        f"{ceil:.0f} img/s; at concurrency {top['concurrency']} served {top['throughput_rps']:.0f} "
        f"img/s = {top['throughput_rps'] / ceil:.1%} of it (best level {best / ceil:.1%})"
    )
    print(
        f"model alone: {min(MODEL_CPU_MS):.2f} ms of CPU per image (batch "
        f"{args.max_batch_size}, 1 thread; {1000 / min(MODEL_CPU_MS):.0f} img/s on an idle core)"
    )
    print(f"server-side batch sizes: {batches}")
    print(
        json.dumps(
            {
                "backend": args.backend,
                "ingress": args.ingress,
                "checkpoint": checkpoint,
                "levels": results,
                "hey": others,
                "ceiling_img_s": round(ceil, 1),
                "model_cpu_ms_per_image": round(min(MODEL_CPU_MS), 3),
                "best_served_img_s": best,
                "ratio": round(best / ceil, 4),
                "ratio_at_top_concurrency": round(top["throughput_rps"] / ceil, 4),
                "batch_sizes": batches,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
