"""One process per run name, and --resume needs training state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--preset", "debug", "--subset", "256"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "modresnet.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_one_process_per_run_and_resume_needs_training_state(tmp_path):
    from modresnet.rundir import RunDir

    held = RunDir(tmp_path / "busy")
    with held.lock():  # this test process is "training" busy right now
        runs = [
            cli(
                "train",
                *local,
                *FLAGS,
                "--epochs",
                "1",
                "--storage",
                str(tmp_path),
                "--name",
                "busy",
            )
            for local in (["--local"], [])
        ]
    for r in runs:  # in-process and Ray paths alike refuse before doing anything
        assert r.returncode == 2, r.stdout + r.stderr
        assert "being written by another modresnet process" in r.stderr
        assert "Traceback" not in r.stderr
    assert sorted(p.name for p in held.path.iterdir()) == [".lock"]

    # a run with metrics but no last/train_state.json: --resume names what is missing
    no_state = tmp_path / "no-state"
    no_state.mkdir()
    (no_state / "metrics.jsonl").write_text('{"epoch": 1, "val_acc": 0.1}\n')
    r = cli(
        "train",
        "--local",
        *FLAGS,
        "--epochs",
        "2",
        "--storage",
        str(tmp_path),
        "--name",
        "no-state",
        "--resume",
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "last/train_state.json is missing" in r.stderr and "Traceback" not in r.stderr
    assert not (no_state / "last").exists()
