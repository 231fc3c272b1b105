"""What tests/e2e/serve builds its one package-scoped Ray + Serve instance from (the fixtures
themselves are in e2e/serve/conftest.py): the two training runs, the two Serve apps, and the
helpers its tests share (a closed-loop HTTP load, odd images, a Chromium)."""

from __future__ import annotations

import io
import os
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from modresnet import config as configs
from modresnet.checkpoint import load_model, save_model
from modresnet.local import train_local

httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from serve.args import HttpOptions, ServeArgs  # noqa: E402
from serve.client import wait_ready  # noqa: E402
from serve.environment import INGRESS, serve_env  # noqa: E402
from serve.launch import deploy, start, write_targets  # noqa: E402
from serve.ports import free_port  # noqa: E402

KEY_ENV, KEY = "MODRESNET_TEST_API_KEY", "test-key-4f1c"
N_IMAGES = 12
KILL_FAILURE_BOUND = 12  # at most the killed replica's in-flight + queued requests
BODY_TIMEOUT_S = 3


def _replicas(app: str = "modresnet") -> int:
    status = serve.status().applications[app].deployments["Classifier"]
    return status.replica_states.get("RUNNING", 0)


class Load:
    """Closed-loop HTTP load from `concurrency` threads until stopped; counts outcomes."""

    def __init__(self, url: str, files, concurrency: int, headers=None) -> None:
        self.url, self.files, self.headers = url, files, headers or {}
        self.codes: Counter = Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(concurrency)
        ]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(self.url, files=self.files, headers=self.headers)
                    with self._lock:
                        self.codes[r.status_code] += 1
                        if r.status_code != 200:
                            self.errors.append(f"{r.status_code} {r.text[:120]}")
                except httpx.HTTPError as err:
                    with self._lock:
                        self.codes["exc"] += 1
                        self.errors.append(repr(err))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    @property
    def failures(self) -> int:
        return sum(v for k, v in self.codes.items() if k != 200)


def train_two_runs(tmp_path_factory, data_dir) -> list[Path]:
    """A real (tiny) training run, and a second checkpoint with other weights to roll over to."""
    root = tmp_path_factory.mktemp("serve-runs")
    cfg = configs.resolve(
        "debug",
        overrides={
            "data.data_dir": str(data_dir),
            "data.subset": 200,
            "data.val_subset": 50,
            "data.test_subset": 50,
        },
    )
    train_local(cfg, root / "run0")
    loaded = load_model(root / "run0")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(
        root / "run1",
        loaded.model,
        loaded.config,
        loaded.classes,
        loaded.meta["epoch"] + 1,
        dict(loaded.meta["metrics"]),
    )
    return [root / "run0", root / "run1"]


def serve_two_apps(runs):
    """Start Ray (unless running) and Serve on a free port with the `modresnet` and `secure`
    apps, and write their Prometheus target file as `modresnet serve` does; yield their URL,
    auth header, port, main args and that file; shut it all down after."""
    os.environ[KEY_ENV] = KEY  # before ray.init: replicas inherit the raylet's environment
    own_cache = "MODRESNET_CACHE" not in os.environ  # the derived graphs: not in ~/.cache
    if own_cache:
        os.environ["MODRESNET_CACHE"] = str(runs[0].parent / "cache")
    owns = not ray.is_initialized()
    ingress = serve_env(INGRESS[0])  # what `modresnet serve` runs by default
    if owns:
        os.environ.update(ingress)
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 1024**2,
            log_to_driver=False,
        )
    port = free_port()
    try:
        start(HttpOptions(port=port))
        url = f"http://127.0.0.1:{port}"
        main = ServeArgs(
            checkpoint=str(runs[0]),
            backend="onnx",
            replica_cpus=0.25,
            min_replicas=1,
            max_replicas=3,
            target_ongoing_requests=2,
            upscale_delay_s=1,
            downscale_delay_s=3,
            look_back_period_s=2,
            max_batch_size=16,
            batch_wait_timeout_s=0.02,
            max_ongoing_requests=8,
            max_queued_requests=-1,
            max_body_bytes=1024 * 1024,
            max_images=32,
            body_timeout_s=BODY_TIMEOUT_S,
            health_check_period_s=1,
            graceful_shutdown_timeout_s=10,
        )
        secure = ServeArgs(
            checkpoint=str(runs[0]),
            backend="torch",
            replica_cpus=0.25,
            min_replicas=1,
            max_replicas=1,
            max_ongoing_requests=1,
            max_queued_requests=1,
            api_key_env=KEY_ENV,
            api_key_required=True,
        )
        deploy(main)
        deploy(secure, name="secure", route_prefix="/secure")
        auth = {"Authorization": f"Bearer {KEY}"}
        wait_ready(url, timeout=240)
        wait_ready(url + "/secure", timeout=240, headers=auth)
        targets = runs[0].parent / "prometheus" / "targets" / "modresnet-serve.json"
        write_targets(targets, haproxy=owns)
        yield {"url": url, "auth": auth, "port": port, "main": main, "targets": targets}
    finally:
        serve.shutdown()
        if owns:
            ray.shutdown()
        for name in (KEY_ENV, *ingress, *(["MODRESNET_CACHE"] if own_cache else [])):
            os.environ.pop(name, None)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def _bomb() -> bytes:
    """A valid PNG header declaring 30000 x 30000 pixels (900 MP): must be refused unread."""
    import struct
    import zlib

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def _chromium() -> str | None:
    """A Chromium for Playwright: $MODRESNET_CHROMIUM, else Debian's or another on PATH."""
    import shutil

    for candidate in (
        os.environ.get("MODRESNET_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None
