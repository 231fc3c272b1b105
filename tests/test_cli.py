"""Every core CLI command end to end on a small real subset, and its user-error paths."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modresnet.cli import app
from modresnet.images import encode_png

REPO = Path(__file__).resolve().parents[1]


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


def test_help_on_every_command():
    for command in ([], ["summary"], ["train"], ["evaluate"], ["predict"]):
        assert "Usage" in run(*command, "--help").stdout


def test_summary_prints_the_parameter_total():
    out = run("summary").stdout
    assert "Total params: 2,777,674" in out and "Forward/backward pass size (MB)" in out


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


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--local", "--preset", "debug", "--set", "optim.lrr=1"], "optim.lrr"),
        (["train", "--local", "--preset", "debug", "--lr", "-1"], "optim.lr"),
        (["train", "--local", "--preset", "nope"], "preset"),
        (
            [
                "train",
                "--local",
                "--preset",
                "debug",
                "--data-dir",
                "/nonexistent",
                "--set",
                "data.download=false",
            ],
            "MODRESNET_DATA",
        ),
        (["evaluate", "/nonexistent/run"], "no such file"),
        (["predict", "/nonexistent.png", "--checkpoint", "/nonexistent"], "cannot read"),
    ],
)
def test_user_errors_exit_2_without_traceback(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_predict_refuses_a_non_image(trained, tmp_path):
    run_dir, _ = trained
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    proc = run("predict", bad, "--checkpoint", run_dir, check=False)
    assert proc.returncode == 2 and "bad.png" in proc.stderr and "Traceback" not in proc.stderr


def test_help_imports_neither_torch_nor_ray():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom modresnet.cli import app\n"
        "for args in ([], ['train'], ['tune'], ['serve'], ['jobs', 'submit'], ['cluster']):\n"
        "    assert CliRunner().invoke(app, [*args, '--help']).exit_code == 0, args\n"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_only_the_composition_root_imports_jobs_and_serve():
    upward = re.compile(r"^\s*(from|import) (jobs|serve|ray)\b", re.MULTILINE)
    for path in sorted((REPO / "modresnet").rglob("*.py")):
        if path.name != "cli.py":
            assert not upward.search(path.read_text()), path


def test_every_core_module_imports_first():
    """No import cycle in the core: each module imports into a process that holds none."""
    code = (
        "import importlib, pkgutil, sys\nimport modresnet\n"
        "for m in pkgutil.walk_packages(modresnet.__path__, 'modresnet.'):\n"
        "    for name in [n for n in sys.modules if n.startswith('modresnet.')]:\n"
        "        del sys.modules[name]\n"
        "    importlib.import_module(m.name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "rmsprop"], "optim.name: must be one of adam, adamw, sgd; got 'rmsprop'"),
        (["--schedule", "step"], "schedule.name: must be one of plateau"),
        (["--device", "tpu"], "train.device: must be one of auto, cpu, cuda"),
        (["--epochs", "0"], "train.epochs: must be between 1"),
        (["--set", "optim.name=rmsprop"], "optim.name: must be one of"),
    ],
)
def test_config_flags_are_checked_by_the_config(args, message):
    result = CliRunner().invoke(app, ["train", "--local", "--preset", "debug", *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_config_flags_help_names_the_field_and_its_choices():
    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    text = " ".join(help_text.split())
    for fragment in (
        "optim.name: adam | adamw | sgd",
        "train.device: auto | cpu | cuda",
        "Model flavor (model.flavor): paper | debug",
        "optim.lr",
    ):
        assert fragment in text, fragment
