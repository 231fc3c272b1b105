"""The recipe options a GPU A/B chooses between, each on tensors small enough for the fast
tier: TTA views, alternating flip, zero-initialised residual branches, reflect padding,
cutout inside the image, whole batches only, the EMA's cadence and cuDNN's autotuner."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modresnet import config as configs
from modresnet import engine
from modresnet.augment import alternating_flips, augment, cutout, geometry, normalize
from modresnet.config import AugmentConfig, ConfigError, ModelConfig
from modresnet.data import Split
from modresnet.device import tune_backend
from modresnet.ema import WeightEMA
from modresnet.inference import predict_logits
from modresnet.model import BasicBlock, build_model, count_parameters

DEBUG = configs.resolve("debug")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int, seed: int = 0, side: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), generator=gen(seed), dtype=torch.uint8)


# --------------------------------------------------------------------------- TTA views


def _moved(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Column j of the result is column j - pixels of `x`, mirrored at the edges."""
    w = x.shape[3]
    cols = [abs(j - pixels) if j - pixels < 0 else j - pixels for j in range(w)]
    cols = [2 * (w - 1) - c if c > w - 1 else c for c in cols]
    return x[..., cols]


def test_six_views_average_exactly_the_mirror_and_one_pixel_shifts():
    torch.manual_seed(0)
    model = build_model(DEBUG.model).eval()
    cfg = DEBUG.with_overrides({"train.tta_views": 6, "train.channels_last": False})
    x = images(5)
    xb = normalize(x.float() / 255, cfg.data.mean, cfg.data.std)
    views = [xb, xb.flip(3)]
    views += [_moved(v, px) for v in (xb, xb.flip(3)) for px in (1, -1)]
    with torch.no_grad():
        expected = torch.stack([model(v) for v in views]).mean(0)
    got = predict_logits(model, x, cfg, torch.device("cpu"), cfg.train.tta_views)
    assert torch.allclose(got, expected, atol=1e-5)
    one = predict_logits(model, x, cfg, torch.device("cpu"), 1)
    assert not torch.allclose(got, one, atol=1e-3)


def test_configs_that_say_tta_keep_their_meaning():
    assert configs.resolve("fast").train.tta_views == 2
    assert configs.resolve("paper").train.tta_views == 1
    assert configs.resolve("paper", overrides={"train.tta": True}).train.tta_views == 2
    assert configs.resolve("fast", overrides={"train.tta": False}).train.tta_views == 1
    saved = {**DEBUG.to_dict(), "train": {**DEBUG.to_dict()["train"], "tta": True}}
    del saved["train"]["tta_views"]
    assert configs.from_dict(saved).train.tta_views == 2  # a checkpoint's config.yaml


def test_tta_views_other_than_1_2_6_are_one_line():
    with pytest.raises(ConfigError, match=r"^train.tta_views: must be one of 1, 2, 6; got 3$"):
        configs.resolve("paper", overrides={"train.tta_views": 3})


# --------------------------------------------------------------------------- flips


def test_alternating_flip_shows_every_image_both_ways_over_two_epochs():
    cfg = AugmentConfig(flip=0.5, flip_alternate=True)
    x = images(64, side=8).float()
    for epoch in (0, 1, 6):
        a = geometry(x, cfg, gen(epoch), alternating_flips(64, 3, epoch))
        b = geometry(x, cfg, gen(epoch + 1), alternating_flips(64, 3, epoch + 1))
        flipped_a = (a == x.flip(3)).flatten(1).all(1)
        flipped_b = (b == x.flip(3)).flatten(1).all(1)
        assert ((a == x) | (a == x.flip(3))).flatten(1).all(1).all()
        assert (flipped_a ^ flipped_b).all()  # once each way, every image
        assert 16 < int(flipped_a.sum()) < 48  # a random half, not all or none


def test_alternating_flip_needs_even_odds():
    with pytest.raises(ConfigError, match=r"^augment.flip_alternate: .*needs augment.flip 0.5"):
        configs.resolve("paper", overrides={"augment.flip": 0.3, "augment.flip_alternate": True})


# --------------------------------------------------------------------------- model


