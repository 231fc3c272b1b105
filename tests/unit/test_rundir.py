"""The run directory: the one writer every path that ends with checkpoints calls (the Ray
Train driver, the tune export), and the one refusal to train over an existing run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from modresnet import checkpoint, engine
from modresnet import config as configs
from modresnet.data import CLASSES
from modresnet.model import build_model
from modresnet.rundir import RunDir, RunExistsError, write_run_dir


def _resumable(path: Path, cfg: configs.Config, epochs: int) -> Path:
    torch.manual_seed(epochs)
    state = engine.build_state(cfg, build_model(cfg.model), 64)
    state.epoch = epochs
    state.history = [{"epoch": e, "val_acc": e / 10} for e in range(1, epochs + 1)]
    return checkpoint.save_resumable(path, state, cfg, CLASSES, state.history[-1])


def test_write_run_dir_lays_out_a_run_from_finished_checkpoints(tmp_path):
    cfg = configs.resolve("debug")
    best, latest = _resumable(tmp_path / "b", cfg, 2), _resumable(tmp_path / "l", cfg, 3)
    run = RunDir(tmp_path / "run")
    history = write_run_dir(run, cfg, latest, best)
    assert [m["epoch"] for m in history] == [1, 2, 3] == [m["epoch"] for m in run.read_metrics()]
    assert yaml.safe_load((run.path / "config.yaml").read_text()) == cfg.to_dict()
    assert sorted(p.name for p in run.best.iterdir()) == [checkpoint.META, checkpoint.WEIGHTS]
    assert checkpoint.load_model(run.best).meta["epoch"] == 2
    assert checkpoint.training_history(run.last) == history
    assert checkpoint.sha256_file(run.last / checkpoint.WEIGHTS) == checkpoint.sha256_file(
        latest / checkpoint.WEIGHTS
    )
    assert sorted(p.name for p in run.path.iterdir()) == [
        "best",
        "config.yaml",
        "last",
        "metrics.jsonl",
    ]


def test_a_run_that_exists_is_refused_unless_resumed(tmp_path):
    run = RunDir(tmp_path / "r")
    run.check_new(resume=False)  # nothing there yet
    run.create(configs.resolve("debug")).write_metrics([{"epoch": 1}])
    run.check_new(resume=True)
    with pytest.raises(RunExistsError) as refused:
        run.check_new(resume=False)
    assert str(refused.value) == (
        f"run directory {run.path} already holds a run; pass --resume to continue it, "
        f"or choose another --name"
    )
    assert json.loads(run.metrics_file.read_text()) == {"epoch": 1}
