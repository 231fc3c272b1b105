"""Checkpoints: safetensors + JSON round trip, tamper detection, clear refusals."""

import json

import pytest
import torch

from modresnet import checkpoint
from modresnet import config as configs
from modresnet.checkpoint import CheckpointError
from modresnet.data import CLASSES
from modresnet.model import build_model


@pytest.fixture()
def saved(tmp_path):
    cfg = configs.resolve("debug")
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    checkpoint.save_model(tmp_path / "ck", model, cfg, CLASSES, 3, {"val_acc": 0.5})
    return tmp_path / "ck", model, cfg


def test_round_trip(saved):
    path, model, cfg = saved
    loaded = checkpoint.load_model(path)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded.model(x), model(x))
    assert loaded.config == cfg and loaded.classes == CLASSES
    assert loaded.meta["epoch"] == 3 and loaded.meta["metrics"]["val_acc"] == 0.5
    assert loaded.sha256 == checkpoint.sha256_file(path / "model.safetensors")


def test_no_pickle_anywhere(saved):
    path, _, _ = saved
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "model.safetensors"]
    json.loads((path / "model.json").read_text())


def test_tampered_weights_are_refused(saved):
    path, _, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match"):
        checkpoint.load_model(path)


def test_run_directory_resolves_to_best(saved, tmp_path):
    path, _, _ = saved
    run = tmp_path / "run"
    run.mkdir()
    path.rename(run / "best")
    assert checkpoint.load_model(run).path == run / "best"
    assert checkpoint.load_model(run / "best" / "model.safetensors").path == run / "best"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "model.json").unlink(), "missing"),
        (lambda p: (p / "model.json").write_text("{nope"), "not valid JSON"),
        (lambda p: (p / "model.json").write_text('{"format": "other"}'), "not a modresnet"),
    ],
)
def test_broken_sidecars(saved, damage, message):
    path, _, _ = saved
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load_model(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        checkpoint.load_model(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="not a modresnet run"):
        checkpoint.load_model(tmp_path)


def test_training_state_keeps_its_on_disk_format(tmp_path):
    """`TrainingState.state_dict` feeds the checkpoint; these names are the format that
    existing last/ folders hold, so runs written before still resume."""
    from modresnet import engine

    cfg = configs.resolve("fast", overrides={"model.flavor": "debug", "train.ema_decay": 0.9})
    torch.manual_seed(0)
    state = engine.build_state(cfg, build_model(cfg.model), 64)
    state.epoch, state.history = 3, [{"epoch": 3, "val_acc": 0.25}]
    checkpoint.save_training_state(tmp_path, state)
    meta = json.loads((tmp_path / checkpoint.STATE_META).read_text())
    assert list(meta["state"]) == [
        "model",
        "optimizer",
        "scheduler",
        "ema",
        "scaler",
        "use_ema",
        "rng",
    ]
    assert meta["epoch"] == 3 and meta["history"] == state.history
    fresh = engine.build_state(cfg, build_model(cfg.model), 64)
    checkpoint.load_training_state(tmp_path, fresh)
    assert fresh.epoch == 3 and fresh.history == state.history
    saved, restored = state.state_dict()["model"], fresh.state_dict()["model"]
    for a, b in zip(saved.values(), restored.values(), strict=True):
        assert torch.equal(a, b)
