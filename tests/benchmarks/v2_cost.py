"""What one maximum-size v2 JSON request costs a replica (CPU ms, peak MiB), and whether eight
at once stall it: the app each replica builds (torch backend, 1 thread, random weights of the
debug model), served by uvicorn in a subprocess so its CPU time and peak RSS are its own.

    .venv/bin/python tests/benchmarks/v2_cost.py [--max-images 64] [--repeat 3]

Bodies: `legal`, the costliest request the limits let through (max_images FP32 images, every
value written with 30 characters, padded to exactly the v2 JSON byte limit); `late_400`, the
same with its last value a string (parsed in full, then refused); `values_413`, a body at the
limit of "0," (the most values for its size: refused by counting them); `size_413`, the same
at max_body_bytes (refused from its Content-Length); `over_cap`, one byte over the limit.
The last line is one JSON object; tests/unit/test_serve_cost.py asserts on it.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

INFER = "/v2/models/modresnet/infer"
READY = "/v2/health/ready"
CONCURRENT = 8
VALUE = b"0.1234567890123456789012345678, "  # 32 bytes: serve/protocols/v2.py V2_VALUE_BYTES


def serve(checkpoint: str, port: int, max_images: int) -> None:
    """The server process: one replica's app on 127.0.0.1:port."""
    import uvicorn

    from serve.args import ServeArgs
    from serve.http.asgi import make_api
    from serve.service import Service

    args = ServeArgs(checkpoint=checkpoint, backend="torch", threads=1, max_images=max_images)
    svc = Service(args.model_dump())
    uvicorn.run(make_api(svc), host="127.0.0.1", port=port, log_level="warning")


def bodies(max_images: int) -> dict[str, bytes]:
    from serve.args import ServeArgs
    from serve.protocols.v2 import v2_json_limits

    limit = v2_json_limits(max_images)[0]
    n = max_images * 32 * 32 * 3
    head = (
        b'{"inputs":[{"name":"input","shape":[%d,32,32,3],"datatype":"FP32","data":[' % max_images
    )
    values = VALUE * (n - 1)
    legal = head + values + b"0.5]}]}"
    legal += b" " * (limit - len(legal))  # pad to the limit: what it may cost at most
    late = head + values + b'"x"]}]}'

    def zeros(size: int) -> bytes:
        return head + b"0," * ((size - len(head)) // 2 - 4) + b"0]}]}"

    return {
        "legal": legal,
        "late_400": late,
        "values_413": zeros(limit),
        "size_413": zeros(ServeArgs.model_fields["max_body_bytes"].default),
        "over_cap": legal + b" ",
    }


class Server:
    """/proc readings of the server process (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_s(self) -> float:
        """CPU time of all its threads so far, to the nanosecond (schedstat, not clock ticks);
        a thread that ended since is not counted, so the server's threads are pools."""
        tasks = Path(f"/proc/{self.pid}/task").iterdir()
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def rss_mib(self) -> float:
        return self._status_kib("VmRSS") / 1024

    def reset_peak(self) -> float:
        """Peak RSS := current RSS (clear_refs 5); returns it in MiB."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self.rss_mib()

    def peak_mib(self) -> float:
        return self._status_kib("VmHWM") / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_by_one(client, server: Server, body: bytes, repeat: int) -> dict:
    """Server CPU ms and peak RSS growth (MiB) of `body`, sent `repeat` times in a row."""
    cpu, peak, codes = [], [], set()
    for _ in range(repeat):
        base = server.reset_peak()
        start = server.cpu_s()
        r = client.post(INFER, content=body, headers={"content-type": "application/json"})
        cpu.append((server.cpu_s() - start) * 1000)
        peak.append(server.peak_mib() - base)
        codes.add(r.status_code)
    return {
        "bytes": len(body),
        "status": sorted(codes),
        "cpu_ms": round(max(cpu), 1),
        "peak_mib": round(max(peak), 1),
    }


def concurrently(url: str, server: Server, body: bytes) -> dict:
    """CONCURRENT copies of `body` at once while a probe asks for readiness every 50 ms."""
    import httpx

    codes: list[int] = []
    probes: list[float] = []
    done = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            codes.append(
                c.post(
                    INFER, content=body, headers={"content-type": "application/json"}
                ).status_code
            )

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while not done.is_set():
                start = time.perf_counter()
                assert c.get(READY).status_code == 200
                probes.append(time.perf_counter() - start)
                time.sleep(0.05)

    base = server.reset_peak()
    cpu = server.cpu_s()
    prober = threading.Thread(target=probe)
    prober.start()
    senders = [threading.Thread(target=send) for _ in range(CONCURRENT)]
    start = time.perf_counter()
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    took = time.perf_counter() - start
    done.set()
    prober.join()
    return {
        "status": sorted(set(codes)),
        "requests": len(codes),
        "wall_s": round(took, 2),
        "cpu_ms": round((server.cpu_s() - cpu) * 1000, 1),
        "peak_mib": round(server.peak_mib() - base, 1),
        "probes": len(probes),
        "probe_max_s": round(max(probes), 3),
    }


def main() -> None:
    import httpx
    import torch

    from modresnet import config as configs
    from modresnet.checkpoint import save_model
    from modresnet.model import build_model
    from serve.protocols.v2 import v2_json_limits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-images", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()

    cfg = configs.resolve("debug")
    folder = Path(tempfile.mkdtemp(prefix="v2-cost-")) / "ckpt"
    classes = tuple(f"c{i}" for i in range(cfg.model.num_classes))
    save_model(folder, build_model(cfg.model).eval(), cfg, classes, 0, {})
    sample = bodies(opts.max_images)

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(folder), str(port), str(opts.max_images)],
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                try:
                    if client.get(READY).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            server = Server(proc.pid)
            idle = server.rss_mib()
            one_by_one(client, server, sample["legal"], 1)  # warm up: first batch, allocator
            single = {
                name: one_by_one(client, server, body, opts.repeat) for name, body in sample.items()
            }
        result = {
            "max_images": opts.max_images,
            "json_limit_bytes": v2_json_limits(opts.max_images)[0],
            "idle_rss_mib": round(idle, 1),
            "single": single,
            "concurrent_legal": concurrently(url, server, sample["legal"]),
            "concurrent_values_413": concurrently(url, server, sample["values_413"]),
            "concurrent_size_413": concurrently(url, server, sample["size_413"]),
            "torch": torch.__version__,
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for name, row in result["single"].items():
        print(
            f"{name:12} {row['bytes']:>10,} B  HTTP {row['status']}  "
            f"{row['cpu_ms']:7.1f} CPU ms  {row['peak_mib']:+6.1f} MiB peak"
        )
    for name in ("concurrent_legal", "concurrent_values_413", "concurrent_size_413"):
        row = result[name]
        print(
            f"{name}: {CONCURRENT} x HTTP {row['status']} in {row['wall_s']} s, "
            f"{row['peak_mib']:+} MiB peak, probe max {row['probe_max_s'] * 1000:.0f} ms "
            f"over {row['probes']} probes"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
