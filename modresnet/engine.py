"""The one training engine: train one epoch, evaluate, and the epoch loop around them.

The local CLI, Ray Train workers and Tune trials all call `fit`; they differ only in the
`on_epoch` callback (write a run directory, or `ray.train.report`, or `tune.report`).
Randomness is derived from (seed, epoch, rank), so a run resumed at epoch k draws the same
shuffles and augmentations as one that never stopped. Data-parallel runs shard each
epoch's permutation by rank and all-reduce the metrics through torch.distributed.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from modresnet.augment import augment, normalize, to_float
from modresnet.config import Config
from modresnet.data import Split
from modresnet.ema import WeightEMA
from modresnet.errors import UserError

# (step, steps, loss): the loss stays a device tensor; reading it is a host sync, so a
# progress bar should do that rarely (the CLI does it at most a few times a second).
BatchCallback = Callable[[int, int, torch.Tensor], None]


class DeviceError(UserError, ValueError):
    """The device or precision a user asked for is not available here."""


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.device: 'cuda' was asked for but no CUDA GPU is visible; "
                          "use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """What train.precision resolves to on one device."""

    name: str  # fp32 | bf16 | fp16
    dtype: torch.dtype | None  # the autocast dtype; None runs in fp32
    scaler: bool  # fp16 needs loss scaling (GradScaler) to keep small gradients


FP32 = Precision("fp32", None, False)


def select_precision(requested: str, device_type: str,
                     capability: tuple[int, int] | None = None) -> Precision:
    """bf16 autocast where the GPU computes in bf16 (compute capability >= 8.0: A100, H100,
    L4...), fp16 with a GradScaler on older GPUs (T4, V100: no bf16 convolutions), fp32 on
    the CPU (no autocast there: this CPU has no native bf16 and ran slower with it)."""
    if device_type != "cuda":
        if requested in ("auto", "fp32"):
            return FP32
        raise DeviceError(f"train.precision: {requested} runs only on a CUDA GPU; use auto or "
                          f"fp32 on the CPU")
    bf16_ok = capability is not None and capability >= (8, 0)
    if requested == "auto":
        requested = "bf16" if bf16_ok else "fp16"
    if requested == "bf16" and not bf16_ok:
        raise DeviceError(f"train.precision: bf16 needs compute capability 8.0 or newer; this "
                          f"GPU has {capability}; use auto or fp16")
    return {"fp32": FP32, "bf16": Precision("bf16", torch.bfloat16, False),
            "fp16": Precision("fp16", torch.float16, True)}[requested]


def device_precision(requested: str, device: torch.device) -> Precision:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return select_precision(requested, device.type, capability)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)


def scaled_lr(config: Config, world_size: int) -> float:
    """optim.lr is tuned for train.batch_size on one worker; the global batch grows with the
    workers, and the lr follows by train.lr_scaling (Goyal et al.'s linear rule by default)."""
    factor = {"linear": world_size, "sqrt": math.sqrt(world_size), "none": 1}[config.train.lr_scaling]
    return config.optim.lr * factor


def steps_per_epoch(train_size: int, batch_size: int, world_size: int) -> int:
    per_rank = train_size // world_size
    full, rest = divmod(per_rank, batch_size)
    return full + (1 if rest >= 2 else 0)  # BatchNorm cannot train on a batch of one


def param_groups(config: Config, model: nn.Module) -> list[dict]:
    """One group, or two with optim.norm_bias_decay off: BatchNorm scales and biases are
    not what weight decay should shrink (Page, airbench), the conv and linear weights are."""
    if config.optim.norm_bias_decay:
        return [{"params": list(model.parameters())}]
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


def build_optimizer(config: Config, model: nn.Module, world_size: int) -> torch.optim.Optimizer:
    o, lr = config.optim, scaled_lr(config, world_size)
    groups = param_groups(config, model)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum,
                               nesterov=o.nesterov, weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=o.betas, weight_decay=o.weight_decay)


def one_cycle(total: int, warmup_fraction: float, final_fraction: float,
              start_fraction: float = 0.04) -> Callable[[int], float]:
    """Linear warm-up from start_fraction to 1, then linear decay to final_fraction (the
    piecewise-linear one-cycle of Page and airbench). Written out because torch's OneCycleLR
    divides by zero when warm-up spans exactly one step, as on small subsets."""
    warm = max(1, round(warmup_fraction * total))
    decay = max(1, total - warm)

    def factor(step: int) -> float:
        if step < warm:
            return start_fraction + (1 - start_fraction) * step / warm
        return max(final_fraction, 1 - (1 - final_fraction) * (step - warm) / decay)

    return factor


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer, steps: int):
    s, total = config.schedule, config.train.epochs * steps
    peak = optimizer.param_groups[0]["lr"]
    if s.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=s.plateau_factor, patience=s.plateau_patience)
    if s.name == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, one_cycle(total, s.warmup_fraction, s.final_lr_fraction))
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(total, 1), eta_min=peak * s.final_lr_fraction)
    return None


