"""The one test-set evaluation: what a finished run records in test.json (`finalize`) and
what `modresnet evaluate` prints are the same numbers, scored as validation is
(inference.score)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from modresnet import files
from modresnet.checkpoint import LoadedModel, load_model
from modresnet.data import Split
from modresnet.inference import predict_logits, score, views
from modresnet.rundir import RunDir


@dataclass(frozen=True)
class Evaluation:
    acc: float
    loss: float  # mean cross-entropy of the logits
    n: int
    tta: bool  # more than one view
    predictions: torch.Tensor  # the top-1 class of every image, on the CPU
    tta_views: int = 1


def split_md5(split: Split) -> str:
    """The test set's identity: md5 of the exact tensors scored, image bytes then labels.
    Two results compare (the registry's gate) only when they scored the same images."""
    digest = hashlib.md5()
    for tensor in (split.x, split.y):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def evaluate_checkpoint(
    loaded: LoadedModel, test: Split, device: torch.device, *, tta: bool | int
) -> Evaluation:
    """Score a loaded checkpoint on `test` (moves its model to `device`); `tta` averages each
    image's logits over that many views (True: with its mirror's; inference.views)."""
    n_views = views(tta)
    logits = predict_logits(loaded.model.to(device), test.x, loaded.config, device, n_views)
    loss, correct = score(logits, test.y)
    n = len(test)
    return Evaluation(
        acc=correct / max(n, 1),
        loss=loss / max(n, 1),
        n=n,
        tta=n_views > 1,
        predictions=logits.argmax(1).cpu(),
        tta_views=n_views,
    )


def finalize(
    run: RunDir, test: Split, classes: tuple[str, ...], device: torch.device
) -> dict[str, Any]:
    """Evaluate best/ once on the test set; write test.json (with best/'s sha256, so it
    names the weights it scored), curves.png and confusion.png. best/ is never rewritten."""
    from modresnet import plots  # matplotlib: only a finishing run draws

    loaded = load_model(run.best)
    scores = evaluate_checkpoint(loaded, test, device, tta=loaded.config.train.tta_views)
    acc = scores.acc
    matrix = plots.confusion_matrix(test.y, scores.predictions, len(classes))
    result = {
        "test_acc": acc,
        "test_loss": scores.loss,
        "n": scores.n,
        "test_md5": split_md5(test),
        "tta": scores.tta,
        "epoch": loaded.meta["epoch"],
        "val_acc": loaded.meta["metrics"].get("val_acc"),
        "sha256": loaded.sha256,
        "per_class_acc": {
            c: float(matrix[i, i] / max(1, int(matrix[i].sum()))) for i, c in enumerate(classes)
        },
    }
    files.atomic_write_text(run.test_file, json.dumps(result, indent=2))  # last: "finished"
    history = run.read_metrics()
    if history:
        plots.curves(history, run.path / "curves.png")
    plots.confusion(
        matrix,
        classes,
        run.path / "confusion.png",
        f"Test confusion, accuracy {100 * acc:.2f}% (n={len(test)})",
    )
    return result
