"""The training engine learns on real CIFAR-10, resumes exactly, and runs the full model.

Accuracy thresholds depend on CPU numerics (oneDNN picks other kernels on AVX2 and AVX-512
machines, and per thread count), so each states what was measured, under which of 1 or 2
threads and ONEDNN_MAX_CPU_ISA=AVX2, and its margin. Every test here runs on
MODRESNET_TEST_THREADS intra-op threads (default 2), never on torch's per-machine default.
"""

import pytest
import torch
from helpers.engine import fresh_state

from modresnet import checkpoint, engine, inference, parallel
from modresnet import config as configs
from modresnet.config import AugmentConfig
from modresnet.data import Split, load_cifar10
from modresnet.model import FLAVORS, build_model

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("torch_threads")


def test_overfits_256_real_images(small_cifar):
    """A one-cycle schedule lets the model settle, so the last epoch does not depend on CPU
    numerics: 1.000 train and validation accuracy under 1 and 2 threads, with oneDNN's AVX-512
    and AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2). The plateau schedule this test used before
    ended anywhere between 0.87 and 0.95, and failed its 0.9 threshold on an AVX2 machine."""
    cfg = configs.resolve(
        "debug",
        overrides={
            "optim.lr": 0.01,
            "train.epochs": 40,
            "train.batch_size": 64,
            "schedule.name": "onecycle",
        },
    )
    cfg = cfg.replace(augment=AugmentConfig())
    train = Split(small_cifar.train.x[:256], small_cifar.train.y[:256])
    state = fresh_state(cfg, len(train))
    engine.fit(state, train, train, cfg, CPU, on_epoch=lambda r, s: None)
    # measured 1.000 for both under 1 and 2 threads, AVX2 and AVX-512; margin: 8 of 256 images
    assert state.history[-1]["train_acc"] > 0.97
    assert state.history[-1]["val_acc"] > 0.97


def test_beats_chance_on_validation(small_cifar):
    cfg = configs.resolve(
        "debug",
        overrides={
            "optim.lr": 0.005,
            "train.epochs": 4,
            "augment.crop_padding": 2,
            "augment.flip": 0.5,
        },
    )
    cfg = cfg.replace(augment=AugmentConfig(crop_padding=2, flip=0.5))
    state = fresh_state(cfg, len(small_cifar.train))
    engine.fit(state, small_cifar.train, small_cifar.val, cfg, CPU, on_epoch=lambda r, s: None)
    # chance is 0.10; measured 0.340-0.358 under 1 and 2 threads, AVX2 and AVX-512:
    # margin 9 points
    assert state.history[-1]["val_acc"] > 0.25
    record = state.history[-1]
    for key in (
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "images_per_s",
        "epoch_s",
    ):
        assert key in record


def test_assemble_resumes_where_the_checkpoint_left_off(small_cifar, tmp_path):
    from modresnet.assembly import assemble

    cfg = configs.resolve("debug", overrides={"train.epochs": 2, "train.threads": 2})
    first = assemble(cfg, CPU, data=small_cifar)
    engine.run_epoch(first.state, first.train, first.val, cfg, CPU)
    checkpoint.save_training_state(tmp_path, first.state)
    resumed = assemble(cfg, CPU, data=small_cifar, resume_from=tmp_path)
    assert resumed.state.epoch == 1 and torch.get_num_threads() == 2
    assert resumed.classes == small_cifar.classes and len(resumed.test) == len(small_cifar.test)
    resumed.fit(on_epoch=lambda r, s: None)
    assert [m["epoch"] for m in resumed.state.history] == [1, 2]


def test_full_size_model_takes_steps(small_cifar):
    cfg = configs.resolve("paper", overrides={"train.batch_size": 16, "train.epochs": 1})
    train = Split(small_cifar.train.x[:48], small_cifar.train.y[:48])
    state = fresh_state(cfg, len(train))
    before = state.eval_model().linear.weight.clone()
    metrics = engine.train_one_epoch(state, train, cfg, CPU)
    assert metrics["train_images"] == 48
    assert not torch.equal(before, state.eval_model().linear.weight)