@dataclass
class TrainingState:
    """Everything a resumed run needs besides the config and the data."""

    model: nn.Module  # may be wrapped in DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    ema: WeightEMA | None
    precision: Precision = FP32
    scaler: torch.amp.GradScaler | None = None
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # torch.compile'd model
    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)
    use_ema: bool = True  # the last validation found the EMA at least as good as the live

    def eval_model(self) -> nn.Module:
        """The weights we evaluate and export: the EMA, unless the last validation found the
        live weights better (then those: a user never gets the worse of the two)."""
        if self.ema is not None and self.use_ema:
            return self.ema.module
        return unwrap(self.model)


def build_state(config: Config, model: nn.Module, train_size: int,
                wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> TrainingState:
    """Optimizer, schedule, EMA and precision for `model` (already on its device). `wrap`
    is where a data-parallel caller puts DDP, after the EMA copy is taken from the plain
    model."""
    _, world = rank_and_world()
    device = next(model.parameters()).device
    precision = device_precision(config.train.precision, device)
    ema = WeightEMA(model, config.train.ema_decay) if config.train.ema_decay else None
    wrapped = wrap(model)
    optimizer = build_optimizer(config, wrapped, world)
    steps = steps_per_epoch(train_size, config.train.batch_size, world)
    scaler = torch.amp.GradScaler(device.type) if precision.scaler else None
    forward = torch.compile(wrapped) if config.train.compile else None
    return TrainingState(wrapped, optimizer, build_scheduler(config, optimizer, steps), ema,
                         precision, scaler, forward)


def _autocast(precision: Precision, device: torch.device):
    if precision.dtype is not None:
        return torch.autocast(device.type, dtype=precision.dtype)
    return contextlib.nullcontext()


def inference_precision(config: Config, device: torch.device) -> Precision:
    """Autocast for evaluation: the training precision on a GPU that has it (auto picks
    bf16 or fp16), fp32 on the CPU whatever the checkpoint was trained with."""
    if device.type != "cuda":
        return FP32
    requested = "fp32" if config.train.precision == "fp32" else "auto"
    return device_precision(requested, device)


def _prepare(x: torch.Tensor, config: Config) -> torch.Tensor:
    x = normalize(x, config.data.mean, config.data.std)
    if config.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    _, world = rank_and_world()
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def epoch_permutation(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of a per-epoch shuffle; every rank draws the same permutation."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = n // world
    return perm[: per_rank * world][rank::world]


def train_one_epoch(state: TrainingState, train: Split, config: Config, device: torch.device,
                    on_batch: BatchCallback | None = None) -> dict[str, float]:
    rank, world = rank_and_world()
    epoch, tc = state.epoch, config.train
    model = state.model
    model.train()
    perm = epoch_permutation(len(train), tc.seed, epoch, rank, world).to(device)
    steps = steps_per_epoch(len(train), tc.batch_size, world)
    g = torch.Generator(device=device).manual_seed(tc.seed * 7919 + epoch * 104_729 + rank)
    per_step_schedule = state.scheduler is not None and config.schedule.name != "plateau"
    forward = state.forward or model
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    start = time.perf_counter()
    for step in range(steps):  # no host sync inside: metrics accumulate on the device
        idx = perm[step * tc.batch_size: (step + 1) * tc.batch_size]
        x = augment(train.x[idx], config.augment, g, config.data.mean, config.data.std)
        if config.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = train.y[idx]
        with _autocast(state.precision, device):
            logits = forward(x)
            loss = F.cross_entropy(logits, y, label_smoothing=tc.label_smoothing)
        state.optimizer.zero_grad(set_to_none=True)
        if state.scaler is not None:
            state.scaler.scale(loss).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            loss.backward()
            state.optimizer.step()
        if per_step_schedule:
            state.scheduler.step()
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
    total_loss, total_correct, total_seen = _all_reduce(
        [float(loss_sum), float(correct), float(seen)], device)
    return {
        "train_loss": total_loss / max(total_seen, 1),
        "train_acc": total_correct / max(total_seen, 1),
        "images_per_s": total_seen / seconds if seconds > 0 else 0.0,
        "train_images": int(total_seen),
    }


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, config: Config, device: torch.device,
                   tta: bool = False) -> torch.Tensor:
    """Logits for a uint8 batch of any length, in eval mode, optionally averaged with the
    horizontal mirror (flip test-time augmentation)."""
    model.eval()
    precision = inference_precision(config, device)
    outs = []
    for i in range(0, len(x), config.train.eval_batch_size):
        xb = _prepare(to_float(x[i: i + config.train.eval_batch_size].to(device)), config)
        with _autocast(precision, device):
            logits = model(xb).float()
            if tta:
                logits = (logits + model(xb.flip(3)).float()) / 2
        outs.append(logits)
    if not outs:
        return torch.zeros(0, unwrap(model).linear.out_features, device=device)
    return torch.cat(outs)


def evaluate(model: nn.Module, split: Split, config: Config, device: torch.device,
             tta: bool = False) -> dict[str, float]:
    """Loss and accuracy on `split`, sharded over the data-parallel ranks if any."""
    rank, world = rank_and_world()
    n = len(split)
    lo, hi = n * rank // world, n * (rank + 1) // world
    logits = predict_logits(model, split.x[lo:hi], config, device, tta)
    y = split.y[lo:hi].to(device)
    loss = float(F.cross_entropy(logits, y, reduction="sum")) if len(y) else 0.0
    correct = float((logits.argmax(1) == y).sum())
    loss, correct, count = _all_reduce([loss, correct, float(hi - lo)], device)
    return {"loss": loss / max(count, 1), "acc": correct / max(count, 1), "n": int(count)}


def current_lr(state: TrainingState) -> float:
    return float(state.optimizer.param_groups[0]["lr"])


def calibration_batches(train: Split, config: Config, device: torch.device, epoch: int):
    """train.ema_bn_images augmented training images, the same on every rank and on a
    resumed run, in training-sized batches: what the EMA's BatchNorm statistics are
    recomputed from."""
    tc = config.train
    n = min(len(train), tc.ema_bn_images)
    g = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch + 500_009)
    idx = torch.randperm(len(train), generator=g)[:n].to(device)
    ga = torch.Generator(device=device).manual_seed(tc.seed * 7919 + epoch + 500_009)
    for i in range(0, n, tc.batch_size):
        x = augment(train.x[idx[i: i + tc.batch_size]], config.augment, ga, config.data.mean,
                    config.data.std)
        yield x.contiguous(memory_format=torch.channels_last) if tc.channels_last else x


