"""The core CLI without the data set: help, flags derived from the config, one-line user errors,
and which modules each command imports."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modresnet.cli import app

REPO = Path(__file__).resolve().parents[2]


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


def test_help_on_every_command():
    for command in ([], ["summary"], ["train"], ["evaluate"], ["predict"]):
        assert "Usage" in run(*command, "--help").stdout


def test_summary_prints_the_parameter_total():
    out = run("summary").stdout
    assert "Total params: 2,777,674" in out and "Forward/backward pass size (MB)" in out


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


def test_help_imports_neither_torch_nor_ray():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom modresnet.cli import app\n"
        "for args in ([], ['train'], ['tune'], ['serve'], ['jobs', 'submit'], ['cluster'],\n"
        "             ['models'], ['models', 'promote'], ['pipeline'], ['pipeline', 'run']):\n"
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
