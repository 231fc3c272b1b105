"""`--backend torch`: eager PyTorch through the Predictor every other command uses."""

from __future__ import annotations

import numpy as np
import torch

from modresnet.checkpoint import LoadedModel
from modresnet.inference import Predictor


class TorchBackend:
    name = "torch"

    def __init__(self, loaded: LoadedModel) -> None:
        self.predictor = Predictor(loaded, device="cpu")

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.predictor.probabilities(images).numpy()
