"""The cache of graphs derived from a checkpoint (the ONNX export; the int8 model of
serve/quantize.py), keyed by the weights' sha256: `$MODRESNET_CACHE/derived/<sha256>/`
(default ~/.cache/modresnet), so a checkpoint folder is never written after training.

The export (2-10 s) happens once per checkpoint and node, not per replica start. Each graph is
stored under its own content hash, `<kind>-<key>-<graph sha256>.onnx`, then its sidecar
`<kind>-<key>.json` (the weights' sha256, the graph's sha256, the int8 accuracy report)
replaces the previous one: the sidecar is the commit point, so a reader meets a complete old
pair or a complete new one. `key` covers what else shapes the graph (model config,
normalization, exporter and torch versions). Loading checks both sha256 on the very bytes it
hands to ONNX Runtime; a mismatch is a GraphError, never a silent use.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from modresnet import names
from modresnet.checkpoint import LoadedModel
from modresnet.errors import UserError
from modresnet.files import atomic_write_bytes
from serve.backends.export import EXPORT_VERSION

GRAPH_FORMAT = "modresnet-derived-graph"


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
    (a reader that still holds the old sidecar retries). Replicas starting together may write
    the same graph at once: each write is atomic under a temp name of its own."""
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
    atomic_write_bytes(graph, data)
    atomic_write_bytes(sidecar, json.dumps(meta, indent=1).encode())
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
