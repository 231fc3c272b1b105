"""Class probabilities from a checkpoint: one path for `predict`, `evaluate` and Serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from modresnet.checkpoint import LoadedModel, load_model
from modresnet.engine import predict_logits


def top_k(probabilities: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most probable classes of each row (k clamped to 1..classes) as (probabilities,
    class indices). A stable sort: ties go to the lower class index, so `predict` and Serve
    list tied classes in the same order."""
    k = max(1, min(k, probabilities.shape[1]))
    order = torch.sort(probabilities, dim=1, descending=True, stable=True).indices[:, :k]
    return probabilities.gather(1, order), order


@dataclass(frozen=True)
class Prediction:
    label: str
    probability: float


class Predictor:
    def __init__(
        self, loaded: LoadedModel, device: str | torch.device = "cpu", tta: bool = False
    ) -> None:
        self.loaded = loaded
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device)
        self.tta = tta

    @classmethod
    def from_path(
        cls, path: str | Path, device: str | torch.device = "cpu", tta: bool = False
    ) -> Predictor:
        return cls(load_model(path), device=device, tta=tta)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.loaded.classes

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 3 x 32 x 32 -> float32 N x classes, on the CPU."""
        logits = predict_logits(self.model, images, self.loaded.config, self.device, self.tta)
        return torch.softmax(logits.float(), dim=1).cpu()

    def top_k(self, probabilities: torch.Tensor, k: int = 5) -> list[list[Prediction]]:
        values, indices = top_k(probabilities, k)
        return [
            [Prediction(self.classes[i], float(p)) for p, i in zip(row_p, row_i, strict=True)]
            for row_p, row_i in zip(values.tolist(), indices.tolist(), strict=True)
        ]
