"""The CIFAR-10 loader's refusals without the data set: md5, how to supply it offline."""

import pickle

import numpy as np
import pytest

from modresnet.config import DataConfig
from modresnet.data import FOLDER, DataError, load_cifar10


def _write_layout(root, corrupt=None, truncate=None, missing=None):
    """Tiny generated batches in the official layout (their md5s cannot match)."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    names = ["batches.meta", *[f"data_batch_{i}" for i in range(1, 6)], "test_batch"]
    for name in names:
        if name == missing:
            continue
        payload = (
            {"label_names": ["a"] * 10}
            if name == "batches.meta"
            else {"data": np.zeros((10, 3072), np.uint8), "labels": list(range(10))}
        )
        data = pickle.dumps(payload)
        if name == truncate:
            data = data[: len(data) // 2]
        (folder / name).write_bytes(data)
    return folder


def test_wrong_md5_names_the_file(tmp_path):
    _write_layout(tmp_path)
    with pytest.raises(DataError, match=r"batches\.meta is corrupt or truncated"):
        load_cifar10(DataConfig(data_dir=str(tmp_path), download=False))


def test_no_data_offline_says_how_to_supply_it(tmp_path):
    with pytest.raises(DataError, match="MODRESNET_DATA"):
        load_cifar10(DataConfig(data_dir=str(tmp_path / "empty"), download=False))
