"""ONNX export for the Serve replicas: once per checkpoint, cached beside it by sha256."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from modresnet import config as configs
from modresnet.checkpoint import load_model, save_model
from modresnet.model import build_model

pytest.importorskip("onnxruntime")
from serve.backends import OnnxBackend, TorchBackend, onnx_cache_path  # noqa: E402

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture()
def loaded(tmp_path, data_dir):
    cfg = configs.resolve("debug", overrides={"data.data_dir": str(data_dir)})
    torch.manual_seed(0)
    save_model(tmp_path / "ckpt", build_model(cfg.model), cfg, CLASSES, 1, {})
    return load_model(tmp_path / "ckpt")


def test_export_once_per_checkpoint_then_cached(loaded, tmp_path):
    path = onnx_cache_path(loaded)
    assert path.parent == loaded.path / "onnx" and loaded.sha256 not in path.name  # key != weights sha
    assert not path.exists()
    first = OnnxBackend(loaded)
    assert not first.cached and path.exists()
    second = OnnxBackend(loaded)  # what every later replica start does
    print(f"export+load {first.export_s:.2f}s, cached load {second.export_s:.3f}s")
    assert second.cached and second.export_s < first.export_s / 3
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    np.testing.assert_allclose(second.probabilities(x), TorchBackend(loaded).probabilities(x), atol=1e-5)
    # a damaged cache file is replaced, not served
    path.write_bytes(b"not onnx")
    again = OnnxBackend(loaded)
    assert not again.cached and path.read_bytes() != b"not onnx"
    np.testing.assert_allclose(again.probabilities(x), second.probabilities(x), atol=1e-6)
    # other weights, other key: never served from this cache
    with torch.no_grad():
        next(loaded.model.parameters()).add_(1.0)
    save_model(tmp_path / "other", loaded.model, loaded.config, loaded.classes, 2, {})
    assert onnx_cache_path(load_model(tmp_path / "other")).name != path.name
