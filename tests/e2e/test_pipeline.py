"""`modresnet pipeline` end to end on real Ray, real CIFAR-10 subsets (debug flavor, 1-2
epochs), a real MLflow registry and real HTTP:

* as a job on a real local cluster (`modresnet cluster up`): the first pipeline's version
  becomes champion (nothing to canary against) and `modresnet serve models:/NAME@champion`
  answers with it; every stage change reached `--notify`; a second pipeline whose candidate
  is worse (lr 1e-5, one epoch: chance) stops at the gate, exit 3, the champion still serving;
* locally with --storage s3:// on a moto server: the driver killed during the retrain, then
  the same command again, continues at the retrain (Ray Train's resume from the bucket)
  without repeating the search; the state, search, run and registry artifacts are in the
  bucket, and `pipeline status` reads them from there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.cluster import CLIENT_VARS, cli
from helpers.ports import free_port
from helpers.recorder import Inbox
from helpers.storage import BUCKET, _objects, moto_s3

from jobs.pipeline.state import STAGES

httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
GOOD_SPACE = "optim.name: adam\noptim.lr: {choice: [1.0e-3, 3.0e-3]}\nschedule.name: constant\n"
CHANCE_SPACE = "optim.name: sgd\noptim.lr: 1.0e-5\nschedule.name: constant\n"
SMALL = [
    *("--preset", "debug", "--subset", "600"),
    *("--set", "data.val_subset=300", "--set", "data.test_subset=200"),
    *("--set", "train.batch_size=32", "--max-epochs", "1", "--concurrent", "2"),
    *("--cpus-per-trial", "1", "--cpus-per-worker", "1"),
]
SERVE_FLAGS = ["--replica-cpus", "0.25", "--max-replicas", "1"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*CLIENT_VARS, "WANDB_API_KEY")}
    env.update(WANDB_MODE="offline", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1", COLUMNS="200")
    return {**env, **extra}


def _state(path: Path) -> dict:
    return json.loads((path / "pipeline.json").read_text())


def _stages(state: dict) -> dict[str, dict]:
    return {s["name"]: s for s in state["stages"]}


def _grouped(folder: Path, group: str) -> int:
    """How many offline W&B runs under `folder` name the W&B group `group`."""
    found = [f for f in folder.rglob("*.wandb")]
    return sum(group.encode() in f.read_bytes() for f in found)


# ------------------------------------------------------------------------------------------
# as a job on a real cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, data_dir):
    home = tmp_path_factory.mktemp("modresnet-home")
    root = tmp_path_factory.mktemp("pipelines")
    (root / "good.yaml").write_text(GOOD_SPACE)
    (root / "chance.yaml").write_text(CHANCE_SPACE)
    env = _env(MODRESNET_HOME=str(home), MODRESNET_CACHE=str(root / "cache"))
    up = cli("cluster", "up", "--workers", "2", "--cpus-per-node", "1", env=env, timeout=360)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        exports = dict(re.findall(r"^export (\w+)=(.*)$", up.stdout, re.M))
        yield SimpleNamespace(env={**env, **exports}, root=root, data_dir=data_dir)
    finally:
        cli("cluster", "down", env=env, timeout=120)


def _job(c, *args: str) -> tuple[str, str]:
    """Submit `modresnet pipeline ARGS` as a Ray job, follow it; (final status, its log)."""
    sub = cli("jobs", "submit", "pipeline", *args, env=c.env)
    assert sub.returncode == 0, sub.stderr[-3000:]
    job_id = sub.stdout.strip().splitlines()[-1]
    follow = cli("jobs", "logs", job_id, "--follow", env=c.env, timeout=900)
    status = cli("jobs", "status", job_id, env=c.env)
    return status.stdout, follow.stdout + follow.stderr


@pytest.mark.ray
def test_a_pipeline_job_makes_its_version_champion_and_a_worse_one_stops_at_the_gate(cluster):
    c, storage = cluster, cluster.root / "runs"
    inbox = Inbox()
    try:
        t0 = time.monotonic()
        status, log = _job(
            c,
            *("run", "first", *SMALL, "--samples", "2", "--epochs", "2", "--workers", "2"),
            *("--space", str(c.root / "good.yaml"), "--data-dir", str(c.data_dir)),
            *("--model", "cifar", "--storage", str(storage), "--notify", inbox.url),
        )
        print(f"first pipeline job: {time.monotonic() - t0:.0f}s")
    finally:
        inbox.close()
    assert "SUCCEEDED" in status, log[-5000:]
    state = _state(storage / "first")
    stages = _stages(state)
    for name in STAGES:
        s = stages[name]
        print(f"  {name:<9} {s['ended'] - s['started']:6.1f}s")
    assert state["status"] == "finished", state
    assert stages["promote"]["output"]["how"] == "direct"  # no champion to canary against
    assert stages["promote"]["output"]["champion"] == "cifar/1"
    assert stages["gate"]["output"]["champion"] is None
    seen = [(b["stage"], b["status"]) for b in inbox.bodies]
    assert seen == [(n, s) for n in STAGES for s in ("running", "done")] + [
        ("pipeline", "finished")
    ]
    # every W&B run of the pipeline (2 trials, the retrain) is in its group
    assert _grouped(storage / "first", "pipeline-first") >= 3

    registry = f"sqlite:///{storage / 'registry' / 'mlflow.db'}"
    port = free_port()
    served = cli(
        "serve",
        "models:/cifar@champion",
        *("--port", str(port), *SERVE_FLAGS),
        env={**c.env, "MLFLOW_TRACKING_URI": registry},
        timeout=300,
    )
    assert served.returncode == 0, served.stderr[-3000:]
    url = f"http://127.0.0.1:{port}"
    assert _version(url) == "cifar/1"

    status, log = _job(
        c,
        *("run", "worse", *SMALL, "--samples", "1", "--epochs", "1", "--workers", "1"),
        *("--space", str(c.root / "chance.yaml"), "--data-dir", str(c.data_dir)),
        *("--model", "cifar", "--storage", str(storage)),
    )
    assert "FAILED" in status, log[-5000:]  # exit 3: stopped on purpose
    state = _state(storage / "worse")
    assert state["status"] == "stopped" and state["reason"].startswith("gate: "), state
    assert _stages(state)["promote"]["status"] == "pending"
    assert "pipeline worse stopped" in log
    assert _version(url) == "cifar/1"  # the champion still serves


def _version(url: str) -> str:
    """The version the app's /model answers with."""
    answer = httpx.get(f"{url}/model", timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.headers["x-model-version"]


# ------------------------------------------------------------------------------------------
# locally, into object storage: killed during the retrain, then resumed


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    yield from moto_s3(tmp_path_factory)


def _bucket(prefix: str) -> dict[str, bytes]:
    return _objects(f"pipes/{prefix}")


@pytest.mark.ray
def test_a_pipeline_into_object_storage_killed_in_the_retrain_resumes_there(s3, tmp_path, data_dir):
    (tmp_path / "good.yaml").write_text(GOOD_SPACE)
    where = f"s3://{BUCKET}/pipes"
    cmd = [
        *(sys.executable, "-m", "modresnet.cli", "pipeline", "run", "resumed", *SMALL),
        *("--samples", "2", "--epochs", "3", "--workers", "1", "--promote", "direct"),
        *("--space", str(tmp_path / "good.yaml"), "--data-dir", str(data_dir)),
        *("--storage", where),
    ]
    env = _env(**s3)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if re.match(r"epoch\s+1/3", line):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
            break
    proc.wait(timeout=60)
    assert any("== retrain" in line for line in lines), "".join(lines)[-3000:]
    killed = _stages(json.loads(_bucket("resumed")["pipeline.json"]))
    assert killed["search"]["status"] == "done" and killed["retrain"]["status"] == "running"
    search = {k: v for k, v in _bucket("resumed").items() if k.startswith("search/")}
    assert "search/summary.json" in search, sorted(search)

    t0 = time.monotonic()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    print(f"resumed pipeline: {time.monotonic() - t0:.0f}s")
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "== search" not in again.stdout and "== retrain" in again.stdout
    assert f"resuming the unfinished Ray run in {where}/resumed/retrain" in again.stdout
    objects = _bucket("resumed")
    assert {k: v for k, v in objects.items() if k.startswith("search/")} == search  # untouched
    state = json.loads(objects["pipeline.json"])
    stages = _stages(state)
    assert state["status"] == "finished", state
    assert stages["search"]["attempt"] == 1 and stages["retrain"]["attempt"] == 2
    assert stages["promote"]["output"]["champion"] == "resumed/1"
    epochs = [json.loads(x)["epoch"] for x in objects["retrain/metrics.jsonl"].splitlines()]
    assert epochs == [1, 2, 3]
    assert "retrain/test.json" in objects
    assert any(k.startswith("registry/artifacts/") for k in _objects("pipes")), sorted(objects)
    assert "validation accuracy" in again.stdout and "test accuracy" in again.stdout
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "modresnet.cli",
            "pipeline",
            "status",
            "resumed",
            "--storage",
            where,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "pipeline resumed: finished" in shown.stdout, shown.stdout
    assert "new version:  resumed/1" in shown.stdout, shown.stdout
