"""`make demo` as a newcomer runs it.

The demo test runs the real target (one `modresnet pipeline`: an ASHA search, a Ray Train
retrain with 2 workers, registration and promotion; then Ray Serve over HTTP serving the new
champion) with the environment a user has: no RAY_AUTH_MODE, no WANDB_SILENT, a fresh HOME. It
reads what was printed: no traceback, no warning or error line from Ray, a model that learned
(>= 50 % on the full test set), the HTTP check agreeing with `modresnet evaluate`, every answer
from the new version, and the closing summary; Ray's own messages went to ray.log files in the
pipeline's folder instead.
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

    pipeline = next(p for p in runs.iterdir() if p.name.startswith("demo-"))
    state = json.loads((pipeline / "pipeline.json").read_text())
    stages = {s["name"]: s for s in state["stages"]}
    assert state["status"] == "finished", state
    assert [s["status"] for s in state["stages"]] == ["done"] * 6, state
    print({name: round(s["ended"] - s["started"]) for name, s in stages.items()})
    run = pipeline / "retrain"
    test = json.loads((run / "test.json").read_text())
    assert test["n"] == 10000 and test["test_acc"] >= 0.50, test
    assert "training ModifiedResNet (debug flavor" in output  # what is trained, labelled
    assert "on 12,000 CIFAR-10 training images for 5 epochs" in output  # the full budget
    assert len(re.findall(r"^epoch +\d+/5 ", output, re.M)) == 5  # every epoch shown
    assert len(re.findall(r"^trial \w+ (done|stopped)", output, re.M)) == 4  # each trial shown
    assert stages["search"]["output"]["best_config"]["data"]["subset"] == 4000
    label = f"{pipeline.name}/1"
    assert stages["promote"]["output"]["champion"] == label
    agree = re.search(
        r"over HTTP: ([\d.]+)% of 10,000 test images correct; `modresnet "
        r"evaluate`: ([\d.]+)%; the two agree on 10,000/10,000 images",
        output,
    )
    assert agree and agree[1] == agree[2] == f"{100 * test['test_acc']:.2f}", output[-3000:]
    assert f"every answer came from X-Model-Version: {label}" in output
    summary = output[output.index("modresnet demo summary: a demo-sized run") :]
    for row in (
        "pipeline",
        "best search trial",
        "validation",
        "trained",
        "test accuracy",
        "registered",
        "served",
        label,
        "http://127.0.0.1:",
        "pipeline run cifar --preset paper",
        f"serve models:/{pipeline.name}@champion",
        "cluster up",
    ):
        assert row in summary, summary
    for log in ("ray.log", "serve-ray.log"):  # Ray's messages were written down, not shown
        assert "Started a local Ray instance" in (pipeline / log).read_text()
    assert not (home / ".ray").exists()  # no token file written behind the user's back
