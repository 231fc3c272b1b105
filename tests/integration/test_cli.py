"""Every core CLI command end to end on a small real subset: train, resume, evaluate, predict."""

import json
import subprocess
import sys

import pytest

from modresnet.images import encode_png


def run(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "modresnet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    storage = tmp_path_factory.mktemp("runs")
    proc = run(
        "train",
        "--local",
        "--preset",
        "debug",
        "--epochs",
        "2",
        "--storage",
        storage,
        "--name",
        "cli",
    )
    return storage / "cli", proc.stdout


def test_train_writes_a_complete_run(trained):
    run_dir, stdout = trained
    assert "test accuracy" in stdout and str(run_dir) in stdout.replace("\n", "")
    for name in (
        "metrics.jsonl",
        "curves.png",
        "confusion.png",
        "test.json",
        "config.yaml",
        "best/model.safetensors",
        "best/model.json",
        "last/train_state.json",
    ):
        assert (run_dir / name).exists(), name
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    fields = {"train_loss", "val_loss", "train_acc", "val_acc", "lr", "images_per_s"}
    assert fields <= set(metrics[0])
    from modresnet.rundir import test_result

    meta = json.loads((run_dir / "best" / "model.json").read_text())
    assert "test_acc" not in meta["metrics"], "finalize rewrote best/ after training"
    test = json.loads((run_dir / "test.json").read_text())
    assert test_result(run_dir / "best", meta["sha256"]) == test  # what /model reports
    assert test_result(run_dir / "best", "0" * 64) is None  # a result of other weights


def test_resume_continues_at_the_next_epoch(tmp_path, data_dir):
    local = ["train", "--local", "--preset", "debug", "--storage", tmp_path, "--name", "r"]
    run(*local, "--epochs", "1")
    again = run(*local, "--epochs", "1", check=False)
    assert again.returncode == 2 and "--resume" in again.stderr
    run(*local, "--epochs", "2", "--resume")
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_evaluate_prints_json(trained):
    run_dir, _ = trained
    result = json.loads(run("evaluate", run_dir, "--subset", "200", "--tta").stdout)
    assert result["n"] == 200 and 0.0 <= result["test_acc"] <= 1.0 and result["tta"] is True
    plain = json.loads(run("evaluate", run_dir, "--subset", "200").stdout)
    recorded = json.loads((run_dir / "test.json").read_text())  # the same 200 images, scored once
    assert plain["test_acc"] == recorded["test_acc"] and plain["n"] == recorded["n"]


def test_predict_real_test_images(trained, small_cifar, tmp_path):
    run_dir, _ = trained
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(encode_png(small_cifar.test.x[i]))
        paths.append(path)
    out = json.loads(
        run("predict", *paths, "--checkpoint", run_dir, "--json", "--top-k", "3").stdout
    )
    assert len(out) == 3
    for item in out:
        probs = [r["probability"] for r in item["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert item["top_k"][0]["label"] in small_cifar.classes
    table = run("predict", paths[0], "--checkpoint", run_dir).stdout
    assert "img0" in table and "%" in table


def test_predict_refuses_a_non_image(trained, tmp_path):
    run_dir, _ = trained
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    proc = run("predict", bad, "--checkpoint", run_dir, check=False)
    assert proc.returncode == 2 and "bad.png" in proc.stderr and "Traceback" not in proc.stderr
