"""Batched augmentation on synthetic batches: cutout's square and fill."""

import torch

from modresnet.augment import cutout


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_cutout_fills_one_square_with_the_mean():
    x = torch.zeros(8, 3, 32, 32)
    out = cutout(x, 8, gen(), fill=0.5)
    filled = (out[:, 0] == 0.5).sum(dim=(1, 2))
    assert (filled > 0).all() and (filled <= 64).all()
