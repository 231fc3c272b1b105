"""Where a run computes and in which precision: the device a user asked for, and what
train.precision resolves to on it (autocast dtype, loss scaling)."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from modresnet.config import Config
from modresnet.errors import UserError


class DeviceError(UserError, ValueError):
    """The device or precision a user asked for is not available here."""


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            "train.device: 'cuda' was asked for but no CUDA GPU is visible; "
            "use --device cpu or auto"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def tune_backend(device: torch.device) -> None:
    """On CUDA, let cuDNN time its convolution algorithms once per shape and keep the
    fastest (the shapes of a run repeat every step); elsewhere leave torch as it is."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@dataclass(frozen=True)
class Precision:
    """What train.precision resolves to on one device."""

    name: str  # fp32 | bf16 | fp16
    dtype: torch.dtype | None  # the autocast dtype; None runs in fp32
    scaler: bool  # fp16 needs loss scaling (GradScaler) to keep small gradients


FP32 = Precision("fp32", None, False)


def select_precision(
    requested: str, device_type: str, capability: tuple[int, int] | None = None
) -> Precision:
    """bf16 autocast where the GPU computes in bf16 (compute capability >= 8.0: A100, H100,
    L4...), fp16 with a GradScaler on older GPUs (T4, V100: no bf16 convolutions), fp32 on
    the CPU (no autocast there: this CPU has no native bf16 and ran slower with it)."""
    if device_type != "cuda":
        if requested in ("auto", "fp32"):
            return FP32
        raise DeviceError(
            f"train.precision: {requested} runs only on a CUDA GPU; use auto or fp32 on the CPU"
        )
    bf16_ok = capability is not None and capability >= (8, 0)
    if requested == "auto":
        requested = "bf16" if bf16_ok else "fp16"
    if requested == "bf16" and not bf16_ok:
        raise DeviceError(
            f"train.precision: bf16 needs compute capability 8.0 or newer; this "
            f"GPU has {capability}; use auto or fp16"
        )
    return {
        "fp32": FP32,
        "bf16": Precision("bf16", torch.bfloat16, False),
        "fp16": Precision("fp16", torch.float16, True),
    }[requested]


def device_precision(requested: str, device: torch.device) -> Precision:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return select_precision(requested, device.type, capability)


def inference_precision(config: Config, device: torch.device) -> Precision:
    """Autocast for evaluation: the training precision on a GPU that has it (auto picks
    bf16 or fp16), fp32 on the CPU whatever the checkpoint was trained with."""
    if device.type != "cuda":
        return FP32
    requested = "fp32" if config.train.precision == "fp32" else "auto"
    return device_precision(requested, device)


def autocast(precision: Precision, device: torch.device) -> AbstractContextManager[object]:
    if precision.dtype is not None:
        return torch.autocast(device.type, dtype=precision.dtype)
    return contextlib.nullcontext()