def test_resume_reproduces_an_uninterrupted_run(small_cifar, tmp_path):
    cfg = configs.resolve(
        "fast",
        overrides={
            "model.flavor": "debug",
            "train.epochs": 2,
            "train.batch_size": 100,
            "train.ema_decay": 0.9,
        },
    )
    train = Split(small_cifar.train.x[:400], small_cifar.train.y[:400])
    val = Split(small_cifar.val.x[:100], small_cifar.val.y[:100])
    straight = fresh_state(cfg, len(train))
    engine.fit(straight, train, val, cfg, CPU, on_epoch=lambda r, s: None)

    first = fresh_state(cfg, len(train))
    engine.run_epoch(first, train, val, cfg, CPU)  # then the process "dies"
    checkpoint.save_training_state(tmp_path, first)
    resumed = fresh_state(cfg, len(train))
    checkpoint.load_training_state(tmp_path, resumed)
    assert resumed.epoch == 1
    engine.fit(resumed, train, val, cfg, CPU, on_epoch=lambda r, s: None)
    weights = straight.eval_model().state_dict(), resumed.eval_model().state_dict()
    for a, b in zip(weights[0].values(), weights[1].values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert [m["epoch"] for m in resumed.history] == [1, 2]


def test_every_optimizer_and_schedule_learns(small_cifar):
    """Each optimizer under each schedule lowers the loss and lifts accuracy on 256 real
    images in 8 epochs (lr 1e-3 for Adam/AdamW, 0.05 for SGD). Measured at 6 epochs under 2
    threads: the loss fell by 0.36-0.48 and accuracy rose by 0.16-0.26 from epoch 1 in every
    pair; the thresholds keep half of the smallest."""
    train = Split(small_cifar.train.x[:256], small_cifar.train.y[:256])
    for opt in ("adam", "adamw", "sgd"):
        for sched in ("plateau", "onecycle", "cosine", "constant"):
            cfg = configs.resolve(
                "debug",
                overrides={
                    "optim.name": opt,
                    "optim.lr": 0.05 if opt == "sgd" else 1e-3,
                    "schedule.name": sched,
                    "train.epochs": 8,
                    "train.batch_size": 32,
                    "train.label_smoothing": 0.1,
                },
            )
            cfg = cfg.replace(augment=AugmentConfig())
            state = fresh_state(cfg, len(train))
            engine.fit(state, train, train, cfg, CPU, on_epoch=lambda r, s: None)
            first, last = state.history[0], state.history[-1]
            assert last["train_loss"] < first["train_loss"] - 0.18, (opt, sched, state.history)
            assert last["val_acc"] > first["val_acc"] + 0.08, (opt, sched, state.history)


def test_tta_evaluates_the_mirror(small_cifar):
    cfg = configs.resolve("debug")
    model = build_model(FLAVORS["debug"]).eval()
    val = Split(small_cifar.val.x[:50], small_cifar.val.y[:50])
    plain = inference.predict_logits(model, val.x, cfg, CPU)
    mirrored = inference.predict_logits(model, val.x.flip(3), cfg, CPU)
    tta = inference.predict_logits(model, val.x, cfg, CPU, tta=True)
    assert torch.allclose(tta, (plain + mirrored) / 2, atol=1e-5)


def test_fast_recipe_hands_over_a_model_no_worse_than_its_live_weights(data_dir):
    """The `fast` preset's EMA once lagged its live weights by 10 points on CPU (and fell to
    chance on a GPU): decay without warm-up kept the random init in the average, and the
    averaged BatchNorm statistics did not fit the averaged weights. 1,500 steps of the real
    recipe (debug flavor), as a user runs it; before the fix the evaluated model was 20+
    points behind here. Margins: the evaluated model may not trail the live one at all (it
    is chosen on this validation split); the EMA itself may trail by at most 5 points at any
    epoch. Measured with ONEDNN_MAX_CPU_ISA=AVX2: it leads by 1-14 points in epochs 1-7 and
    trails in the last, where the live weights settle at lr 0, by 1.2 points (1 thread) and
    2.3 points (2 threads); the broken EMA trailed by 20."""
    cfg = configs.resolve(
        "fast",
        overrides={
            "model.flavor": "debug",
            "data.data_dir": str(data_dir),
            "data.subset": 6000,
            "train.batch_size": 32,
            "train.epochs": 8,
        },
    )
    data = load_cifar10(cfg.data)
    state = fresh_state(cfg, len(data.train))
    engine.fit(state, data.train, data.val, cfg, CPU, on_epoch=lambda r, s: None)
    live = engine.evaluate(parallel.unwrap(state.model), data.val, cfg, CPU, tta=True)["acc"]
    evaluated = engine.evaluate(state.eval_model(), data.val, cfg, CPU, tta=True)["acc"]
    # live measured 0.602 (1 thread) and 0.607 (2 threads) with ONEDNN_MAX_CPU_ISA=AVX2:
    # margin 20 points
    assert live > 0.4, f"the recipe did not learn: live validation accuracy {live:.3f}"
    assert evaluated >= live, f"evaluated {evaluated:.3f} < live {live:.3f}"
    for record in state.history:
        assert record["val_acc_ema"] >= record["val_acc_live"] - 0.05, record


def test_training_steps_never_wait_for_the_device(small_cifar):
    """On a GPU every read of a device value on the host (`float(loss)`, `if tensor`,
    `.item()`) waits for all queued kernels; one per step starved the GPU. The engine's count
    of such reads per epoch must not grow with the number of steps (the epoch's metrics are
    read once at the end). On the CPU the same calls are visible through a TorchFunctionMode."""
    from torch.overrides import TorchFunctionMode

    syncing = {
        torch.Tensor.item,
        torch.Tensor.__bool__,
        torch.Tensor.__float__,
        torch.Tensor.__int__,
        torch.Tensor.tolist,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
    }

    class CountReads(TorchFunctionMode):
        reads = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in syncing:
                CountReads.reads += 1
            return func(*args, **(kwargs or {}))

    cfg = configs.resolve("fast", overrides={"model.flavor": "debug", "train.batch_size": 16})
    counts = []
    for n in (64, 256):
        train = Split(small_cifar.train.x[:n], small_cifar.train.y[:n])
        state = fresh_state(cfg, n)
        CountReads.reads = 0
        with CountReads():
            engine.train_one_epoch(state, train, cfg, CPU, on_batch=lambda step, steps, loss: None)
        counts.append(CountReads.reads)
    assert counts[0] == counts[1], f"host reads grow with steps: {counts} for 4 and 16 steps"