def validate(state: TrainingState, train: Split, val: Split, config: Config,
             device: torch.device) -> dict[str, float]:
    """Validation of the live weights and, with EMA on, of the EMA after recomputing its
    BatchNorm statistics; the better of the two becomes the evaluated model."""
    tta = config.train.tta
    live = evaluate(unwrap(state.model), val, config, device, tta=tta)
    if state.ema is None:
        return {"val_loss": live["loss"], "val_acc": live["acc"]}
    with _autocast(state.precision, device):
        state.ema.calibrate(calibration_batches(train, config, device, state.epoch))
    ema = evaluate(state.ema.module, val, config, device, tta=tta)
    state.use_ema = ema["acc"] >= live["acc"]
    chosen = ema if state.use_ema else live
    return {"val_loss": chosen["loss"], "val_acc": chosen["acc"], "val_acc_live": live["acc"],
            "val_acc_ema": ema["acc"], "weights": "ema" if state.use_ema else "live"}


def run_epoch(state: TrainingState, train: Split, val: Split, config: Config,
              device: torch.device, on_batch: BatchCallback | None = None) -> dict:
    """One epoch of training plus validation; steps the plateau schedule; advances state."""
    start = time.perf_counter()
    lr = current_lr(state)
    metrics = train_one_epoch(state, train, config, device, on_batch)
    val_metrics = validate(state, train, val, config, device)
    if state.scheduler is not None and config.schedule.name == "plateau":
        state.scheduler.step(val_metrics["val_loss"])
    state.epoch += 1
    record = {
        "epoch": state.epoch,
        "train_loss": metrics["train_loss"],
        "train_acc": metrics["train_acc"],
        **val_metrics,
        "lr": lr,
        "images_per_s": metrics["images_per_s"],
        "epoch_s": time.perf_counter() - start,
    }
    state.history.append(record)
    return record


EpochCallback = Callable[[dict, TrainingState], None]


def fit(state: TrainingState, train: Split, val: Split, config: Config, device: torch.device,
        on_epoch: EpochCallback, on_batch: BatchCallback | None = None) -> TrainingState:
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
