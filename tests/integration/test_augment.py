"""Batched augmentation on real images: shapes, identity at strength 0, flips, per-sample
randomness, seeds."""

import pytest
import torch

from modresnet.augment import augment, geometry
from modresnet.config import AugmentConfig, paper

OFF = AugmentConfig()


@pytest.fixture(scope="module")
def batch(small_cifar):
    return small_cifar.train.x[:64]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shape_dtype_and_range(batch):
    out = augment(batch, paper().augment, gen())
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    normalized = augment(batch, paper().augment, gen(), (0.5,) * 3, (0.5,) * 3)
    assert torch.allclose(normalized, out * 2 - 1, atol=1e-5)


def test_strength_zero_is_identity(batch):
    assert torch.equal(augment(batch, OFF, gen()), batch.float() / 255)
    assert torch.allclose(
        augment(batch, OFF, gen(), (0.5,) * 3, (0.25,) * 3), (batch.float() / 255 - 0.5) / 0.25
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("crop_padding", 4),
        ("brightness", 0.3),
        ("contrast", 0.3),
        ("saturation", 0.3),
        ("hue", 0.1),
        ("rotation", 20.0),
        ("translate", 0.1),
        ("cutout", 8),
        ("flip", 0.5),
    ],
)
def test_each_family_changes_images(batch, field, value):
    out = augment(batch, OFF.replace(**{field: value}), gen())
    assert not torch.allclose(out, batch.float() / 255)


def test_flip_flips(batch):
    out = augment(batch, OFF.replace(flip=1.0), gen())
    assert torch.equal(out, batch.float().flip(3) / 255)


def test_crop_without_rotation_is_an_exact_pixel_shift(batch):
    x = batch.float() / 255
    out = geometry(x, OFF.replace(crop_padding=4), gen())
    # every output pixel is an input pixel or zero padding
    values = set(x[0].flatten().tolist()) | {0.0}
    assert set(out[0].flatten().tolist()) <= values


def test_randomness_is_per_sample(batch):
    same = batch[:1].repeat(16, 1, 1, 1)
    out = augment(same, paper().augment, gen())
    assert len({tuple(o.flatten()[:200].tolist()) for o in out}) == 16


def test_seeds_reproduce(batch):
    cfg = paper().augment
    assert torch.equal(augment(batch, cfg, gen(1)), augment(batch, cfg, gen(1)))
    assert not torch.equal(augment(batch, cfg, gen(1)), augment(batch, cfg, gen(2)))


def test_runs_on_the_batch_device(batch):
    out = augment(batch.to("cpu"), paper().augment, torch.Generator(device="cpu").manual_seed(0))
    assert out.device.type == "cpu"
