"""In-process training: one process, no Ray. The GPU path and `train --local` use it; the
Ray Train path writes the same run directory through the same engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modresnet import checkpoint, files
from modresnet.assembly import assemble
from modresnet.config import Config
from modresnet.data import Cifar10
from modresnet.engine import BatchCallback, EpochCallback, Record, TrainingState
from modresnet.evaluation import finalize
from modresnet.rundir import RunDir, RunExistsError


@dataclass(frozen=True)
class LocalResult:
    run: RunDir
    history: list[Record]
    test: dict[str, Any]


def epoch_writer(run: RunDir, config: Config, classes: tuple[str, ...]) -> EpochCallback:
    """The local `on_epoch`: metrics, best/ on a new best validation accuracy, last/ always."""

    def on_epoch(record: Record, state: TrainingState) -> None:
        run.write_metrics(state.history)
        earlier = [m["val_acc"] for m in state.history[:-1]]
        if record["val_acc"] > max(earlier, default=-1):
            with files.atomic_dir(run.best) as tmp:
                checkpoint.save_model(tmp, state.eval_model(), config, classes, state.epoch, record)
        with files.atomic_dir(run.last) as tmp:
            checkpoint.save_resumable(tmp, state, config, classes, record)

    return on_epoch


def train_local(
    config: Config,
    run_path: Path,
    resume: bool = False,
    data: Cifar10 | None = None,
    on_batch: BatchCallback | None = None,
    on_epoch_done: Callable[[Record], None] | None = None,
    info: Callable[[str], None] = print,
) -> LocalResult:
    run = RunDir(Path(run_path))
    run.check_new(resume)
    with run.lock():
        return _train_locked(run, config, resume, data, on_batch, on_epoch_done, info)


def _train_locked(
    run: RunDir,
    config: Config,
    resume: bool,
    data: Cifar10 | None,
    on_batch: BatchCallback | None,
    on_epoch_done: Callable[[Record], None] | None,
    info: Callable[[str], None],
) -> LocalResult:
    for line in run.recover():
        info(line)
    run.check_new(resume)  # again under the lock: another process may have written it since
    if resume and not checkpoint.has_training_state(run.last):
        raise RunExistsError(
            f"--resume: {run.last / checkpoint.STATE_META} is missing, so run "
            f"{run.path.name} has no training state to continue (it never "
            f"finished an epoch, or was not trained here); start it again "
            f"under a new --name"
        )
    assembled = assemble(config, data=data, resume_from=run.last if resume else None)
    run.create(config)
    writer = epoch_writer(run, config, assembled.classes)

    def on_epoch(record: Record, state: TrainingState) -> None:
        writer(record, state)
        if on_epoch_done is not None:
            on_epoch_done(record)

    assembled.fit(on_epoch, on_batch)
    test = finalize(run, assembled.test, assembled.classes, assembled.device)
    return LocalResult(run, assembled.state.history, test)
