"""Inference backends for the Serve replicas: eager torch (the Predictor every other command
uses) or ONNX Runtime on a graph exported from the same checkpoint.

The export (2-10 s) happens once per checkpoint and node, not per replica start. Derived graphs
(the ONNX export; the int8 model of serve/quantize.py) live in a cache keyed by the weights'
sha256, `$MODRESNET_CACHE/derived/<sha256>/` (default ~/.cache/modresnet), so a checkpoint
folder is never written after training. Each graph is stored under its own content hash,
`<kind>-<key>-<graph sha256>.onnx`, then its sidecar `<kind>-<key>.json` (the weights' sha256,
the graph's sha256, the int8 accuracy report) replaces the previous one: the sidecar is the commit
point, so a reader meets a complete old pair or a complete new one. `key` covers what else shapes
the graph (model config, normalization, exporter and torch versions). Loading checks both
sha256 on the very bytes it hands to ONNX Runtime; a mismatch re-exports (onnx) or is an error
naming `serve.quantize` (int8), never a silent use.

Both take uint8 N x 3 x 32 x 32 and return float32 N x classes probabilities, and both put
normalization inside, so the HTTP layer never sees model details. Measured on this 2-core CPU
box with one thread per replica (tests/benchmarks/serve_backends.py, docs/benchmarks.md):
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
from typing import Any, Protocol

import numpy as np
import torch

from modresnet import names
from modresnet.augment import normalize, to_float
from modresnet.checkpoint import LoadedModel
from modresnet.errors import UserError
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
GRAPH_FORMAT = "modresnet-derived-graph"
log = logging.getLogger(__name__)


class GraphError(UserError, ValueError):
    """A cached graph that does not match its sidecar or the weights it claims to come from."""


def cache_home() -> Path:
    """$MODRESNET_CACHE, else ~/.cache/modresnet."""
    return Path(os.environ.get("MODRESNET_CACHE") or Path.home() / ".cache" / "modresnet")


def derived_dir(loaded: LoadedModel) -> Path:
    """The folder of the graphs derived from these weights."""
    sha = names.sha256(loaded.sha256, f"{loaded.path / 'model.json'} sha256")
    return cache_home() / "derived" / sha


def graph_key(loaded: LoadedModel) -> str:
    """What besides the weights shapes an exported graph, hashed."""
    return hashlib.sha256(
        json.dumps(
            {
                "model": loaded.config.to_dict()["model"],
                "mean": list(loaded.config.data.mean),
                "std": list(loaded.config.data.std),
                "export": EXPORT_VERSION,
                "torch": torch.__version__.split("+")[0],
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]


def sidecar_path(loaded: LoadedModel, kind: str) -> Path:
    return derived_dir(loaded) / f"{kind}-{graph_key(loaded)}.json"


def _graph_path(loaded: LoadedModel, kind: str, sha: str) -> Path:
    return derived_dir(loaded) / f"{kind}-{graph_key(loaded)}-{sha}.onnx"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `path` so no reader ever sees it torn: a temp file of a unique name beside it
    (replicas starting together write the same graph at once), fsync, os.replace, fsync the
    folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _named_sha(sidecar: Path) -> str | None:
    """The graph sha256 a sidecar names, None if it names none (missing, damaged)."""
    try:
        value = json.loads(sidecar.read_bytes()).get("sha256")
        return names.sha256(value, str(sidecar))
    except (OSError, ValueError, AttributeError):
        return None


def store_graph(
    loaded: LoadedModel, kind: str, data: bytes, extra: dict[str, Any] | None = None
) -> Path:
    """Cache `data` as the `kind` graph of these weights; returns the graph's path. The graph
    file goes first, then the sidecar that names it; the graph the old sidecar named goes last
    (a reader that still holds the old sidecar retries)."""
    folder = derived_dir(loaded)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    sha = hashlib.sha256(data).hexdigest()
    graph, sidecar = _graph_path(loaded, kind, sha), sidecar_path(loaded, kind)
    for path in (graph, sidecar):
        names.inside(cache_home(), path, f"{kind} graph")
    previous = _named_sha(sidecar)
    meta = {
        "format": GRAPH_FORMAT,
        "kind": kind,
        "key": graph_key(loaded),
        "weights_sha256": loaded.sha256,
        "sha256": sha,
        "bytes": len(data),
        **(extra or {}),
    }
    write_atomic(graph, data)
    write_atomic(sidecar, json.dumps(meta, indent=1).encode())
    if previous is not None and previous != sha:
        _graph_path(loaded, kind, previous).unlink(missing_ok=True)
    return graph


def load_graph(loaded: LoadedModel, kind: str) -> tuple[bytes, dict[str, Any]] | None:
    """The verified bytes and sidecar of the cached `kind` graph; None if there is none.
    Raises GraphError for a sidecar or graph that does not check out."""
    sidecar = sidecar_path(loaded, kind)
    for _ in range(3):  # a rewrite removes the graph an older sidecar named: read again
        try:
            meta = json.loads(sidecar.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise GraphError(f"{sidecar}: unreadable ({err})") from None
        expected = {
            "format": GRAPH_FORMAT,
            "kind": kind,
            "key": graph_key(loaded),
            "weights_sha256": loaded.sha256,
        }
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
            raise GraphError(f"{sidecar}: not the sidecar of a {kind} graph of these weights")
        try:
            sha = names.sha256(meta.get("sha256"), f"{sidecar} sha256")
        except names.UnsafeNameError as err:
            raise GraphError(str(err)) from None
        graph = _graph_path(loaded, kind, sha)
        try:
            data = graph.read_bytes()
        except FileNotFoundError:
            continue
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha:
            raise GraphError(
                f"{graph}: sha256 {actual[:12]}... does not match the {sha[:12]}... in "
                f"{sidecar.name}; the file was changed or damaged after it was written"
            )
        return data, meta
    raise GraphError(f"{sidecar}: names {graph.name}, which is missing")


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


def _session(data: bytes, threads: int) -> Any:
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
        self.session = _session(data, threads)
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
        self.session = _session(data, threads)
        self.export_s = time.perf_counter() - start
        self.cached = True
        self.report = meta.get("report", {})
        self._lock = threading.Lock()


def make_backend(name: str, loaded: LoadedModel, threads: int = 1) -> Backend:
    if name == "torch":
        return TorchBackend(loaded)
    if name == "onnx":
        return OnnxBackend(loaded, threads)
    if name == "int8":
        return Int8Backend(loaded, threads)
    raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}; got {name!r}")
