"""Helpers of the `modresnet tune` tests (test_tune.py, test_tune_space.py): a search space,
the common CLI flags, a clean environment, and readers for a finished search."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPACE = """\
optim.name: {choice: [adam, sgd]}
optim.lr: {choice: [1.0e-5, 2.0e-5, 1.0e-3, 3.0e-3]}
optim.momentum: {uniform: [0.8, 0.95]}
schedule.name: constant
augment.flip: {choice: [0.0, 0.5]}
"""
COMMON = [
    "--preset",
    "debug",
    "--subset",
    "600",
    "--set",
    "data.val_subset=300",
    "--set",
    "data.test_subset=200",
    "--set",
    "train.batch_size=32",
    "--max-epochs",
    "3",
    "--grace-period",
    "1",
    "--reduction-factor",
    "2",
    "--concurrent",
    "2",
    "--cpus-per-trial",
    "1",
]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def _tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "modresnet.cli", "tune", *args]


def _run_tune(*args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`modresnet tune ARGS` run to its end (with `env` on top of the test environment)."""
    return subprocess.run(
        _tune_cmd(*args),
        cwd=REPO,
        env={**_env(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tune(*args: str, timeout: int = 300) -> None:
    """Run `modresnet tune` to the end; a failure shows the end of its output."""
    proc = _run_tune(*args, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def _leaderboard(exp: Path) -> list[dict]:
    with (exp / "leaderboard.csv").open() as f:
        return list(csv.DictReader(f))


def _trial_dirs(exp: Path) -> dict[str, Path]:
    """Trial id -> folder. Tune names it run_trial_<id>_<index>_...; an id holds one `_`
    under random search (abcde_00001) and none under Optuna, so a trial that reported says
    its id in result.json."""
    out = {}
    for d in exp.glob("run_trial_*"):
        if d.is_dir():
            reported = _results(d)
            out[reported[0]["trial_id"] if reported else "_".join(d.name.split("_")[2:4])] = d
    return out


def _results(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _saved_trials(exp: Path) -> dict[str, tuple[str, int]]:
    """Trial id -> (status, last epoch) as the search's saved state records them: what a
    resume starts from. A state file caught mid-write reads as empty."""
    states = sorted(exp.glob("experiment_state-*.json"))
    out = {}
    try:
        data = json.loads(states[-1].read_text()) if states else {}
        for trial, meta in data.get("trial_data", []):
            trial = json.loads(trial) if isinstance(trial, str) else trial
            meta = json.loads(meta) if isinstance(meta, str) else meta
            epoch = (meta.get("last_result") or {}).get("epoch", 0)
            out[trial["trial_id"]] = (trial["status"], epoch)
    except (OSError, ValueError, KeyError):
        return {}
    return out
