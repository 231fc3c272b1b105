"""CIFAR-10 from the official python batches, md5-verified, held in memory as uint8 tensors.

The batches are pickles by format. They are only unpickled after their md5 matches the
official release (the sums torchvision checks), and then through an unpickler that admits
nothing but the numpy array reconstruction the files need.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modresnet.config import DataConfig
from modresnet.errors import UserError
from modresnet.files import hold_lock

ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
}
TEST_FILES = {"test_batch": "40351d587109b95175f43aff81a1287e"}
META_FILE = ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SUPPLY_HINT = (
    "Supply CIFAR-10 with --data-dir DIR or MODRESNET_DATA=DIR, where DIR holds "
    f"{FOLDER}/ (the unpacked official cifar-10-python.tar.gz), or run once with internet "
    "access so it downloads."
)


class DataError(UserError, RuntimeError):
    """The data set is missing, corrupt or unreachable; the message says how to fix it."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8, N x 3 x 32 x 32
    y: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: torch.Tensor) -> Split:
        return Split(self.x[index], self.y[index])


@dataclass(frozen=True)
class Cifar10:
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]


def resolve_root(data_dir: str | None) -> Path:
    """--data-dir, else MODRESNET_DATA, else ~/.cache/modresnet."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("MODRESNET_DATA"):
        return Path(os.environ["MODRESNET_DATA"]).expanduser()
    return Path.home() / ".cache" / "modresnet"


def batches_dir(root: Path) -> Path:
    """Accept both the parent of cifar-10-batches-py and the folder itself."""
    if (root / META_FILE[0]).exists() and not (root / FOLDER).exists():
        return root
    return root / FOLDER


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _ArrayUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path, md5: str) -> dict[str, Any]:
    if not path.exists():
        raise DataError(f"CIFAR-10 file {path} is missing. {SUPPLY_HINT}")
    actual = _md5(path)
    if actual != md5:
        raise DataError(
            f"CIFAR-10 file {path} is corrupt or truncated (md5 {actual}, expected {md5}). "
            f"Delete {path.parent} and download again, or point --data-dir at a good copy."
        )
    with path.open("rb") as f:
        batch: dict[str, Any] = _ArrayUnpickler(io.BufferedReader(f), encoding="latin1").load()
    return batch


def _download(root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    with hold_lock(root / ".download.lock"):
        if (root / FOLDER / META_FILE[0]).exists():
            return
        try:
            download_and_extract_archive(ARCHIVE_URL, str(root), md5=ARCHIVE_MD5)
        except Exception as err:  # network errors come in many types
            raise DataError(
                f"CIFAR-10 is not at {root / FOLDER} and downloading it failed "
                f"({type(err).__name__}: {err}). {SUPPLY_HINT}"
            ) from None


def _load_files(folder: Path, files: dict[str, str]) -> Split:
    xs, ys = [], []
    for name, md5 in files.items():
        batch = _read_batch(folder / name, md5)
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch["labels"], dtype=np.int64))
    return Split(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def stratified_indices(labels: torch.Tensor, counts: list[int], seed: int) -> list[torch.Tensor]:
    """Split each class's indices, shuffled by `seed`, into consecutive groups of the given
    per-split sizes (as fractions of each class are taken in turn, splits are disjoint)."""
    generator = torch.Generator().manual_seed(seed)
    classes = int(labels.max()) + 1
    per_class = [torch.nonzero(labels == c).flatten() for c in range(classes)]
    per_class = [idx[torch.randperm(len(idx), generator=generator)] for idx in per_class]
    out = []
    offsets = [0] * classes
    for total in counts:
        quota = [total // classes + (1 if c < total % classes else 0) for c in range(classes)]
        chosen = []
        for c in range(classes):
            take = per_class[c][offsets[c] : offsets[c] + quota[c]]
            offsets[c] += quota[c]
            chosen.append(take)
        out.append(torch.sort(torch.cat(chosen)).values)
    return out


def load_cifar10(config: DataConfig) -> Cifar10:
    root = resolve_root(config.data_dir)
    folder = batches_dir(root)
    if not (folder / META_FILE[0]).exists():
        if not config.download:
            raise DataError(f"CIFAR-10 is not at {folder}. {SUPPLY_HINT}")
        _download(root)
        folder = root / FOLDER
    meta = _read_batch(folder / META_FILE[0], META_FILE[1])
    classes = tuple(meta["label_names"])
    pool = _load_files(folder, TRAIN_FILES)
    test = _load_files(folder, TEST_FILES)
    train_size = len(pool) - config.val_size
    val_idx, train_idx = stratified_indices(
        pool.y, [config.val_size, train_size], config.split_seed
    )
    train, val = pool.take(train_idx), pool.take(val_idx)
    if config.subset is not None:
        train = train.take(stratified_indices(train.y, [config.subset], config.split_seed + 1)[0])
    val_subset = config.val_subset
    if val_subset is None and config.subset is not None:
        val_subset = max(len(classes) * 10, config.subset // 9)
    if val_subset is not None and val_subset < len(val):
        val = val.take(stratified_indices(val.y, [val_subset], config.split_seed + 2)[0])
    if config.test_subset is not None and config.test_subset < len(test):
        test = test.take(stratified_indices(test.y, [config.test_subset], config.split_seed + 3)[0])
    return Cifar10(train=train, val=val, test=test, classes=classes)
