"""Helpers of the Ray Train tests (test_ray_train.py): the CLI, a tiny recipe, a clean
environment, and what a finished run directory holds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from modresnet import config as configs

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "modresnet.cli"]
TINY = [
    "--preset",
    "debug",
    "--subset",
    "300",
    "--set",
    "data.val_subset=100",
    "--set",
    "data.test_subset=100",
    "--no-wandb",
]


def tiny_config(data_dir, epochs: int = 2, **extra) -> configs.Config:
    overrides = {
        "data.data_dir": str(data_dir),
        "data.subset": 300,
        "data.val_subset": 100,
        "data.test_subset": 100,
        "train.epochs": epochs,
        **extra,
    }
    return configs.resolve("debug", overrides=overrides)


def env(**extra) -> dict:
    out = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "WANDB_MODE", "WANDB_API_KEY")
    }
    out.update(extra)
    return out


def epochs_of(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_run_dir(run: Path, epochs: int) -> None:
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "test.json",
        "curves.png",
        "confusion.png",
        "best/model.safetensors",
        "best/model.json",
        "last/model.safetensors",
        "last/train_state.json",
        "ray/checkpoint_manager_snapshot.json",
    ):
        assert (run / name).exists(), name
    assert epochs_of(run) == list(range(1, epochs + 1))
    from modresnet.checkpoint import load_model

    loaded = load_model(run)  # evaluate/predict/serve read a Ray run like a local one
    assert json.loads((run / "test.json").read_text())["sha256"] == loaded.sha256
    assert "test_acc" not in loaded.meta["metrics"]  # best/ is written once, by training
