"""The int8 backend built by `modresnet quantize` from a model trained on real images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modresnet import config as configs
from modresnet.checkpoint import load_model, save_model
from modresnet.model import build_model

pytest.importorskip("onnxruntime")
from serve.backends.export import export_onnx  # noqa: E402
from serve.backends.graph_cache import (  # noqa: E402
    sidecar_path,
)
from serve.backends.onnx_runtime import Int8Backend, OnnxBackend  # noqa: E402

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


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """The ONNX exports of the `loaded` weights and of other ones (exporting takes seconds)."""
    root = tmp_path_factory.mktemp("graphs")
    return export_onnx(_checkpoint(root / "a", 0)), export_onnx(_checkpoint(root / "b", 1))


def test_int8_backend_from_quantize_cli(tmp_path, data_dir, capsys, monkeypatch):
    """`python -m serve.quantize RUN` calibrates on the validation split, measures the test
    accuracy of fp32 and int8 and prints it; `--backend int8` then serves the result."""
    from modresnet.local import train_local
    from serve.backends import load_backend
    from serve.quantize import int8_paths, main

    monkeypatch.setenv("MODRESNET_CACHE", str(tmp_path / "cache"))
    cfg = configs.resolve(
        "debug",
        overrides={
            "data.data_dir": str(data_dir),
            "data.subset": 1000,
            "data.val_subset": 200,
            "data.test_subset": 200,
        },
    )
    train_local(cfg, tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="python -m serve.quantize"):
        load_backend("int8", loaded)
    from typer.testing import CliRunner

    from modresnet.cli import app

    result = CliRunner().invoke(app, ["serve", str(tmp_path / "run"), "--backend", "int8"])
    assert result.exit_code == 2 and "python -m serve.quantize" in result.output, result.output
    assert (
        main(
            [
                str(tmp_path / "run"),
                "--calibration",
                "300",
                "--max-drop",
                "100",
                "--data-dir",
                str(data_dir),
                "--test-images",
                "2000",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test accuracy fp32" in out and "int8" in out, out
    sidecar, folder = int8_paths(loaded)
    meta = json.loads(sidecar.read_text())
    report = meta["report"]
    assert report["calibration_split"] == "val" and report["test_images"] == 2000
    assert sidecar.parent == folder and report["int8_bytes"] == meta["bytes"] < report["fp32_bytes"]
    assert meta["source_sha256"] == json.loads(sidecar_path(loaded, "onnx").read_text())["sha256"]
    assert sorted(p.name for p in loaded.path.iterdir()) == CHECKPOINT_FILES
    int8 = load_backend("int8", loaded)
    assert isinstance(int8, Int8Backend) and int8.report == report
    from modresnet.data import load_cifar10

    test = load_cifar10(cfg.data).test
    p8, p32 = int8.probabilities(test.x), OnnxBackend(loaded).probabilities(test.x)
    assert p8.shape == p32.shape == (200, 10)
    # probabilities stay close; accuracy (on the full test set) is in the report
    assert np.abs(p8 - p32).max() < 0.05, np.abs(p8 - p32).max()
    assert abs(report["drop_points"]) < 5
    # a drop over the limit refuses to write the model, exit 2 with the reason
    sidecar.unlink()
    assert (
        main(
            [
                str(tmp_path / "run"),
                "--calibration",
                "1",
                "--max-drop",
                "-1",
                "--data-dir",
                str(data_dir),
                "--test-images",
                "200",
            ]
        )
        == 2
    )
    assert "over the limit" in capsys.readouterr().err and not sidecar.exists()
