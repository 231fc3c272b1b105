"""ONNX export for the Serve replicas: once per checkpoint, cached beside it by sha256."""

from __future__ import annotations

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
    assert (
        path.parent == loaded.path / "onnx" and loaded.sha256 not in path.name
    )  # key != weights sha
    assert not path.exists()
    first = OnnxBackend(loaded)
    assert not first.cached and path.exists()
    second = OnnxBackend(loaded)  # what every later replica start does
    print(f"export+load {first.export_s:.2f}s, cached load {second.export_s:.3f}s")
    assert second.cached and second.export_s < first.export_s / 3
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    np.testing.assert_allclose(
        second.probabilities(x), TorchBackend(loaded).probabilities(x), atol=1e-5
    )
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


def test_int8_backend_from_quantize_cli(tmp_path, data_dir, capsys):
    """`python -m serve.quantize RUN` calibrates on the validation split, measures the test
    accuracy of fp32 and int8 and prints it; `--backend int8` then serves the result."""
    from modresnet.local import train_local
    from serve.backends import Int8Backend, make_backend
    from serve.quantize import int8_paths, main

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
        make_backend("int8", loaded)
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
    model_path, report_path = int8_paths(loaded)
    report = __import__("json").loads(report_path.read_text())
    assert report["calibration_split"] == "val" and report["test_images"] == 2000
    assert report["int8_bytes"] < report["fp32_bytes"]
    int8 = make_backend("int8", loaded)
    assert isinstance(int8, Int8Backend) and int8.report == report
    from modresnet.data import load_cifar10

    test = load_cifar10(cfg.data).test
    p8, p32 = int8.probabilities(test.x), OnnxBackend(loaded).probabilities(test.x)
    assert p8.shape == p32.shape == (200, 10)
    # probabilities stay close; accuracy (on the full test set) is in the report
    assert np.abs(p8 - p32).max() < 0.05, np.abs(p8 - p32).max()
    assert abs(report["drop_points"]) < 5
    # a drop over the limit refuses to write the model, exit 2 with the reason
    report_path.unlink()
    model_path.unlink()
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
    assert "over the limit" in capsys.readouterr().err and not model_path.exists()