def test_zero_init_residual_starts_every_block_as_its_shortcut():
    plain = build_model(ModelConfig())
    zeroed = build_model(ModelConfig(zero_init_residual=True))
    assert count_parameters(zeroed) == count_parameters(plain) == 2_777_674
    x = torch.randn(2, 64, 8, 8)
    blocks = [m for m in zeroed.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 6
    with torch.no_grad():
        for block in blocks:
            block.eval()
            x_in = torch.randn(2, block.conv1.in_channels, 8, 8)
            assert torch.equal(block(x_in), F.relu(block.shortcut(x_in)))
        first = [m for m in plain.modules() if isinstance(m, BasicBlock)][0].eval()
        assert not torch.equal(first(x), F.relu(first.shortcut(x)))


# --------------------------------------------------------------------------- crop, cutout


@pytest.mark.parametrize("fill, mode", [("reflect", "reflect"), ("zeros", "constant")])
def test_crop_is_a_window_of_the_padded_image(fill, mode):
    p, side = 3, 8
    x = images(16, side=side).float()
    out = geometry(x, AugmentConfig(crop_padding=p, crop_fill=fill), gen())
    padded = F.pad(x, (p, p, p, p), mode=mode)
    shifted = 0
    for i in range(len(x)):
        windows = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + side, dx : dx + side])
        ]
        assert windows, f"image {i} is no {mode}-padded crop"
        shifted += (p, p) not in windows
    assert shifted > 8


def test_cutout_inside_keeps_every_square_whole():
    x = torch.ones(256, 3, 32, 32)
    inside = (cutout(x, 8, gen(), inside=True)[:, 0] == 0).sum(dim=(1, 2))
    anywhere = (cutout(x, 8, gen())[:, 0] == 0).sum(dim=(1, 2))
    assert (inside == 64).all()
    assert (anywhere < 64).any()


def test_augment_reads_the_options_from_the_config():
    x = images(32)
    cfg = AugmentConfig(flip=0.5, flip_alternate=True, cutout=8, cutout_inside=True)
    out = augment(x, cfg, gen(), flips=alternating_flips(32, 0, 0))
    assert ((out == 0).all(1).sum(dim=(1, 2)) >= 64).all()


# --------------------------------------------------------------------------- static shapes


def test_drop_last_trains_whole_batches_of_a_new_shuffle_each_epoch():
    assert engine.steps_per_epoch(45_000, 256, 1) == 176
    assert engine.steps_per_epoch(45_000, 256, 1, drop_last=True) == 175
    assert engine.steps_per_epoch(45_000, 256, 2, drop_last=True) == 87
    used = [set(engine.epoch_permutation(45_000, 0, e, 0, 1)[: 175 * 256].tolist()) for e in (0, 1)]
    assert used[0] != used[1] and len(used[0] | used[1]) > 44_900


def test_drop_last_steps_only_on_full_batches():
    cfg = DEBUG.with_overrides({"train.drop_last": True, "train.batch_size": 32})
    torch.manual_seed(0)
    split = Split(images(100), torch.randint(0, 10, (100,), generator=gen()))
    state = engine.build_state(cfg, build_model(cfg.model), len(split))
    metrics = engine.train_one_epoch(state, split, cfg, torch.device("cpu"))
    assert metrics["train_images"] == 96


# --------------------------------------------------------------------------- EMA, cuDNN


def _toy(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


@pytest.mark.parametrize("every", [1, 3])
def test_ema_every_k_steps_lerps_at_decay_to_the_k(every):
    live = _toy(0)
    ema = WeightEMA(live, 0.9, every=every)
    expected = live.weight.detach().clone()
    for step in range(1, 10):
        with torch.no_grad():
            live.weight.add_(1.0)
        before = ema.module.weight.clone()
        ema.update(live)
        if step % every:
            assert torch.equal(ema.module.weight, before)
            continue
        d = min(0.9, (1 + step) / (10 + step)) ** every
        expected = expected * d + live.weight.detach() * (1 - d)
        assert torch.allclose(ema.module.weight, expected, atol=1e-6)
    assert ema.updates == 9


def test_cudnn_autotuner_only_for_cuda():
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        engine.build_state(DEBUG, build_model(DEBUG.model), 64)
        tune_backend(torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False
        tune_backend(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = saved
