"""The one training engine: train one epoch, evaluate, and the epoch loop around them.

The local CLI, Ray Train workers and Tune trials all call `fit`; they differ only in the
`on_epoch` callback (write a run directory, or `ray.train.report`, or `tune.report`).
Randomness is derived from (seed, epoch, rank), so a run resumed at epoch k draws the same
shuffles and augmentations as one that never stopped. Data-parallel runs shard each
epoch's permutation by rank and all-reduce the metrics through torch.distributed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, ReduceLROnPlateau

from modresnet.augment import alternating_flips, augment
from modresnet.config import Config
from modresnet.data import Split
from modresnet.device import FP32, Precision, autocast, device_precision, tune_backend
from modresnet.ema import WeightEMA
from modresnet.inference import predict_logits, score
from modresnet.optim import build_optimizer, build_scheduler
from modresnet.parallel import all_reduce, rank_and_world, unwrap

# (step, steps, loss): the loss stays a device tensor; reading it is a host sync, so a
# progress bar should do that rarely (the CLI does it at most a few times a second).
BatchCallback = Callable[[int, int, torch.Tensor], None]
Record = dict[str, Any]  # one epoch's metrics, as metrics.jsonl holds them

_SCHEDULE_LENGTH = ("T_max",)  # kept from the new config on resume, so epochs may grow


def steps_per_epoch(
    train_size: int, batch_size: int, world_size: int, drop_last: bool = False
) -> int:
    """Full batches per rank, plus the partial last one unless `drop_last` (or it holds a
    single image: BatchNorm cannot train on a batch of one)."""
    per_rank = train_size // world_size
    full, rest = divmod(per_rank, batch_size)
    return full + (1 if rest >= 2 and not drop_last else 0)


@dataclass
class TrainingState:
    """Everything a resumed run needs besides the config and the data."""

    model: nn.Module  # may be wrapped in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None
    ema: WeightEMA | None
    precision: Precision = FP32
    scaler: torch.amp.GradScaler | None = None
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # torch.compile'd model
    epoch: int = 0  # epochs completed
    history: list[Record] = field(default_factory=list)
    use_ema: bool = True  # the last validation found the EMA at least as good as the live

    def eval_model(self) -> nn.Module:
        """The weights we evaluate and export: the EMA, unless the last validation found the
        live weights better (then those: a user never gets the worse of the two)."""
        if self.ema is not None and self.use_ema:
            return self.ema.module
        return unwrap(self.model)

    def state_dict(self) -> dict[str, Any]:
        """What a resume restores, as nested dicts of tensors and plain values (the checkpoint
        stores them as safetensors + JSON; the RNG is the process's CPU generator)."""
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "use_ema": self.use_ema,
            "rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "history": self.history,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore a state built fresh from the same config. The schedule keeps its new
        length, so a resumed run may extend train.epochs. Raises KeyError, RuntimeError or
        ValueError when `saved` does not fit this model or optimizer."""
        unwrap(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.ema is not None and saved["ema"] is not None:
            self.ema.load_state_dict(saved["ema"])
        if self.scaler is not None and saved.get("scaler") is not None:
            self.scaler.load_state_dict(saved["scaler"])
        self.use_ema = saved.get("use_ema", True)
        if self.scheduler is not None and saved["scheduler"] is not None:
            kept = {k: v for k, v in saved["scheduler"].items() if k not in _SCHEDULE_LENGTH}
            self.scheduler.load_state_dict({**self.scheduler.state_dict(), **kept})
            if not isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.last_epoch -= 1  # re-derive the lr under the new length
                if isinstance(self.scheduler, CosineAnnealingLR):
                    # its step() scales the current lr, so start it from the closed form
                    for group, lr in zip(
                        self.optimizer.param_groups, _cosine_lrs(self.scheduler), strict=True
                    ):
                        group["lr"] = lr
                self.scheduler.step()
        torch.set_rng_state(saved["rng"])
        self.epoch = saved["epoch"]
        self.history = saved["history"]


def _cosine_lrs(s: CosineAnnealingLR) -> list[float]:
    """The cosine schedule's closed form at its last_epoch, for its current length."""
    angle = math.pi * s.last_epoch / s.T_max
    return [
        s.eta_min + (float(base) - s.eta_min) * (1 + math.cos(angle)) / 2 for base in s.base_lrs
    ]


def build_state(
    config: Config,
    model: nn.Module,
    train_size: int,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainingState:
    """Optimizer, schedule, EMA and precision for `model` (already on its device). `wrap`
    is where a data-parallel caller puts DDP, after the EMA copy is taken from the plain
    model."""
    _, world = rank_and_world()
    tc = config.train
    device = next(model.parameters()).device
    tune_backend(device)
    precision = device_precision(tc.precision, device)
    ema = WeightEMA(model, tc.ema_decay, tc.ema_every) if tc.ema_decay else None
    wrapped = wrap(model) if wrap is not None else model
    optimizer = build_optimizer(config, wrapped, world)
    steps = steps_per_epoch(train_size, tc.batch_size, world, tc.drop_last)
    scaler = torch.amp.GradScaler(device.type) if precision.scaler else None
    forward = torch.compile(wrapped) if config.train.compile else None
    return TrainingState(
        wrapped,
        optimizer,
        build_scheduler(config, optimizer, steps),
        ema,
        precision,
        scaler,
        forward,
    )


def epoch_permutation(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of a per-epoch shuffle; every rank draws the same permutation."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = n // world
    return perm[: per_rank * world][rank::world]


def train_one_epoch(
    state: TrainingState,
    train: Split,
    config: Config,
    device: torch.device,
    on_batch: BatchCallback | None = None,
) -> dict[str, float]:
    rank, world = rank_and_world()
    epoch, tc = state.epoch, config.train
    model = state.model
    model.train()
    perm = epoch_permutation(len(train), tc.seed, epoch, rank, world).to(device)
    steps = steps_per_epoch(len(train), tc.batch_size, world, tc.drop_last)
    flips = (
        alternating_flips(len(train), tc.seed, epoch).to(device)
        if config.augment.flip_alternate
        else None
    )
    g = torch.Generator(device=device).manual_seed(tc.seed * 7919 + epoch * 104_729 + rank)
    per_step = None if isinstance(state.scheduler, ReduceLROnPlateau) else state.scheduler
    forward = state.forward or model
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    start = time.perf_counter()
    for step in range(steps):  # no host sync inside: metrics accumulate on the device
        idx = perm[step * tc.batch_size : (step + 1) * tc.batch_size]
        x = augment(
            train.x[idx],
            config.augment,
            g,
            config.data.mean,
            config.data.std,
            flips[idx] if flips is not None else None,
        )
        if config.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = train.y[idx]
        with autocast(state.precision, device):
            logits = forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=tc.label_smoothing)
        state.optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            torch.autograd.backward(state.scaler.scale(loss))
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            torch.autograd.backward(loss)
            state.optimizer.step()
        if per_step is not None:
            per_step.step()
        if state.ema is not None:
            state.ema.update(unwrap(model))
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if on_batch is not None:
            on_batch(step + 1, steps, loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    total_loss, total_correct, total_seen = all_reduce(
        [float(loss_sum), float(correct), float(seen)], device
    )
    return {
        "train_loss": total_loss / max(total_seen, 1),
        "train_acc": total_correct / max(total_seen, 1),
        "images_per_s": total_seen / seconds if seconds > 0 else 0.0,
        "train_images": int(total_seen),
        "train_s": seconds,
    }


def evaluate(
    model: nn.Module, split: Split, config: Config, device: torch.device, tta: int = 1
) -> dict[str, float]:
    """Loss and accuracy on `split`, sharded over the data-parallel ranks if any; `tta`
    views averaged (inference.predict_logits)."""
    rank, world = rank_and_world()
    n = len(split)
    lo, hi = n * rank // world, n * (rank + 1) // world
    loss, correct = score(
        predict_logits(model, split.x[lo:hi], config, device, tta), split.y[lo:hi]
    )
    loss, correct, count = all_reduce([loss, correct, float(hi - lo)], device)
    return {"loss": loss / max(count, 1), "acc": correct / max(count, 1), "n": int(count)}


def current_lr(state: TrainingState) -> float:
    return float(state.optimizer.param_groups[0]["lr"])


def calibration_batches(
    train: Split, config: Config, device: torch.device, epoch: int
) -> Iterator[torch.Tensor]:
    """train.ema_bn_images augmented training images, the same on every rank and on a
    resumed run, in training-sized batches: what the EMA's BatchNorm statistics are
    recomputed from."""
    tc = config.train
    n = min(len(train), tc.ema_bn_images)
    g = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch + 500_009)
    idx = torch.randperm(len(train), generator=g)[:n].to(device)
    ga = torch.Generator(device=device).manual_seed(tc.seed * 7919 + epoch + 500_009)
    for i in range(0, n, tc.batch_size):
        x = augment(
            train.x[idx[i : i + tc.batch_size]],
            config.augment,
            ga,
            config.data.mean,
            config.data.std,
        )
        yield x.contiguous(memory_format=torch.channels_last) if tc.channels_last else x


def validate(
    state: TrainingState, train: Split, val: Split, config: Config, device: torch.device
) -> Record:
    """Validation of the live weights and, with EMA on, of the EMA after recomputing its
    BatchNorm statistics; the better of the two becomes the evaluated model."""
    tta = config.train.tta_views
    live = evaluate(unwrap(state.model), val, config, device, tta=tta)
    if state.ema is None:
        return {"val_loss": live["loss"], "val_acc": live["acc"]}
    with autocast(state.precision, device):
        state.ema.calibrate(calibration_batches(train, config, device, state.epoch))
    ema = evaluate(state.ema.module, val, config, device, tta=tta)
    state.use_ema = ema["acc"] >= live["acc"]
    chosen = ema if state.use_ema else live
    return {
        "val_loss": chosen["loss"],
        "val_acc": chosen["acc"],
        "val_acc_live": live["acc"],
        "val_acc_ema": ema["acc"],
        "weights": "ema" if state.use_ema else "live",
    }


def run_epoch(
    state: TrainingState,
    train: Split,
    val: Split,
    config: Config,
    device: torch.device,
    on_batch: BatchCallback | None = None,
) -> Record:
    """One epoch of training plus validation; steps the plateau schedule; advances state."""
    start = time.perf_counter()
    lr = current_lr(state)
    metrics = train_one_epoch(state, train, config, device, on_batch)
    val_metrics = validate(state, train, val, config, device)
    if isinstance(state.scheduler, ReduceLROnPlateau):
        state.scheduler.step(val_metrics["val_loss"])
    state.epoch += 1
    record = {
        "epoch": state.epoch,
        "train_loss": metrics["train_loss"],
        "train_acc": metrics["train_acc"],
        **val_metrics,
        "lr": lr,
        "images_per_s": metrics["images_per_s"],
        "train_s": metrics["train_s"],
        "epoch_s": time.perf_counter() - start,
    }
    state.history.append(record)
    return record


EpochCallback = Callable[[Record, TrainingState], None]


def fit(
    state: TrainingState,
    train: Split,
    val: Split,
    config: Config,
    device: torch.device,
    on_epoch: EpochCallback,
    on_batch: BatchCallback | None = None,
) -> TrainingState:
    """Run the remaining epochs; `on_epoch(record, state)` persists or reports each one."""
    while state.epoch < config.train.epochs:
        record = run_epoch(state, train, val, config, device, on_batch)
        on_epoch(record, state)
    return state


def to_device(split: Split, device: torch.device) -> Split:
    """Data lives on the training device for the whole run (airbench): no loader workers."""
    return Split(split.x.to(device), split.y.to(device))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
