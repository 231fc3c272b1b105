"""In-process training: one process, no Ray. The GPU path and `train --local` use it; the
Ray Train path writes the same run directory through the same engine."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from modresnet import checkpoint, engine
from modresnet.config import Config
from modresnet.data import Cifar10, load_cifar10
from modresnet.engine import BatchCallback, TrainingState
from modresnet.errors import UserError
from modresnet.model import build_model
from modresnet.rundir import RunDir, finalize


class RunExistsError(UserError, ValueError):
    """A run of that name exists and the user did not ask to resume it."""


@dataclass(frozen=True)
class LocalResult:
    run: RunDir
    history: list[dict]
    test: dict


def epoch_writer(run: RunDir, config: Config, classes: tuple[str, ...]):
    """The local `on_epoch`: metrics, best/ on a new best validation accuracy, last/ always."""

    def on_epoch(record: dict, state: TrainingState) -> None:
        run.write_metrics(state.history)
        best_so_far = max(m["val_acc"] for m in state.history[:-1]) if len(state.history) > 1 else -1
        if record["val_acc"] > best_so_far:
            tmp = run.path / "best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            checkpoint.save_model(tmp, state.eval_model(), config, classes, state.epoch, record)
            checkpoint.replace_dir(tmp, run.best)
        tmp = run.path / "last.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        checkpoint.save_resumable(tmp, state, config, classes, record)
        checkpoint.replace_dir(tmp, run.last)

    return on_epoch


def train_local(config: Config, run_path: Path, resume: bool = False,
                data: Cifar10 | None = None, on_batch: BatchCallback | None = None,
                on_epoch_done=None, info=print) -> LocalResult:
    run = RunDir(Path(run_path))
    if run.exists() and not resume:
        raise RunExistsError(f"run directory {run.path} already holds a run; pass --resume to "
                             f"continue it, or choose another --name")
    with run.lock():
        return _train_locked(run, config, resume, data, on_batch, on_epoch_done, info)


def _train_locked(run: RunDir, config: Config, resume: bool, data: Cifar10 | None,
                  on_batch: BatchCallback | None, on_epoch_done, info) -> LocalResult:
    for line in run.recover():
        info(line)
    if run.exists() and not resume:  # checked again under the lock: another process may have
        raise RunExistsError(f"run directory {run.path} already holds a run; pass --resume to "
                             f"continue it, or choose another --name")
    if resume and not checkpoint.has_training_state(run.last):
        raise RunExistsError(f"--resume: {run.last / checkpoint.STATE_META} is missing, so run "
                             f"{run.path.name} has no training state to continue (it never "
                             f"finished an epoch, or was not trained here); start it again "
                             f"under a new --name")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = engine.select_device(config.train.device)
    data = data or load_cifar10(config.data)
    engine.seed_everything(config.train.seed)
    model = build_model(config.model).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = engine.build_state(config, model, len(data.train))
    if resume:
        checkpoint.load_training_state(run.last, state)
    run.create(config)
    writer = epoch_writer(run, config, data.classes)

    def on_epoch(record: dict, st: TrainingState) -> None:
        writer(record, st)
        if on_epoch_done is not None:
            on_epoch_done(record)

    train, val = engine.to_device(data.train, device), engine.to_device(data.val, device)
    engine.fit(state, train, val, config, device, on_epoch, on_batch)
    test = finalize(run, data.test, data.classes, device)
    return LocalResult(run, state.history, test)
