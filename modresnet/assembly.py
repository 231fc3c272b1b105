"""Run assembly: what a training run needs before its first epoch, built one way for the
local path, Ray Train workers and Tune trials.

Threads follow one rule (`thread_count`): `train.threads` when set; else the CPUs the caller
was given (a Ray Train worker's cpus_per_worker, a Tune trial's cpus_per_trial), at least
one; else, for a local run, torch's default (one thread per core).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from modresnet import checkpoint, engine
from modresnet.config import Config
from modresnet.data import Cifar10, Split, load_cifar10
from modresnet.device import select_device
from modresnet.engine import BatchCallback, EpochCallback, TrainingState
from modresnet.model import build_model


@dataclass(frozen=True)
class Assembled:
    config: Config
    state: TrainingState
    train: Split  # on the device
    val: Split  # on the device
    test: Split  # on the CPU: only the final evaluation reads it
    classes: tuple[str, ...]
    device: torch.device

    def fit(self, on_epoch: EpochCallback, on_batch: BatchCallback | None = None) -> TrainingState:
        """Train the remaining epochs (all of them, unless the state was resumed)."""
        return engine.fit(
            self.state, self.train, self.val, self.config, self.device, on_epoch, on_batch
        )


def thread_count(config: Config, cpus: float | None) -> int | None:
    """The torch intra-op threads of a run; None keeps torch's default."""
    if config.train.threads:
        return config.train.threads
    if cpus is not None:
        return max(1, int(cpus))
    return None


def assemble(
    config: Config,
    device: torch.device | None = None,
    *,
    cpus: float | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    data: Cifar10 | None = None,
    resume_from: Path | None = None,
) -> Assembled:
    """Threads, device (None: `train.device`), data (None: loaded from `config.data`), the
    seeded model and its TrainingState, restored from `resume_from`'s training state when
    given. `wrap` puts DDP around the model (see engine.build_state)."""
    threads = thread_count(config, cpus)
    if threads is not None:
        torch.set_num_threads(threads)
    device = device if device is not None else select_device(config.train.device)
    data = data or load_cifar10(config.data)
    engine.seed_everything(config.train.seed)
    model = build_model(config.model).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = engine.build_state(config, model, len(data.train), wrap=wrap)
    if resume_from is not None:
        checkpoint.load_training_state(resume_from, state)
    return Assembled(
        config,
        state,
        engine.to_device(data.train, device),
        engine.to_device(data.val, device),
        data.test,
        data.classes,
        device,
    )
