"""The data-parallel context a training step runs in: this process's rank and the world
size, the plain model under a DistributedDataParallel wrapper, and the all-reduce of metrics.
Without torch.distributed initialised, a run is rank 0 of a world of one."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model under a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)


def all_reduce(values: list[float], device: torch.device) -> list[float]:
    """Sums of `values` over every rank (the values themselves in a world of one)."""
    _, world = rank_and_world()
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
