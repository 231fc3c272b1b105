"""A per-layer table of the model (layer, output shape, parameters) with memory totals, in
the form of torchsummary's report that the paper shows as its Figure 2."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BYTES = 4  # float32


@dataclass(frozen=True)
class LayerRow:
    name: str
    output_shape: tuple[int, ...]
    params: int


@dataclass(frozen=True)
class Summary:
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    input_mb: float
    forward_backward_mb: float
    params_mb: float

    @property
    def total_mb(self) -> float:
        return self.input_mb + self.forward_backward_mb + self.params_mb


def summarize(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> Summary:
    rows: list[LayerRow] = []
    counts: dict[str, int] = {}
    hooks = []

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        kind = type(module).__name__
        counts[kind] = counts.get(kind, 0) + 1
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append(LayerRow(f"{kind}-{len(rows) + 1}", (-1, *output.shape[1:]), params))

    for module in model.modules():
        if not list(module.children()) and not isinstance(module, nn.Sequential):
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    activations = sum(torch.Size(r.output_shape[1:]).numel() for r in rows)
    mb = 1024**2
    return Summary(
        rows,
        total,
        trainable,
        torch.Size(input_size).numel() * BYTES / mb,
        2 * activations * BYTES / mb,
        total * BYTES / mb,
    )
