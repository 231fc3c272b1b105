"""Shared fixtures: the real CIFAR-10 (MODRESNET_DATA, else ../shared/data) and a hermetic
environment for Ray (no stray cluster addresses, token auth off unless a test turns it on).

Three tiers, one folder each (helpers/tiers.py): tests/unit/ needs neither the data set nor
Ray, tests/integration/ asks for one of the data fixtures below (subprocess tests too: they
ask for `data_dir`) and starts no Ray, tests/e2e/ carries `@pytest.mark.ray`. Each test is
marked with its folder's tier here, and collection stops on a test whose needs disagree with
its folder. `make test-fast` runs tests/unit/ with no data set, so a unit test that reads it
without saying so fails there instead of slowing the quick tier.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from helpers.tiers import misplaced, tier_of

from modresnet import config as configs
from modresnet.data import Cifar10, load_cifar10

REPO = Path(__file__).resolve().parents[1]
FAST_TIER = os.environ.get("MODRESNET_TEST_TIER") == "fast"

if FAST_TIER:
    os.environ["MODRESNET_DATA"] = tempfile.mkdtemp(prefix="modresnet-no-data-")
for _var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
    os.environ.pop(_var, None)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_SILENT", "true")


def _data_root() -> Path | None:
    if FAST_TIER:
        return None
    for candidate in (os.environ.get("MODRESNET_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "batches.meta").exists():
            return Path(candidate).resolve()
    return None


DATA_ROOT = _data_root()
if DATA_ROOT is not None:
    os.environ["MODRESNET_DATA"] = str(DATA_ROOT)  # for the CLIs the tests start


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests_root = Path(__file__).resolve().parent
    wrong = []
    for item in items:
        tier = tier_of(Path(item.path).resolve(), tests_root)
        ray = item.get_closest_marker("ray") is not None
        why = misplaced(tier, set(getattr(item, "fixturenames", ())), ray)
        if tier is None:
            why = "is outside the tier folders: move it to tests/unit/, integration/ or e2e/"
        if why:
            wrong.append(f"{item.nodeid} {why}")
            continue
        item.add_marker(getattr(pytest.mark, str(tier)))
        if tier == "unit":
            item.add_marker(pytest.mark.fast)
    if wrong:
        raise pytest.UsageError("tests in the wrong tier folder:\n  " + "\n  ".join(wrong))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA_ROOT is None:
        raise RuntimeError(
            "this test needs the real CIFAR-10: set MODRESNET_DATA to the folder "
            "that holds cifar-10-batches-py (make test-fast runs without it)"
        )
    return DATA_ROOT


@pytest.fixture(scope="session")
def small_cifar(data_dir: Path) -> Cifar10:
    """2,000 stratified training images, 500 validation, 500 test."""
    cfg = configs.DataConfig(data_dir=str(data_dir), subset=2000, val_subset=500, test_subset=500)
    return load_cifar10(cfg)


@pytest.fixture()
def debug_config(data_dir: Path) -> configs.Config:
    """The tiny debug recipe, pointed at the real data."""
    return configs.resolve("debug", overrides={"data.data_dir": str(data_dir)})


CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of the untrained debug model, for tests about HTTP and files rather
    than accuracy: no data set needed, so they stay in the fast tier."""
    import torch

    from modresnet.checkpoint import save_model
    from modresnet.model import build_model

    cfg = configs.resolve("debug")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random-checkpoint") / "ckpt"
    save_model(path, build_model(cfg.model), cfg, CLASSES, 1, {"val_acc": 0.1})
    return path


@pytest.fixture()
def torch_threads():
    """MODRESNET_TEST_THREADS intra-op threads for the test, restored after it."""
    import torch
    from helpers.engine import THREADS

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)
