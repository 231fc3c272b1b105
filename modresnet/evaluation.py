"""The one test-set evaluation: what a finished run records in test.json and what
`modresnet evaluate` prints are the same numbers, scored as validation is (engine.score)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modresnet.checkpoint import LoadedModel
from modresnet.data import Split
from modresnet.engine import predict_logits, score


@dataclass(frozen=True)
class Evaluation:
    acc: float
    loss: float  # mean cross-entropy of the logits
    n: int
    tta: bool
    predictions: torch.Tensor  # the top-1 class of every image, on the CPU


def evaluate_checkpoint(
    loaded: LoadedModel, test: Split, device: torch.device, *, tta: bool
) -> Evaluation:
    """Score a loaded checkpoint on `test` (moves its model to `device`); `tta` averages each
    image's logits with its mirror's."""
    logits = predict_logits(loaded.model.to(device), test.x, loaded.config, device, tta)
    loss, correct = score(logits, test.y)
    n = len(test)
    return Evaluation(
        acc=correct / max(n, 1),
        loss=loss / max(n, 1),
        n=n,
        tta=tta,
        predictions=logits.argmax(1).cpu(),
    )
