"""The GPU benchmark's harness runs end to end on a CPU (tiny), so a GPU session finds it
working: real `modresnet train --local` subprocesses, real test.json, one JSON line."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_recipes_smoke(tmp_path, data_dir):
    out = subprocess.run(
        [
            sys.executable,
            "tests/benchmarks/gpu_recipes.py",
            "--smoke",
            "--runs",
            "fast15:1",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and set(result["presets"]) == {"fast15"}
    for row in result["presets"].values():
        assert row["runs"] == 1 and row["epochs"] == 1
        assert 0.0 <= row["test_acc_min"] <= row["test_acc_mean"] <= row["test_acc_max"] <= 1.0
        assert row["images_per_s_mean"] > 0
    assert (tmp_path / "fast15-s1" / "test.json").exists()
    assert (tmp_path / "fast15-s1.log").exists()
