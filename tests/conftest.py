"""Shared fixtures: the real CIFAR-10 (MODRESNET_DATA, else ../shared/data) and a hermetic
environment for Ray (no stray cluster addresses, token auth off unless a test turns it on)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modresnet import config as configs
from modresnet.data import Cifar10, load_cifar10

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    for candidate in (os.environ.get("MODRESNET_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "batches.meta").exists():
            return Path(candidate).resolve()
    raise RuntimeError("tests need the real CIFAR-10: set MODRESNET_DATA to the folder that "
                       "holds cifar-10-batches-py")


DATA_ROOT = _data_root()
os.environ["MODRESNET_DATA"] = str(DATA_ROOT)
for _var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
    os.environ.pop(_var, None)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_ROOT


@pytest.fixture(scope="session")
def small_cifar() -> Cifar10:
    """2,000 stratified training images, 500 validation, 500 test."""
    cfg = configs.DataConfig(data_dir=str(DATA_ROOT), subset=2000, val_subset=500, test_subset=500)
    return load_cifar10(cfg)


@pytest.fixture()
def debug_config(data_dir) -> configs.Config:
    """The tiny debug recipe, pointed at the real data."""
    return configs.resolve("debug", overrides={"data.data_dir": str(data_dir)})
