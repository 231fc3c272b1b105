"""The one inference path: logits of uint8 images in eval mode and their score, and class
probabilities from a checkpoint. Validation, `evaluate`, `predict` and Serve all use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from modresnet.augment import normalize, to_float
from modresnet.checkpoint import LoadedModel, load_model
from modresnet.config import TTA_VIEWS, Config
from modresnet.device import autocast, inference_precision
from modresnet.parallel import unwrap


def _prepare(x: torch.Tensor, config: Config) -> torch.Tensor:
    x = normalize(x, config.data.mean, config.data.std)
    if config.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def views(tta: bool | int) -> int:
    """The test-time views `tta` asks for: True is the mirror (2), False one view."""
    if isinstance(tta, bool):
        return 2 if tta else 1
    if tta not in TTA_VIEWS:
        raise ValueError(f"tta views must be one of {TTA_VIEWS}, got {tta}")
    return tta


def shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """`x` moved right by `pixels` (left if negative), the uncovered column mirrored in as
    training's reflect padding does: the translated views of 6-view TTA (airbench)."""
    padded = F.pad(x, (abs(pixels), abs(pixels), 0, 0), mode="reflect")
    width = x.shape[3]
    start = abs(pixels) - pixels
    return padded[..., start : start + width]


def tta_views(xb: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The `n` views of a normalized batch: itself; its mirror; and with 6 both of those
    shifted by +1 and -1 pixels."""
    base = [xb, xb.flip(3)][: min(n, 2)]
    if n == 6:
        base += [shift(v, px) for v in base for px in (1, -1)]
    return base


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    x: torch.Tensor,
    config: Config,
    device: torch.device,
    tta: bool | int = False,
) -> torch.Tensor:
    """Logits for a uint8 batch of any length, in eval mode, averaged over `tta` views
    (`views`: the image, its mirror, both shifted by one pixel either way)."""
    model.eval()
    n = views(tta)
    precision = inference_precision(config, device)
    outs = []
    for i in range(0, len(x), config.train.eval_batch_size):
        xb = _prepare(to_float(x[i : i + config.train.eval_batch_size].to(device)), config)
        with autocast(precision, device):
            logits = sum(model(v).float() for v in tta_views(xb, n)) / n
        outs.append(cast(torch.Tensor, logits))
    if not outs:
        head = cast(nn.Linear, unwrap(model).linear)
        return torch.zeros(0, head.out_features, device=device)
    return torch.cat(outs)


def score(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Summed cross-entropy and number of correct top-1 predictions: the one way every split
    (validation every epoch, the test set at the end) is scored."""
    y = y.to(logits.device)
    loss = float(F.cross_entropy(logits, y, reduction="sum")) if len(y) else 0.0
    return loss, float((logits.argmax(1) == y).sum())


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
