"""The training engine learns on real CIFAR-10, resumes exactly, and runs the full model."""

import dataclasses

import pytest
import torch

from modresnet import checkpoint, config as configs, engine
from modresnet.config import AugmentConfig
from modresnet.data import Split
from modresnet.model import FLAVORS, build_model

CPU = torch.device("cpu")


def _state(cfg, n):
    engine.seed_everything(cfg.train.seed)
    return engine.build_state(cfg, build_model(cfg.model), n)


def test_overfits_256_real_images(small_cifar):
    cfg = configs.resolve("debug", overrides={"optim.lr": 0.01, "train.epochs": 40, "train.batch_size": 64})
    cfg = dataclasses.replace(cfg, augment=AugmentConfig())
    train = Split(small_cifar.train.x[:256], small_cifar.train.y[:256])
    state = _state(cfg, len(train))
    engine.fit(state, train, train, cfg, CPU, on_epoch=lambda r, s: None)
    assert state.history[-1]["train_acc"] > 0.9


def test_beats_chance_on_validation(small_cifar):
    cfg = configs.resolve("debug", overrides={"optim.lr": 0.005, "train.epochs": 4,
                                              "augment.crop_padding": 2, "augment.flip": 0.5})
    cfg = dataclasses.replace(cfg, augment=AugmentConfig(crop_padding=2, flip=0.5))
    state = _state(cfg, len(small_cifar.train))
    engine.fit(state, small_cifar.train, small_cifar.val, cfg, CPU, on_epoch=lambda r, s: None)
    assert state.history[-1]["val_acc"] > 0.25  # chance is 0.10
    record = state.history[-1]
    for key in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "epoch_s"):
        assert key in record


def test_full_size_model_takes_steps(small_cifar):
    cfg = configs.resolve("paper", overrides={"train.batch_size": 16, "train.epochs": 1})
    train = Split(small_cifar.train.x[:48], small_cifar.train.y[:48])
    state = _state(cfg, len(train))
    before = state.eval_model().linear.weight.clone()
    metrics = engine.train_one_epoch(state, train, cfg, CPU)
    assert metrics["train_images"] == 48
    assert not torch.equal(before, state.eval_model().linear.weight)


def test_resume_reproduces_an_uninterrupted_run(small_cifar, tmp_path):
    cfg = configs.resolve("fast", overrides={"model.flavor": "debug", "train.epochs": 2,
                                             "train.batch_size": 100, "train.ema_decay": 0.9})
    train = Split(small_cifar.train.x[:400], small_cifar.train.y[:400])
    val = Split(small_cifar.val.x[:100], small_cifar.val.y[:100])
    straight = _state(cfg, len(train))
    engine.fit(straight, train, val, cfg, CPU, on_epoch=lambda r, s: None)

    first = _state(cfg, len(train))
    engine.run_epoch(first, train, val, cfg, CPU)  # then the process "dies"
    checkpoint.save_training_state(tmp_path, first)
    resumed = _state(cfg, len(train))
    checkpoint.load_training_state(tmp_path, resumed)
    assert resumed.epoch == 1
    engine.fit(resumed, train, val, cfg, CPU, on_epoch=lambda r, s: None)
    for a, b in zip(straight.eval_model().state_dict().values(), resumed.eval_model().state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert [m["epoch"] for m in resumed.history] == [1, 2]


def test_every_optimizer_and_schedule_runs(small_cifar):
    train = Split(small_cifar.train.x[:64], small_cifar.train.y[:64])
    for opt in ("adam", "adamw", "sgd"):
        for sched in ("plateau", "onecycle", "cosine", "constant"):
            cfg = configs.resolve("debug", overrides={"optim.name": opt, "schedule.name": sched,
                                                      "train.batch_size": 32, "train.label_smoothing": 0.1})
            state = _state(cfg, len(train))
            engine.fit(state, train, train, cfg, CPU, on_epoch=lambda r, s: None)
            assert state.history[0]["train_loss"] > 0


def test_tta_evaluates_the_mirror(small_cifar):
    cfg = configs.resolve("debug")
    model = build_model(FLAVORS["debug"]).eval()
    val = Split(small_cifar.val.x[:50], small_cifar.val.y[:50])
    plain = engine.predict_logits(model, val.x, cfg, CPU)
    mirrored = engine.predict_logits(model, val.x.flip(3), cfg, CPU)
    tta = engine.predict_logits(model, val.x, cfg, CPU, tta=True)
    assert torch.allclose(tta, (plain + mirrored) / 2, atol=1e-5)


def test_one_cycle_survives_tiny_runs_and_peaks_once():
    from modresnet.engine import one_cycle

    for total in range(1, 12):  # torch's OneCycleLR divided by zero at 4 steps, warm-up 0.25
        f = one_cycle(total, 0.25, 0.0)
        values = [f(step) for step in range(total + 1)]
        assert all(0.0 <= v <= 1.0 for v in values)
    f = one_cycle(100, 0.2, 0.01)
    assert f(0) < f(10) < f(20) == 1.0 > f(60) > f(100) == pytest.approx(0.01)
