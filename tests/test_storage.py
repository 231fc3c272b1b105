"""Object storage (`--storage s3://...`) against a real S3-compatible server: moto's server
mode on 127.0.0.1, reached through pyarrow (what Ray uses) with credentials and endpoint from
the standard AWS_* environment variables. No mocks: every byte goes over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from process_helpers import group_members, kill_driver_at_snapshot
from storage_helpers import BUCKET, CLI, REPO, _cli, _free_port, _objects, moto_s3

from modresnet import storage


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port, a bucket in it, and the environment
    (module-wide, so Ray workers started by subprocesses inherit it)."""
    yield from moto_s3(tmp_path_factory)


# ------------------------------------------------------------------------------ parsing


def test_parse_schemes_and_path_mangled_forms():
    loc = storage.parse("s3://bkt/a/b/")
    assert isinstance(loc, storage.Location) and loc.uri == "s3://bkt/a/b"
    # typer hands a Path option over; pathlib folds '//' to '/': still the same location
    assert storage.parse(Path("s3://bkt/a/b")) == loc
    assert storage.parse("gs://bkt/x").uri == "gs://bkt/x"
    assert (
        storage.parse("s3://bkt/p?region=eu-west-1").join("run").uri
        == "s3://bkt/p/run?region=eu-west-1"
    )
    assert storage.parse("file:///tmp/runs") == Path("/tmp/runs")
    assert storage.parse("runs/x") == Path("runs/x")
    with pytest.raises(storage.StorageError, match="unsupported storage scheme ftp://"):
        storage.parse("ftp://host/x")
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.parse("s3://")


def test_cli_errors_are_one_line(s3, tmp_path):
    bad = _cli("train", "--preset", "debug", "--storage", "ftp://x/y", "--no-wandb")
    assert bad.returncode == 2 and "unsupported storage scheme ftp://" in bad.stderr
    assert "Traceback" not in bad.stderr
    local = _cli("train", "--preset", "debug", "--local", "--storage", f"s3://{BUCKET}/x")
    assert local.returncode == 2 and "drop --local" in local.stderr
    missing = _cli("evaluate", f"s3://{BUCKET}/no-such-run")
    assert missing.returncode == 2 and "not a modresnet run" in missing.stderr
    assert "Traceback" not in missing.stderr
    served = _cli("serve", f"s3://{BUCKET}/no-such-run")  # serve fetches at the CLI edge too
    assert served.returncode == 2 and "not a modresnet run" in served.stderr


def test_unwritable_bucket_names_the_fix(s3):
    loc = storage.parse("s3://no-such-bucket-here/p")
    start = time.monotonic()
    with pytest.raises(storage.StorageError) as err:
        storage.check_writable(loc)
    assert "AWS_ENDPOINT_URL" in str(err.value) and "\n" not in str(err.value)
    assert time.monotonic() - start < 30


def test_publish_then_fetch_roundtrip(s3, tmp_path, debug_config):
    """publish uploads every file (test.json last, .lock and ray/ never); fetch_run downloads
    best/ + top-level files into the cache and reuses it while the weights' sha matches."""
    import torch

    from modresnet import checkpoint
    from modresnet.model import build_model

    run = tmp_path / "run"
    model = build_model(debug_config.model)
    checkpoint.save_model(run / "best", model, debug_config, tuple("abcdefghij"), 1, {})
    (run / "config.yaml").write_text(debug_config.to_yaml())
    (run / "test.json").write_text(json.dumps({"test_acc": 0.5}))
    (run / ".lock").write_text("")
    (run / "ray").mkdir()
    (run / "ray" / "x").write_text("ray's own")
    loc = storage.parse(f"s3://{BUCKET}/unit/run")
    storage.publish(run, loc)
    objs = _objects("unit/run")
    assert {"config.yaml", "test.json", "best/model.safetensors", "best/model.json"} <= set(objs)
    assert ".lock" not in objs and "ray/x" not in objs
    local = storage.fetch_run(loc)
    assert (local / "best" / "model.safetensors").read_bytes() == objs["best/model.safetensors"]
    loaded = checkpoint.load_model(local)  # sha256-checked
    assert torch.equal(
        next(iter(loaded.model.state_dict().values())), next(iter(model.state_dict().values()))
    )
    assert storage.fetch_run(loc) == local  # cached
    # new weights under the same URI: a new cache entry, never the stale one
    torch.nn.init.zeros_(next(model.parameters()))
    checkpoint.save_model(run / "best", model, debug_config, tuple("abcdefghij"), 2, {})
    storage.publish(run, loc)
    assert storage.fetch_run(loc) != local


# ------------------------------------------------------------------- Ray Train end to end


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
    port = _free_port()
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
