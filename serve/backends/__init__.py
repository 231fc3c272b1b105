"""The backend contract of a Serve replica, and the backends that implement it.

A backend is loaded once per replica from a checkpoint (`load_backend`: name, weights, intra-op
threads), then turns one batch of images into probabilities: uint8 N x 3 x 32 x 32 in, float32
N x classes out, normalization inside, so the HTTP layer never sees model details. That is all
a replica asks of it (LitServe's setup/predict, for one model).

* `torch` (torch_eager.py): the Predictor every other command uses, on the CPU or a GPU;
* `onnx` (onnx_runtime.py): ONNX Runtime on a graph exported from the same checkpoint, cached
  by the weights' sha256 (graph_cache.py); the CPU default;
* `int8` (onnx_runtime.py): the int8 graph `python -m serve.quantize RUN` made.

Measured on this 2-core CPU box with one thread per replica (tests/benchmarks/serve_backends.py,
docs/benchmarks.md): ONNX Runtime is faster or on par at the small batches a server sees.
"""

from __future__ import annotations

import typing
from typing import Protocol

import numpy as np
import torch

from modresnet.checkpoint import LoadedModel
from serve.args import BackendName
from serve.backends.onnx_runtime import Int8Backend, OnnxBackend
from serve.backends.torch_eager import TorchBackend


class Backend(Protocol):
    name: str

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """uint8 N x 3 x 32 x 32 -> float32 N x classes probabilities."""
        ...


def load_backend(name: str, loaded: LoadedModel, threads: int = 1, device: str = "cpu") -> Backend:
    """The backend `name` for these weights, ready to infer on `device` (cpu, or cuda: torch
    only) with `threads` intra-op threads (torch's are the process's: the replica sets them)."""
    if name == "torch":
        return TorchBackend(loaded, device)
    if device != "cpu":
        raise ValueError(f"backend {name} runs on the CPU only; the torch backend runs on {device}")
    if name == "onnx":
        return OnnxBackend(loaded, threads)
    if name == "int8":
        return Int8Backend(loaded, threads)
    names = ", ".join(typing.get_args(BackendName))
    raise ValueError(f"backend: must be one of {names}; got {name!r}")
