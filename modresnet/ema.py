"""An exponential moving average of the weights that is safe to evaluate.

Two things broke the plain `AveragedModel` EMA this replaces (the `fast` preset's evaluated
model fell to chance while the live one trained to 99.7 %):

- No warm-up: at decay 0.999 the random initial weights still make up 0.999**750 = 47 % of
  the average after 750 steps. Like timm and airbench, the decay ramps up as
  min(decay, (1 + t) / (10 + t)), so early averages follow the live weights.
- Averaged BatchNorm statistics: the running mean/variance averaged from the live model
  describe the live weights, not the averaged ones (a blend of rotating, scale-invariant
  conv filters has a smaller norm), so the EMA's activations were normalized by the wrong
  statistics. `calibrate` recomputes them for the averaged weights, as SWA's `update_bn`
  does, before every evaluation.

The update is one fused `_foreach_lerp_` and keeps its step count in Python, so it never
waits on the GPU (`AveragedModel` compared a device tensor on every step). With `every` = k
it runs on every k-th step only, at decay**k (airbench's cadence): the same horizon for a
k-th of the work.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float, every: int = 1) -> None:
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.decay = decay
        self.every = every
        self.updates = 0  # training steps seen
        self._ema: list[torch.Tensor] = list(self.module.parameters())
        self._live: tuple[nn.Module, list[torch.Tensor]] | None = None

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        """One training step of `live` (the same module every step)."""
        self.updates += 1
        if self.updates % self.every:
            return
        if self._live is None or self._live[0] is not live:
            self._live = (live, [p.detach() for p in live.parameters()])
        torch._foreach_lerp_(self._ema, self._live[1], 1.0 - self.current_decay() ** self.every)

    @torch.no_grad()
    def calibrate(self, batches: Iterable[torch.Tensor]) -> None:
        """BatchNorm statistics of the averaged weights: a cumulative mean over `batches`."""
        norms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        was_training = self.module.training
        self.module.train()
        for x in batches:
            self.module(x)
        self.module.train(was_training)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
