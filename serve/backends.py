"""Inference backends for the Serve replicas: eager torch (the Predictor every other command
uses) or ONNX Runtime on a graph exported from the same checkpoint.

The export (2-10 s) happens once per checkpoint, not per replica start: the graph is cached
beside the checkpoint as `onnx/<key>.onnx`, the key a sha256 over the weights' sha256, the
model config, the normalization and the exporter version (`onnx_cache_path`). A replica
that finds it loads it in milliseconds; a read-only checkpoint folder just means exporting.

Both take uint8 N x 3 x 32 x 32 and return float32 N x classes probabilities, and both put
normalization inside, so the HTTP layer never sees model details. Measured on this 2-core CPU
box with one thread per replica (tests/benchmarks/serve_backends.py, README "Measured"):
ONNX Runtime is faster or on par at the small batches a server sees, so it is the CPU default.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from modresnet.augment import normalize, to_float
from modresnet.checkpoint import LoadedModel
from modresnet.inference import Predictor

BACKENDS = ("onnx", "torch", "int8")


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
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            verbose=False,
            input_names=["input"],
            output_names=["probabilities"],
            dynamic_shapes={"x": {0: batch}},
        )
    assert program is not None  # dynamo=True always returns a program
    return program.model_proto.SerializeToString()


EXPORT_VERSION = 1  # bump when export_onnx changes what it writes
log = logging.getLogger(__name__)


def onnx_cache_path(loaded: LoadedModel) -> Path:
    key = hashlib.sha256(
        json.dumps(
            {
                "weights_sha256": loaded.sha256,
                "model": loaded.config.to_dict()["model"],
                "mean": list(loaded.config.data.mean),
                "std": list(loaded.config.data.std),
                "export": EXPORT_VERSION,
                "torch": torch.__version__.split("+")[0],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    return Path(loaded.path) / "onnx" / f"{key}.onnx"


def cached_onnx(loaded: LoadedModel) -> tuple[bytes, bool]:
    """(ONNX bytes, whether they came from the cache); exports and caches on a miss."""
    path = onnx_cache_path(loaded)
    try:
        return path.read_bytes(), True
    except OSError:
        pass
    data = export_onnx(loaded)
    try:  # atomic: replicas starting together each write a whole file, the last one wins
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        log.warning(
            "cannot cache the ONNX export at %s (%s); every replica start will export again",
            path,
            err,
        )
    return data, False


class OnnxBackend:
    name = "onnx"

    def __init__(self, loaded: LoadedModel, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        start = time.perf_counter()
        data, self.cached = cached_onnx(loaded)
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception:  # a damaged cache file: export afresh, overwrite it
            if not self.cached:
                raise
            onnx_cache_path(loaded).unlink(missing_ok=True)
            data, self.cached = cached_onnx(loaded)
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.export_s = time.perf_counter() - start
        self._lock = threading.Lock()

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(images.numpy(), dtype=np.uint8)
        with self._lock:
            return self.session.run(["probabilities"], {"input": x})[0].astype(np.float32)


class Int8Backend(OnnxBackend):
    """The int8 model `python -m serve.quantize RUN` made (static quantization calibrated on
    the validation split; its accuracy report lies beside it)."""

    name = "int8"

    def __init__(self, loaded: LoadedModel, threads: int = 1) -> None:
        import onnxruntime as ort

        from serve.quantize import int8_paths

        path, report = int8_paths(loaded)
        if not path.exists():
            raise FileNotFoundError(
                f"--backend int8: no int8 model for this checkpoint at {path}. Make it once with "
                f"`python -m serve.quantize {loaded.path}` (calibrates on the validation split, "
                f"prints the accuracy drop), or serve with --backend onnx"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        start = time.perf_counter()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.export_s = time.perf_counter() - start
        self.cached = True
        self.report = json.loads(report.read_text()) if report.exists() else {}
        self._lock = threading.Lock()


def make_backend(name: str, loaded: LoadedModel, threads: int = 1) -> Backend:
    if name == "torch":
        return TorchBackend(loaded)
    if name == "onnx":
        return OnnxBackend(loaded, threads)
    if name == "int8":
        return Int8Backend(loaded, threads)
    raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}; got {name!r}")
