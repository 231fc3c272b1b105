"""`--backend torch`: eager PyTorch through the Predictor every other command uses, on the CPU
or on the replica's GPU."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from modresnet.checkpoint import LoadedModel
from modresnet.config import Config
from modresnet.device import inference_precision
from modresnet.inference import Predictor


class NoGpu(RuntimeError):
    """A GPU replica whose process sees no CUDA device."""


def gpu_config(config: Config) -> Config:
    """The checkpoint's config as a GPU replica runs it: channels_last, and the precision the
    GPU computes fastest in (`auto`: bf16 autocast at compute capability 8.0+, else fp16),
    whatever precision it was trained in."""
    train = config.train.model_copy(update={"channels_last": True, "precision": "auto"})
    return config.model_copy(update={"train": train})


class TorchBackend:
    name = "torch"

    def __init__(self, loaded: LoadedModel, device: str = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise NoGpu(
                    "gpus_per_replica is set but this replica sees no CUDA GPU "
                    f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}); "
                    "start Ray on a node with one (`ray start --num-gpus N`)"
                )
            loaded = dataclasses.replace(loaded, config=gpu_config(loaded.config))
        self.predictor = Predictor(loaded, device=self.device)
        if self.device.type == "cuda":
            self.predictor.model.to(memory_format=torch.channels_last)
        self.precision = inference_precision(loaded.config, self.device).name

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.predictor.probabilities(images).numpy()
