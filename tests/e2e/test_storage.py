"""Object storage with Ray: Train, Tune and Serve against moto's S3 server on 127.0.0.1, reached
through pyarrow (what Ray uses) with credentials and endpoint from the standard AWS_* variables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from helpers.cluster import wandb_history
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
def test_train_on_ray_to_s3_killed_resumes_from_the_bucket_into_the_same_wandb_run(s3, tmp_path):
    """A 2-worker Ray Train run with --storage s3:// and W&B on (offline), its driver SIGKILLed
    once Ray's snapshot is in the bucket: the same command resumes from the bucket at the next
    epoch into the same W&B run; the published run holds every epoch exactly once with Ray's
    checkpoints beside it under <run>/ray/ and both W&B runs under <run>/wandb/; the same
    command again says the run is finished (nothing trained twice); evaluate / predict read the
    run straight from the bucket.

    The rerun's working directory is deleted once its last epoch is printed (what a Ray job's
    working_dir cleanup does): the final W&B step then fails inside wandb.init (os.getcwd()),
    which must cost one warning line and nothing of the run (the final W&B record itself is
    checked in test_cluster.py)."""
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
        "--max-failures",
        "0",
        "--storage",
        uri,
        "--name",
        "s3run",
    ]
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_API_KEY")},
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_PROJECT": "modresnet-tests",
    }
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
    first_out = first.stdout.read()
    assert "test.json" not in _objects("runs/s3run"), "finished before the kill"

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    second = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
    )
    out = []
    for line in second.stdout:
        out.append(line)
        if line.startswith(f"epoch   {epochs}/{epochs}"):
            shutil.rmtree(cwd)  # the driver is now past training, before its final W&B step
    text = "".join(out)
    assert second.wait(timeout=300) == 0, (first_out[-2000:], text[-4000:])
    assert "resuming the unfinished Ray run in s3://" in text
    assert "published the run directory to s3://modresnet-test/runs/s3run" in text
    assert "Traceback" not in text
    lines = [ln for ln in out if ln.startswith("epoch ")]
    resumed_from = int(lines[0].split()[1].split("/")[0])
    assert resumed_from > 1, text  # resumed at the next epoch, not from scratch
    warnings = [line for line in out if "W&B could not record the test result" in line]
    assert len(warnings) == 1 and "FileNotFoundError" in warnings[0], text
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
    assert "FileNotFoundError" in objs["ray.log"].decode()  # the traceback went there
    test = json.loads(objs["test.json"])

    # W&B offline, read back from the bucket: the killed and the resumed run, both with the
    # run name as their id, and the resumed one logged its epochs (the killed one's records
    # may end mid-write)
    wandb_dir = tmp_path / "wandb"
    for key, body in objs.items():
        if key.startswith("wandb/"):
            (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / key).write_bytes(body)
    runs = sorted(wandb_dir.glob("offline-run-*"))
    assert len(runs) >= 2 and all(r.name.endswith("-s3run") for r in runs), runs
    logged = {h["epoch"] for h in wandb_history(wandb_dir) if "val_acc" in h}
    assert logged >= set(range(resumed_from, epochs + 1)), logged

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
