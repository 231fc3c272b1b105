"""Crash-safe runs: a real training process SIGKILLed at the worst moments of replacing last/,
then resumed through the CLI.

The crash point is injected by the child itself: it wraps Path.rename so that, at the chosen
rename of last/, it sends itself SIGKILL (no cleanup, no finally blocks, as a power cut)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--preset", "debug", "--subset", "256"]
CRASHING_TRAINER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from modresnet import config as configs
    from modresnet.local import train_local

    run, crash_at = Path(sys.argv[1]), sys.argv[2]
    rename = Path.rename

    def crashing_rename(self, target):
        target = Path(target)
        # last/ exists from epoch 1 on, so epoch 2 replaces it: last -> last.old, last.tmp -> last
        if crash_at == "before-renames" and self.name == "last" and target.name == "last.old":
            os.kill(os.getpid(), signal.SIGKILL)
        if (crash_at == "between-renames" and self.name == "last.tmp" and target.name == "last"
                and (self.parent / "last.old").exists()):
            os.kill(os.getpid(), signal.SIGKILL)
        return rename(self, target)

    Path.rename = crashing_rename
    cfg = configs.resolve("debug", overrides={"data.subset": 256, "train.epochs": 2})
    train_local(cfg, run)
""")


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


@pytest.mark.parametrize(
    "crash_at, left",
    [
        ("between-renames", {"last.old", "last.tmp"}),  # last/ missing: the case that lost runs
        ("before-renames", {"last", "last.tmp"}),
    ],
)
def test_a_run_killed_while_replacing_last_resumes_from_the_last_complete_epoch(
    tmp_path: Path, crash_at: str, left: set[str], data_dir: Path
) -> None:
    """Needs CIFAR-10 (`data_dir`): the child and the resumed CLI read it."""
    run = tmp_path / "r"
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_TRAINER, str(run), crash_at],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert {p.name for p in run.iterdir() if p.name.startswith("last")} == left
    assert [m["epoch"] for m in map(json.loads, (run / "metrics.jsonl").open())] == [1, 2]

    resumed = cli(
        "train",
        "--local",
        *FLAGS,
        "--epochs",
        "3",
        "--storage",
        str(tmp_path),
        "--name",
        "r",
        "--resume",
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    if crash_at == "between-renames":
        assert "restored last/ from last.old/" in resumed.stdout
    # epoch 2 was lost with the crash and trained again: every epoch exactly once, in order
    assert [m["epoch"] for m in map(json.loads, (run / "metrics.jsonl").open())] == [1, 2, 3]
    assert "epoch   1/3" not in resumed.stdout and "epoch   2/3" in resumed.stdout
    assert {p.name for p in run.iterdir() if p.name.startswith("last")} == {"last"}
    assert json.loads((run / "last" / "train_state.json").read_text())["epoch"] == 3
    assert (run / "test.json").exists()
