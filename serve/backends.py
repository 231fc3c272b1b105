"""Inference backends for the Serve replicas: eager torch (the Predictor every other command
uses) or ONNX Runtime on a graph exported from the same checkpoint at deploy time.

Both take uint8 N x 3 x 32 x 32 and return float32 N x classes probabilities, and both put
normalization inside, so the HTTP layer never sees model details. Measured on this 2-core CPU
box with one thread per replica (tests/benchmarks/serve_backends.py, README "Measured"):
ONNX Runtime is faster or on par at the small batches a server sees, so it is the CPU default.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import numpy as np
import torch

from modresnet.augment import normalize, to_float
from modresnet.checkpoint import LoadedModel
from modresnet.inference import Predictor

BACKENDS = ("onnx", "torch")
DEFAULT_BACKEND = "onnx"


class Backend(Protocol):
    name: str

    def probabilities(self, images: torch.Tensor) -> np.ndarray: ...


class TorchBackend:
    name = "torch"

    def __init__(self, loaded: LoadedModel) -> None:
        self.predictor = Predictor(loaded, device="cpu")

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.predictor.probabilities(images).numpy()


class _Exportable(torch.nn.Module):
    """uint8 images -> probabilities, the whole Predictor path as one graph."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.model = loaded.model.eval()
        self.mean = tuple(loaded.config.data.mean)
        self.std = tuple(loaded.config.data.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(normalize(to_float(x), self.mean, self.std)).float(), dim=1)


def export_onnx(loaded: LoadedModel) -> bytes:
    """The checkpoint as an ONNX model (input `input` uint8 [N,3,32,32], output `probabilities`)."""
    import warnings

    module = _Exportable(loaded).eval()
    example = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (example,), None, dynamo=True, verbose=False,
                                    input_names=["input"], output_names=["probabilities"],
                                    dynamic_shapes={"x": {0: batch}})
    return program.model_proto.SerializeToString()


class OnnxBackend:
    name = "onnx"

    def __init__(self, loaded: LoadedModel, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        start = time.perf_counter()
        self.session = ort.InferenceSession(export_onnx(loaded), options,
                                            providers=["CPUExecutionProvider"])
        self.export_s = time.perf_counter() - start
        self._lock = threading.Lock()

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(images.numpy(), dtype=np.uint8)
        with self._lock:
            return self.session.run(["probabilities"], {"input": x})[0].astype(np.float32)


def make_backend(name: str, loaded: LoadedModel, threads: int = 1) -> Backend:
    if name == "torch":
        return TorchBackend(loaded)
    if name == "onnx":
        return OnnxBackend(loaded, threads)
    raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}; got {name!r}")
