"""`--backend onnx` and `--backend int8`: ONNX Runtime (CPU) on a graph derived from the
checkpoint, loaded from the graph cache (graph_cache.py). onnx exports on a miss, and instead of
a cached graph that does not check out; int8 only loads what `python -m serve.quantize RUN`
made, and an int8 graph that is missing or does not check out is an error naming that command.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import torch

from modresnet.checkpoint import LoadedModel
from serve.backends.export import export_onnx
from serve.backends.graph_cache import (
    GraphError,
    derived_dir,
    load_graph,
    sidecar_path,
    store_graph,
)

log = logging.getLogger(__name__)


def cached_onnx(loaded: LoadedModel) -> tuple[bytes, bool]:
    """(ONNX bytes, whether they came from the cache); exports and caches on a miss, and
    instead of a cached graph that does not check out."""
    try:
        found = load_graph(loaded, "onnx")
    except GraphError as err:
        log.warning("%s; exporting the ONNX graph again", err)
        found = None
    if found is not None:
        return found[0], True
    data = export_onnx(loaded)
    try:
        store_graph(loaded, "onnx", data)
    except OSError as err:
        log.warning(
            "cannot cache the ONNX export in %s (%s); every replica start will export again",
            derived_dir(loaded),
            err,
        )
    return data, False


def session(data: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session of the graph `data` with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class OnnxBackend:
    name = "onnx"

    def __init__(self, loaded: LoadedModel, threads: int = 1) -> None:
        start = time.perf_counter()
        data, self.cached = cached_onnx(loaded)
        self.session = session(data, threads)
        self.export_s = time.perf_counter() - start
        self._lock = threading.Lock()

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(images.numpy(), dtype=np.uint8)
        with self._lock:
            return self.session.run(["probabilities"], {"input": x})[0].astype(np.float32)


class Int8Backend(OnnxBackend):
    """The int8 model `python -m serve.quantize RUN` made (static quantization calibrated on
    the validation split; its accuracy report is in its sidecar)."""

    name = "int8"

    def __init__(self, loaded: LoadedModel, threads: int = 1) -> None:
        start = time.perf_counter()
        try:
            found = load_graph(loaded, "int8")
        except GraphError as err:
            raise GraphError(
                f"--backend int8: {err}. Make it again with `python -m serve.quantize "
                f"{loaded.path}`, or serve with --backend onnx"
            ) from None
        if found is None:
            raise FileNotFoundError(
                f"--backend int8: no int8 model for this checkpoint at "
                f"{sidecar_path(loaded, 'int8')}. Make it once with `python -m serve.quantize "
                f"{loaded.path}` (calibrates on the validation split, prints the accuracy drop) "
                f"on a node whose $MODRESNET_CACHE the replicas read, or serve with --backend onnx"
            )
        data, meta = found
        self.session = session(data, threads)
        self.export_s = time.perf_counter() - start
        self.cached = True
        self.report = meta.get("report", {})
        self._lock = threading.Lock()
