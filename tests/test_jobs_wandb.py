"""A failure after training has finished keeps the run: a real `modresnet train` on an
embedded Ray with W&B at its default (offline: no API key), whose working directory is deleted
once the last epoch is reported (what happened to jobs on the local cluster, issue 11). The
final W&B step then fails inside wandb.init (os.getcwd()); the run directory must still be
complete, the command must say so in one line, and no traceback may reach the user. The
epochs themselves are in W&B already."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from cluster_helpers import wandb_history


@pytest.mark.ray
def test_a_failing_final_wandb_step_keeps_the_finished_run(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    # no WANDB_MODE and no key: the default policy logs offline (jobs.runtime.wandb_policy)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "WANDB_"))}
    env.update(WANDB_SILENT="true", COLUMNS="250")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modresnet.cli",
            "train",
            "--preset",
            "debug",
            "--subset",
            "256",
            "--epochs",
            "1",
            "--workers",
            "1",
            "--storage",
            str(tmp_path),
            "--name",
            "r",
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("epoch   1/1"):
            shutil.rmtree(cwd)  # the driver is now past training, before its final W&B step
    assert proc.wait(timeout=300) == 0, "".join(out)
    text = "".join(out)
    assert "Traceback" not in text
    warnings = [line for line in out if "W&B could not record the test result" in line]
    assert len(warnings) == 1 and "FileNotFoundError" in warnings[0], text
    run = tmp_path / "r"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "test.json",
        "curves.png",
        "confusion.png",
        "best/model.safetensors",
        "last/train_state.json",
    ):
        assert (run / name).exists(), name
    assert "FileNotFoundError" in (run / "ray.log").read_text()  # the traceback went there
    assert json.loads((run / "test.json").read_text())["n"] == 200
    assert [h["epoch"] for h in wandb_history(run / "wandb") if "val_acc" in h] == [1]
