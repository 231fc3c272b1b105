"""Canary promotion on a real local Ray + Serve, with an embedded MLflow registry and real HTTP
traffic flowing the whole time (two client threads posting CIFAR-10 test images).

One Ray for the module, started with RAY_metrics_report_interval_ms=1000 (a Ray setting: the
replicas' series reach their node's metrics export every second instead of every 10) so each
window can be 4 s. Two real tiny training runs are registered; the worse by test accuracy is
champion and served with `modresnet serve models:/NAME@champion`. In order:

(b) the better one promoted with --fail-rate 0.5 (half its batches fail): the canary's 5xx
    rate rolls it back on its own, exit 1, the champion unchanged, every failed request one the
    candidate answered, none after the rollback; then `modresnet models promote` in a process
    of its own, joined to the cluster by its GCS address and sent SIGINT mid-canary: it rolls
    back (exit 1), no request fails, the champion serves alone;
(a) the same version promoted for real: no request fails through the deploy, the shares and
    the final rollover, each window's share of X-Model-Version answers is within SHARE_TOL of
    the share asked, and champion moves;
(c) `modresnet models rollback NAME` by hand moves champion back;
(d) Serve shut down and `modresnet serve models:/NAME@champion` run again serves that champion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from modresnet import config as configs
from modresnet.images import encode_png
from modresnet.local import train_local

httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
from ray import serve  # noqa: E402

from modresnet.cli import app as cli  # noqa: E402
from modresnet.registry import CANDIDATE, ModelRef, open_registry  # noqa: E402
from serve.canary.command import promote as promote_command  # noqa: E402
from serve.canary.promote import promote  # noqa: E402
from serve.canary.settings import CanarySettings  # noqa: E402
from serve.environment import INGRESS, serve_env  # noqa: E402
from serve.ports import free_port  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

NAME = "canary-test"
WINDOW_S = 4
SHARE_TOL = 0.15  # ~3.5 sigma of a binomial share from 100 requests at p = 0.5
SETTLE_S = 1.0  # replicas read a new share within 0.5 s
SERVE_FLAGS = ["--replica-cpus", "0.25", "--max-replicas", "1", "--backend", "onnx"]


@dataclass
class Answer:
    start: float
    status: int | str
    version: str


class Traffic:
    """Closed-loop /predict requests from `threads` threads, each answer recorded."""

    def __init__(self, url: str, png: bytes, threads: int = 2) -> None:
        self.url, self.png = url, png
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        files = [("files", ("img.png", self.png, "image/png"))]
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                start = time.time()
                try:
                    r = client.post(self.url + "/predict", files=files)
                    answer = Answer(start, r.status_code, r.headers.get("x-model-version", ""))
                except httpx.HTTPError as err:
                    answer = Answer(start, repr(err), "")
                with self._lock:
                    self.answers.append(answer)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]


def _train(root: Path, data_dir: Path, seed: int) -> Path:
    cfg = configs.resolve(
        "debug",
        overrides={
            "data.data_dir": str(data_dir),
            "data.subset": 200,
            "data.val_subset": 50,
            "data.test_subset": 100,
            "train.seed": seed,
        },
    )
    run = root / f"run{seed}"
    train_local(cfg, run, info=lambda line: None)
    return run


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, data_dir, small_cifar) -> Iterator[dict]:
    """Ray with a 1 s metrics export, an embedded registry holding two real runs (the worse
    one champion), and `modresnet serve models:/NAME@champion` on a free port."""
    root = tmp_path_factory.mktemp("canary")
    env = {
        "RAY_metrics_report_interval_ms": "1000",
        "MODRESNET_CACHE": str(root / "cache"),
        **serve_env(INGRESS[0]),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    runs = [_train(root, data_dir, seed) for seed in (0, 1)]
    reg = open_registry(storage=root / "storage")
    versions = sorted((reg.register(run, NAME) for run in runs), key=lambda v: v.test_acc)
    worse, better = versions
    reg.set_alias(NAME, worse.version, "champion", reason="first champion")
    os.environ["MLFLOW_TRACKING_URI"] = reg.uri  # what `modresnet serve models:/` reads
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    port = free_port()
    try:
        serve_cmd = [
            "serve",
            f"models:/{NAME}@champion",
            "--port",
            str(port),
            *SERVE_FLAGS,
            "--prometheus-targets",
            str(root / "targets.json"),
        ]
        started = CliRunner().invoke(cli, serve_cmd)
        assert started.exit_code == 0, started.output
        yield {
            "url": f"http://127.0.0.1:{port}",
            "registry": reg,
            "worse": worse,
            "better": better,
            "serve": serve_cmd,
            "png": encode_png(small_cifar.test.x[0]),
        }
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _served(url: str) -> str:
    return httpx.get(url + "/model", timeout=30).headers["x-model-version"]


def _canary_flags(*extra: str) -> list[str]:
    """Short windows; the latency margin is wide because on a shared 2-core machine the p99 of
    the same model swings twofold between 4 s windows (the latency rule: the unit tests)."""
    return [
        *("--canary", "20", "--step", "30", "--interval", str(WINDOW_S), "--watch", "12"),
        *("--min-requests", "10", "--latency-margin", "3"),
        *extra,
    ]


def test_b_a_failing_canary_rolls_back_on_its_own(cluster):
    reg, worse, better, url = (cluster[k] for k in ("registry", "worse", "better", "url"))
    assert _served(url) == worse.label
    one = typer.Typer()
    one.command()(promote_command)
    args = [NAME, better.version, *_canary_flags("--fail-rate", "0.5", "--registry", reg.uri)]
    with Traffic(url, cluster["png"]) as traffic:
        result = CliRunner().invoke(one, args)
        rolled_back_at = time.time()
        time.sleep(2)
    print(result.output)
    assert result.exit_code == 1, result.output  # rolled back: the system worked, scripts see it
    assert "rolled back: candidate 5xx rate" in result.output, result.output
    assert reg.get(ModelRef(NAME, alias="champion")).label == worse.label
    after = reg.get(ModelRef(NAME, version=better.version))
    assert CANDIDATE not in after.aliases
    assert after.notes["canary"].startswith("rolled back"), after.notes
    failed = traffic.failed()
    assert failed, "the chaos canary failed no request"
    assert {a.status for a in failed} == {500}, failed[:5]
    assert {a.version for a in failed} == {better.label}, failed[:5]  # only the candidate's
    late = [a for a in traffic.answers if a.start > rolled_back_at]
    assert late and {a.version for a in late} == {worse.label}
    assert _served(url) == worse.label


PROMOTE = (
    "import typer; from serve.canary.command import promote; "
    "app = typer.Typer(); app.command()(promote); app()"
)


def test_b_ctrl_c_during_a_canary_rolls_back(cluster):
    reg, worse, better, url = (cluster[k] for k in ("registry", "worse", "better", "url"))
    gcs = ray.get_runtime_context().gcs_address
    args = [NAME, better.version, *_canary_flags("--watch", "600", "--address", gcs)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": reg.uri}
    with Traffic(url, cluster["png"]) as traffic:
        proc = subprocess.Popen(
            [sys.executable, "-c", PROMOTE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if " s  canary " in line:  # the first window: the canary takes its share
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
        rolled_back_at = time.time()
        time.sleep(2)
    output = "".join(lines) + out
    print(output)
    assert proc.returncode == 1, output
    assert "rolled back: interrupted (Ctrl-C)" in output, output
    assert traffic.answers and traffic.failed() == [], traffic.failed()[:5]
    assert any(a.version == better.label for a in traffic.answers)  # the canary did serve
    late = [a for a in traffic.answers if a.start > rolled_back_at]
    assert late and {a.version for a in late} == {worse.label}
    assert reg.get(ModelRef(NAME, alias="champion")).label == worse.label
    assert reg.get(ModelRef(NAME, version=better.version)).notes["canary"].startswith("rolled back")


def test_a_canary_promotion_with_no_failed_request(cluster):
    reg, worse, better, url = (cluster[k] for k in ("registry", "worse", "better", "url"))
    lines: list[str] = []
    started = time.monotonic()
    with Traffic(url, cluster["png"]) as traffic:
        result = promote(
            reg,
            NAME,
            better.version,
            settings=CanarySettings(
                canary=20, step=30, interval=WINDOW_S, watch=12, min_requests=10, latency_margin=3
            ),
            info=lines.append,
        )
        done_at = time.time()
        time.sleep(2)
    print("\n".join(lines))
    print(f"promotion took {time.monotonic() - started:.0f} s, {len(traffic.answers)} requests")
    assert result.outcome == "promoted", "\n".join(lines)
    assert traffic.answers and traffic.failed() == [], traffic.failed()[:5]
    assert reg.get(ModelRef(NAME, alias="champion")).label == better.label
    assert CANDIDATE not in reg.get(ModelRef(NAME, version=better.version)).aliases
    checked = set()
    for w in result.steps:
        seen = [a for a in traffic.answers if w["start"] + SETTLE_S <= a.start <= w["end"]]
        if len(seen) < 30:
            continue
        share = sum(a.version == better.label for a in seen) / len(seen)
        assert abs(share - w["share"]) <= SHARE_TOL, (w, share, len(seen))
        assert {a.version for a in seen} <= {worse.label, better.label}
        checked.add(w["share"])
    assert checked == {0.2, 0.5, 0.8}, (checked, result.steps)
    late = [a for a in traffic.answers if a.start > done_at]
    assert late and {a.version for a in late} == {better.label}


def test_c_rollback_by_hand_then_d_serve_the_champion_after_a_restart(cluster):
    reg, worse, better, url = (cluster[k] for k in ("registry", "worse", "better", "url"))
    assert reg.get(ModelRef(NAME, alias="champion")).label == better.label
    done = CliRunner().invoke(cli, ["models", "rollback", NAME, "--registry", reg.uri])
    assert done.exit_code == 0, done.output
    assert reg.get(ModelRef(NAME, alias="champion")).label == worse.label
    history = [e for e in reg.history(NAME) if e["alias"] == "champion"]
    assert [e["version"] for e in history] == [worse.version, better.version, worse.version]

    serve.shutdown()
    started = CliRunner().invoke(cli, cluster["serve"])
    assert started.exit_code == 0, started.output
    assert _served(url) == worse.label
    model = httpx.get(url + "/model", timeout=30).json()
    assert model["sha256"] == worse.sha256
