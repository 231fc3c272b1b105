"""Derived graphs for the Serve replicas: the ONNX export and the int8 model, cached by the
weights' sha256 outside the checkpoint, verified on load, written atomically."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from modresnet import config as configs
from modresnet.checkpoint import load_model, save_model
from modresnet.model import build_model

pytest.importorskip("onnxruntime")
from serve.backends.export import export_onnx  # noqa: E402
from serve.backends.graph_cache import (  # noqa: E402
    GraphError,
    derived_dir,
    load_graph,
    sidecar_path,
    store_graph,
)
from serve.backends.onnx_runtime import Int8Backend, OnnxBackend  # noqa: E402
from serve.backends.torch_eager import TorchBackend  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CHECKPOINT_FILES = ["model.json", "model.safetensors"]


def _checkpoint(path, seed: int):
    cfg = configs.resolve("debug")
    torch.manual_seed(seed)
    save_model(path, build_model(cfg.model), cfg, CLASSES, 1, {})
    return load_model(path)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MODRESNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def loaded(tmp_path, cache):
    return _checkpoint(tmp_path / "ckpt", 0)


def _graph_file(loaded, kind: str):
    meta = json.loads(sidecar_path(loaded, kind).read_text())
    (path,) = [p for p in derived_dir(loaded).iterdir() if meta["sha256"] in p.name]
    return path


X = torch.randint(
    0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
)


def test_export_once_per_checkpoint_then_cached_outside_it(loaded, tmp_path, cache):
    sidecar = sidecar_path(loaded, "onnx")
    assert sidecar.parent == cache / "derived" / loaded.sha256 and not sidecar.exists()
    first = OnnxBackend(loaded)
    assert not first.cached and sidecar.exists()
    second = OnnxBackend(loaded)  # what every later replica start does
    print(f"export+load {first.export_s:.2f}s, cached load {second.export_s:.3f}s")
    assert second.cached and second.export_s < first.export_s / 3
    np.testing.assert_allclose(
        second.probabilities(X), TorchBackend(loaded).probabilities(X), atol=1e-5
    )
    meta = json.loads(sidecar.read_text())
    assert (
        meta["weights_sha256"] == loaded.sha256
        and meta["bytes"] == _graph_file(loaded, "onnx").stat().st_size
    )
    assert sorted(p.name for p in loaded.path.iterdir()) == CHECKPOINT_FILES  # never written
    other = _checkpoint(tmp_path / "other", 1)  # other weights: another folder
    assert derived_dir(other) != derived_dir(loaded) and load_graph(other, "onnx") is None


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The ONNX exports of the `loaded` weights and of other ones (exporting takes seconds)."""
    root = tmp_path_factory.mktemp("graphs")
    return export_onnx(_checkpoint(root / "a", 0)), export_onnx(_checkpoint(root / "b", 1))


def test_a_tampered_or_truncated_onnx_graph_is_rebuilt_not_used(loaded, graphs, caplog):
    good, wrong_model = graphs  # wrong_model: a valid graph of other weights
    store_graph(loaded, "onnx", good)
    graph, sidecar = _graph_file(loaded, "onnx"), sidecar_path(loaded, "onnx")
    meta = json.loads(sidecar.read_text())
    cases = {
        "other weights' graph": (lambda: graph.write_bytes(wrong_model), "does not match"),
        "truncated": (lambda: graph.write_bytes(good[: len(good) // 2]), "does not match"),
        "sidecar of other weights": (
            lambda: sidecar.write_text(json.dumps({**meta, "weights_sha256": "0" * 64})),
            "not the sidecar of a onnx graph of these weights",
        ),
        "sidecar sha256 a path": (
            lambda: sidecar.write_text(json.dumps({**meta, "sha256": "/../../../../etc/passwd"})),
            "is not a sha256",
        ),
        "sidecar not JSON": (lambda: sidecar.write_bytes(b"{\x00"), "unreadable"),
    }
    for damage, reason in cases.values():
        damage()
        with pytest.raises(GraphError, match=reason):
            load_graph(loaded, "onnx")
        store_graph(loaded, "onnx", good)
    graph.write_bytes(wrong_model)
    backend = OnnxBackend(loaded)  # exports afresh instead of serving the other model
    assert not backend.cached and "exporting the ONNX graph again" in caplog.text
    np.testing.assert_allclose(
        backend.probabilities(X), TorchBackend(loaded).probabilities(X), atol=1e-5
    )
    assert load_graph(loaded, "onnx") == (good, meta) and graph.read_bytes() == good
    assert sorted(p.name for p in derived_dir(loaded).iterdir()) == sorted(
        [graph.name, sidecar.name]
    )


def test_a_damaged_int8_graph_is_an_error_naming_quantize(loaded, graphs):
    fp32 = graphs[0]  # any valid graph of these weights will do as the int8 one here
    store_graph(loaded, "int8", fp32, {"report": {"drop_points": 0.1}})
    backend = Int8Backend(loaded)
    assert backend.report == {"drop_points": 0.1}
    np.testing.assert_allclose(
        backend.probabilities(X), TorchBackend(loaded).probabilities(X), atol=1e-5
    )
    graph = _graph_file(loaded, "int8")
    graph.write_bytes(fp32[:-10])
    with pytest.raises(GraphError, match=r"does not match .*python -m serve.quantize"):
        Int8Backend(loaded)
    graph.unlink()
    with pytest.raises(GraphError, match=r"which is missing.*python -m serve.quantize"):
        Int8Backend(loaded)
    sidecar_path(loaded, "int8").unlink()
    with pytest.raises(FileNotFoundError, match="no int8 model .*python -m serve.quantize"):
        Int8Backend(loaded)


def test_a_concurrent_reader_never_sees_half_an_int8_graph(loaded):
    """serve.quantize rewriting the int8 model while replicas start: each read is a whole,
    verified old or new graph, never a torn one and never a graph with the other's sidecar."""
    versions = {b"A" * (3 << 20): "a", b"B" * (2 << 20): "b"}
    blobs = list(versions)
    store_graph(loaded, "int8", blobs[0], {"report": {"version": "a"}})
    done, seen, errors = threading.Event(), [], []

    def read() -> None:
        while not done.is_set():
            try:
                found = load_graph(loaded, "int8")
            except GraphError as err:
                errors.append(str(err))
                continue
            assert found is not None
            data, meta = found
            seen.append(versions.get(data, f"torn ({len(data)} bytes)") + meta["report"]["version"])

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(40):
            blob = blobs[i % 2]
            store_graph(loaded, "int8", blob, {"report": {"version": versions[blob]}})
    finally:
        done.set()
        for t in readers:
            t.join()
    print(f"{len(seen)} reads during 40 rewrites: {sorted(set(seen))}")
    assert not errors, errors[:3]
    assert set(seen) <= {"aa", "bb"} and len(seen) >= 40, sorted(set(seen))
    assert sorted(p.name for p in loaded.path.iterdir()) == CHECKPOINT_FILES
