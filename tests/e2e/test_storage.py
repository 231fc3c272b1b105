"""Object storage with Ray: Train, Tune and Serve against moto's S3 server on 127.0.0.1, reached
through pyarrow (what Ray uses) with credentials and endpoint from the standard AWS_* variables."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from helpers.ports import free_port
from helpers.processes import group_members, kill_driver_at_snapshot
from helpers.storage import BUCKET, CLI, REPO, _cli, _objects, moto_s3

from modresnet import storage


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, a bucket in it, and the environment
    (module-wide, so Ray workers started by subprocesses inherit it)."""
    yield from moto_s3(tmp_path_factory)


@pytest.mark.ray
def test_train_on_ray_to_s3_resumes_from_the_bucket_then_evaluates_and_predicts(s3, tmp_path):
    """A 2-worker Ray Train run with --storage s3://, its driver SIGKILLed once Ray's snapshot
    is in the bucket: the same command resumes from the bucket at the next epoch (the local
    staging holds nothing Ray needs); the published run holds every epoch exactly once with
    Ray's checkpoints beside it under <run>/ray/; the same command again says the run is
    finished (nothing trained twice); evaluate / predict read the run straight from the bucket."""
    epochs, uri = 6, f"s3://{BUCKET}/runs"  # short epochs: the kill must land before the last
    cmd = [
        *CLI,
        "train",
        "--preset",
        "debug",
        "--subset",
        "600",
        "--epochs",
        str(epochs),
        "--workers",
        "2",
        "--set",
        "data.val_subset=100",
        "--set",
        "data.test_subset=100",
        "--no-wandb",
        "--max-failures",
        "0",
        "--storage",
        uri,
        "--name",
        "s3run",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_MODE")}
    first = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
        start_new_session=True,
    )
    snapshot = storage.parse(f"{uri}/s3run/ray/checkpoint_manager_snapshot.json")
    kill_driver_at_snapshot(
        first, lambda: storage.exists(snapshot), poll_s=0.2, where=" in the bucket"
    )
    assert "test.json" not in _objects("runs/s3run"), "finished before the kill"

    second = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the unfinished Ray run in s3://" in second.stdout
    assert "published the run directory to s3://modresnet-test/runs/s3run" in second.stdout
    lines = [ln for ln in second.stdout.splitlines() if ln.startswith("epoch ")]
    assert int(lines[0].split()[1].split("/")[0]) > 1, second.stdout  # not from scratch
    objs = _objects("runs/s3run")
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "test.json",
        "best/model.safetensors",
        "last/model.safetensors",
        "curves.png",
        "ray/checkpoint_manager_snapshot.json",
    ):
        assert name in objs, sorted(objs)
    assert any(k.startswith("ray/checkpoint_") and k.endswith("model.safetensors") for k in objs)
    assert [json.loads(x)["epoch"] for x in objs["metrics.jsonl"].decode().splitlines()] == list(
        range(1, epochs + 1)
    )
    test = json.loads(objs["test.json"])

    again = _cli(*cmd[len(CLI) :])
    assert again.returncode == 2 and "already holds a run" in again.stderr

    ev = _cli("evaluate", f"{uri}/s3run", "--subset", "100")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["sha256"] == test["sha256"] and result["n"] == 100
    assert abs(result["test_acc"] - test["test_acc"]) < 1e-9  # same weights, same images

    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(img)
    pred = _cli("predict", str(img), "--checkpoint", f"{uri}/s3run", "--json")
    assert pred.returncode == 0, pred.stderr
    assert len(json.loads(pred.stdout)[0]["top_k"]) == 3


@pytest.mark.ray
def test_tune_to_s3_exports_a_best_run_that_evaluates_from_the_bucket(s3, tmp_path):
    """A 2-trial search with --storage s3://: Ray Tune's trial folders (results, checkpoints)
    are in the bucket, the leaderboard / summary / best-run are published beside them, and
    evaluate reads the exported best-run from the bucket."""
    space = tmp_path / "space.yaml"
    space.write_text(
        "optim.name: adam\noptim.lr: {choice: [1.0e-3, 3.0e-3]}\nschedule.name: constant\n"
    )
    uri = f"s3://{BUCKET}/tunes"
    proc = _cli(
        "tune",
        "--preset",
        "debug",
        "--subset",
        "256",
        "--set",
        "data.val_subset=100",
        "--set",
        "data.test_subset=100",
        "--max-epochs",
        "1",
        "--samples",
        "2",
        "--concurrent",
        "2",
        "--cpus-per-trial",
        "1",
        "--no-wandb",
        "--space",
        str(space),
        "--storage",
        uri,
        "--name",
        "s3tune",
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    objs = _objects("tunes/s3tune")
    for name in (
        "modresnet-tune.json",
        "leaderboard.csv",
        "summary.json",
        "best_config.yaml",
        "best-run/test.json",
        "best-run/best/model.safetensors",
    ):
        assert name in objs, sorted(objs)
    trial_ckpts = [
        k for k in objs if k.startswith("run_trial_") and k.endswith("model.safetensors")
    ]
    assert len(trial_ckpts) >= 2, sorted(objs)  # Tune's own checkpoints went to the bucket
    test = json.loads(objs["best-run/test.json"])
    ev = _cli("evaluate", f"{uri}/s3tune/best-run", "--subset", "100")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["sha256"] == test["sha256"]


@pytest.mark.ray
def test_serve_a_run_from_the_bucket(s3, tmp_path, debug_config):
    """`modresnet serve s3://...` downloads the run and serves exactly its weights."""
    import signal
    import urllib.request

    from modresnet import checkpoint
    from modresnet.model import build_model

    run = tmp_path / "run"
    checkpoint.save_model(
        run / "best",
        build_model(debug_config.model),
        debug_config,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        1,
        {"val_acc": 0.1},
    )
    sha = json.loads((run / "best" / "model.json").read_text())["sha256"]
    storage.publish(run, storage.parse(f"s3://{BUCKET}/served/run"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MODRESNET_API_KEY")}
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            f"s3://{BUCKET}/served/run",
            "--port",
            str(port),
            "--backend",
            "torch",
            "--max-replicas",
            "1",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline, model = time.time() + 240, None
        while time.time() < deadline and model is None:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=5) as r:
                    model = json.loads(r.read())
            except OSError:
                time.sleep(1)
        assert model is not None, "serve did not answer within 240 s"
        assert model["sha256"] == sha
        # SIGTERM to the CLI alone, as a process manager stops it, maybe before it printed
        # that it serves: it shuts Serve and its Ray down and leaves no process behind
        # (Ray's own handler used to abort it, and a reloaded HAProxy kept the port).
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=90)[0]
        assert proc.returncode == 0 and "shutting down" in out, out[-3000:]
        assert group_members(proc.pid) == [], out[-3000:]
    finally:
        if proc.poll() is None or group_members(proc.pid, wait_s=0):
            os.killpg(proc.pid, signal.SIGKILL)
