"""The GPU benchmark's whole path runs on a CPU (tiny), so a GPU session finds it working:
the data split into three carried parts and staged back with its md5 sums checked, the
baseline and speed runs, concurrent accuracy runs (real `modresnet train --local`
subprocesses, real test.json), the table and one JSON line."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = "tests/benchmarks/gpu_recipes.py"


def _run(*args, env=None):
    out = subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_gpu_recipes_dry_run(tmp_path, data_dir):
    import os

    env = {**os.environ, "MODRESNET_DATA": str(data_dir)}
    printed = _run("--split-data", tmp_path / "parts", env=env)
    assert printed.count("carry ") == 3
    parts = sorted((tmp_path / "parts").iterdir())
    root = tmp_path / "cifar"
    first = _run("--stage", parts[0], "--data-root", root, env=env)
    missing = "batches.meta, data_batch_3, data_batch_4, data_batch_5, test_batch"
    assert first.strip().endswith(f"still missing: {missing}")
    assert not (tmp_path / "runs").exists()  # nothing trains on a partial data set
    out = _run(
        "--stage",
        *parts[1:],
        "--data-root",
        root,
        "--dry-run",
        "--out",
        tmp_path / "runs",
        env={**env, "MODRESNET_DATA": "/nonexistent"},  # the staged copy is what trains
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["gpu"] is None and result["torch"]
    presets = result["presets"]
    assert set(presets) == {"baseline:fast", "speed:fast", "accuracy:fast"}
    assert presets["accuracy:fast"]["runs"] == 2 and "images_per_s" not in presets["accuracy:fast"]
    for key in ("baseline:fast", "speed:fast"):
        assert presets[key]["runs"] == 1 and presets[key]["images_per_s"] > 0
        assert presets[key]["mfu"] is None  # no GPU, no peak to divide by
    row = presets["accuracy:fast"]
    assert 0.0 <= row["test_acc_min"] <= row["test_acc_mean"] <= row["test_acc_max"] <= 1.0
    assert row["test_acc_std"] >= 0.0 and row["epochs"] == 1
    speed = next(r for r in result["runs"] if r["phase"] == "speed")
    assert "train.drop_last=true" in speed["sets"] and "train.compile=true" not in speed["sets"]
    assert (tmp_path / "runs" / "accuracy-fast-s1" / "test.json").exists()
    assert any(line.startswith("accuracy:fast ") for line in out.splitlines())
