"""The optimizer and learning-rate schedule a config asks for, scaled to the workers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from modresnet.config import Config


def scaled_lr(config: Config, world_size: int) -> float:
    """optim.lr is tuned for train.batch_size on one worker; the global batch grows with the
    workers, and the lr follows by train.lr_scaling (Goyal et al.'s linear rule by default)."""
    factor = {"linear": world_size, "sqrt": math.sqrt(world_size), "none": 1}
    return config.optim.lr * factor[config.train.lr_scaling]


def param_groups(config: Config, model: nn.Module) -> list[dict[str, Any]]:
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
        return torch.optim.SGD(
            groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=o.betas, weight_decay=o.weight_decay)


def one_cycle(
    total: int, warmup_fraction: float, final_fraction: float, start_fraction: float = 0.04
) -> Callable[[int], float]:
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


def build_scheduler(
    config: Config, optimizer: torch.optim.Optimizer, steps: int
) -> LRScheduler | None:
    """None for schedule.name constant; plateau steps per epoch, the others per batch."""
    s, total = config.schedule, config.train.epochs * steps
    peak = optimizer.param_groups[0]["lr"]
    if s.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=s.plateau_factor, patience=s.plateau_patience
        )
    if s.name == "onecycle":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, one_cycle(total, s.warmup_fraction, s.final_lr_fraction)
        )
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(total, 1), eta_min=peak * s.final_lr_fraction
        )
    return None
