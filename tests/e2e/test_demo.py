"""`make demo` as a newcomer runs it.

The demo test runs the real target (Ray Train with 2 workers, an ASHA search, Ray Serve over
HTTP) with the environment a user has: no RAY_AUTH_MODE, no WANDB_SILENT, a fresh HOME. It
reads what was printed: no traceback, no warning or error line from Ray, a model that learned
(>= 50 % on the full test set), the HTTP check agreeing with `modresnet evaluate`, and the
closing summary; Ray's own messages went to ray.log files in the run folders instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers.console import noise

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_make_demo_learns_serves_and_prints_no_ray_noise(tmp_path, data_dir):
    runs, home = tmp_path / "runs", tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "WANDB_", "MAKE", "MFLAGS", "PYTEST_"))
    }
    env.update(MODRESNET_DATA=str(data_dir), HOME=str(home), COLUMNS="120")
    proc = subprocess.run(
        ["make", "--no-print-directory", "demo", f"RUNS={runs}"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    output = proc.stdout + proc.stderr
    (tmp_path / "demo.txt").write_text(output)
    assert proc.returncode == 0, output[-5000:]
    assert noise(output) == [], output[-5000:]

    run = next(p for p in runs.iterdir() if p.name.startswith("demo-"))
    tune = runs / f"tune-{run.name}"
    test = json.loads((run / "test.json").read_text())
    # 62.43 % measured here with 5 epochs, the same with ONEDNN_MAX_CPU_ISA=AVX2 (2 workers,
    # 1 thread each): a margin of 12 points
    assert test["n"] == 10000 and test["test_acc"] >= 0.50, test
    assert "training ModifiedResNet (debug flavor" in output  # what is trained, labelled
    assert len(re.findall(r"^epoch +\d+/5 ", output, re.M)) == 5  # every epoch shown
    assert f"learning curves: {run / 'curves.png'}" in output and (run / "curves.png").exists()
    agree = re.search(
        r"over HTTP: ([\d.]+)% of 10,000 test images correct; `modresnet "
        r"evaluate`: ([\d.]+)%; the two agree on 10,000/10,000 images",
        output,
    )
    assert agree and agree[1] == agree[2] == f"{100 * test['test_acc']:.2f}", output[-3000:]
    assert "Leaderboard: 4 trials" in output and (tune / "best-run" / "test.json").exists()
    summary = output[output.index("modresnet demo summary: a demo-sized run") :]
    for row in (
        "trained",
        "test accuracy",
        "best search trial",
        "served",
        "http://127.0.0.1:",
        "--preset paper --gpu",
        "tune --preset paper",
        "serve ",
        "cluster up",
    ):
        assert row in summary, summary
    for folder in (run, tune):  # Ray's messages were written down, not shown
        assert "Started a local Ray instance" in (folder / "ray.log").read_text()
    assert not (home / ".ray").exists()  # no token file written behind the user's back
