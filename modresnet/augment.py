"""Batched, per-sample random augmentation on the batch's own device (CPU or CUDA).

As in airbench: pure functions of (batch, config, generator). Flip, crop-with-padding,
rotation and translation fold into one affine resampling of the whole batch, and colour
jitter plus normalization into one 3x3 colour matrix and offset per sample, so the cost is
two batched ops however many families are on. Strengths match torchvision's ColorJitter,
RandomCrop, RandomHorizontalFlip, RandomRotation and RandomAffine; pixels are not
bit-identical to torchvision's PIL pipeline, which was never the goal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from modresnet.config import AugmentConfig

_GRAY = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
_YIQ_TO_RGB = ((1.0, 0.956171, 0.621433), (1.0, -0.272689, -0.646813), (1.0, -1.103744, 1.700623))


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input passes through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def const(
    values: Sequence[float] | Sequence[Sequence[float]],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A small constant on `device` without a host sync: a blocking host-to-GPU copy waits
    for every queued kernel, which per batch starves the GPU."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = const(mean, x.device, x.dtype).view(1, -1, 1, 1)
    s = const(std, x.device, x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _uniform(
    n: int, low: float, high: float, g: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def color_normalize(
    x: torch.Tensor,
    cfg: AugmentConfig,
    g: torch.Generator,
    mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
    divisor: float = 1.0,
) -> torch.Tensor:
    """Brightness, contrast, saturation, hue, clamping to [0, 1] and normalization in one
    per-sample affine colour map, on `x / divisor` (255 takes uint8 values as floats).

    brightness scales, contrast blends with the image's mean gray, saturation blends with
    the pixel's gray, hue rotates chroma about the gray axis in YIQ space; all are linear,
    so y = M x + o with one M (N x 3 x 3) and o (N x 3). Normalizing is linear too, so it
    folds into M and o, and the [0, 1] clamp becomes a clamp to the normalized bounds."""
    n, dev = x.shape[0], x.device
    m = const(mean, dev, x.dtype).view(1, 3, 1)
    sd = const(std, dev, x.dtype).view(1, 3, 1)
    flat = x.reshape(n, 3, -1)
    if not (cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue):
        return ((flat / divisor - m) / sd).view_as(x)
    ones = torch.ones(n, device=dev)
    b = (
        _uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, g, dev)
        if cfg.brightness
        else ones
    )
    c = _uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, g, dev) if cfg.contrast else ones
    s = (
        _uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, g, dev)
        if cfg.saturation
        else ones
    )
    gray = const(_GRAY, dev)
    eye = torch.eye(3, device=dev).expand(n, 3, 3)
    sat = s.view(n, 1, 1) * eye + (1 - s).view(n, 1, 1) * gray.view(1, 1, 3).expand(n, 3, 3)
    matrix = sat * (b * c).view(n, 1, 1)
    if cfg.hue:
        theta = _uniform(n, -cfg.hue, cfg.hue, g, dev) * 2 * math.pi
        cos, sin = torch.cos(theta), torch.sin(theta)
        rot = torch.zeros(n, 3, 3, device=dev)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        hue = const(_YIQ_TO_RGB, dev) @ rot @ const(_RGB_TO_YIQ, dev)
        matrix = hue @ matrix
    mean_gray = (flat.mean(2) @ gray) / divisor
    offset = ((1 - c) * b * mean_gray).view(n, 1, 1)
    out = torch.baddbmm((offset - m) / sd, matrix / (divisor * sd), flat)
    return out.clamp_(min=-m / sd, max=(1 - m) / sd).view_as(x)


def alternating_flips(n: int, seed: int, epoch: int) -> torch.Tensor:
    """Which of `n` images to flip in `epoch` (airbench's alternating flip): a random half,
    fixed by `seed`, in even epochs and the other half in odd ones, so any two consecutive
    epochs show every image once each way."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 424_243)
    return (torch.rand(n, generator=g) < 0.5) ^ bool(epoch % 2)


def _reflect(grid: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """Sampling positions outside the image mirrored about its edge pixels, as
    F.pad(mode="reflect") pads (grid_sample's own "reflection" repeats the edge pixel)."""
    size = torch.tensor((w, h), device=grid.device, dtype=grid.dtype)
    pixel = ((grid + 1) * size - 1) / 2
    last = size - 1
    pixel = torch.where(pixel < 0, -pixel, pixel)
    pixel = torch.where(pixel > last, 2 * last - pixel, pixel)
    return (2 * pixel + 1) / size - 1


def geometry(
    x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """Flip, crop with padding, rotation and translation as one affine resampling; `flips`
    (one bool per image), when given, decides the flips instead of a coin of augment.flip.

    A random crop from an image padded by p is a shift by an integer in [-p, p] filled by
    augment.crop_fill, so it joins the translation. Sampling is nearest-neighbour,
    torchvision's default for rotation and affine, and exact for whole-pixel shifts."""
    has_shift = cfg.crop_padding or cfg.translate
    if not (cfg.flip or has_shift or cfg.rotation):
        return x
    n, _, h, w = x.shape
    dev = x.device
    sign = torch.ones(n, device=dev)
    if flips is not None:
        sign = torch.where(flips.to(dev), -1.0, 1.0)
    elif cfg.flip:
        sign = torch.where(torch.rand(n, generator=g, device=dev) < cfg.flip, -1.0, 1.0)
    if not (has_shift or cfg.rotation):
        return torch.where(sign.view(n, 1, 1, 1) < 0, x.flip(3), x)
    shift = torch.zeros(n, 2, device=dev)  # pixels (x, y)
    if cfg.crop_padding:
        p = cfg.crop_padding
        shift += torch.randint(-p, p + 1, (n, 2), generator=g, device=dev).float()
    if cfg.translate:
        shift += (
            (torch.rand(n, 2, generator=g, device=dev) * 2 - 1) * cfg.translate * const((w, h), dev)
        )
        shift = shift.round()  # torchvision's RandomAffine also moves by whole pixels
    angle = torch.zeros(n, device=dev)
    if cfg.rotation:
        angle = _uniform(n, -cfg.rotation, cfg.rotation, g, dev) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sign, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * sign, cos
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    # affine_grid by broadcasting: 3x faster than F.affine_grid on CPU, same grid.
    xs = (torch.arange(w, device=dev, dtype=torch.float32) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=dev, dtype=torch.float32) * 2 + 1) / h - 1
    rows = torch.addcmul(
        theta[:, None, None, :, 2], theta[:, None, None, :, 1], ys.view(1, h, 1, 1)
    )
    grid = theta[:, None, None, :, 0] * xs.view(1, 1, w, 1) + rows  # one full-size pass
    if cfg.crop_fill == "reflect":
        grid = _reflect(grid, w, h)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def cutout(
    x: torch.Tensor, size: int, g: torch.Generator, fill: float = 0.0, inside: bool = False
) -> torch.Tensor:
    """Fill one size x size square per sample, centred anywhere in the image (DeVries &
    Taylor), so squares near the border are partly cut off; `inside` keeps every square
    whole within the image. After normalization the default fill, 0, is the data mean."""
    if not size:
        return x
    n, _, h, w = x.shape
    dev = x.device
    ys = torch.arange(h, device=dev).view(1, h, 1)
    xs = torch.arange(w, device=dev).view(1, 1, w)
    if inside:
        top = torch.randint(0, h - size + 1, (n, 1, 1), generator=g, device=dev)
        left = torch.randint(0, w - size + 1, (n, 1, 1), generator=g, device=dev)
    else:
        cy = torch.randint(0, h, (n, 1, 1), generator=g, device=dev)
        cx = torch.randint(0, w, (n, 1, 1), generator=g, device=dev)
        top, left = cy - size // 2, cx - size // 2
    mask = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return torch.where(mask.unsqueeze(1), torch.full_like(x, fill), x)


def augment(
    x: torch.Tensor,
    cfg: AugmentConfig,
    g: torch.Generator,
    mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 or [0, 1] float batch (N x 3 x H x W) -> augmented, normalized float batch;
    `flips` as in `geometry`.

    Geometry runs first, as torchvision's crop does before its colour jitter, so padded
    pixels are jittered too; then colour and normalization in one pass; cutout last."""
    divisor = 255.0 if x.dtype == torch.uint8 else 1.0
    out = geometry(x.float(), cfg, g, flips)
    out = color_normalize(out, cfg, g, mean, std, divisor)
    return cutout(out, cfg.cutout, g, inside=cfg.cutout_inside)
