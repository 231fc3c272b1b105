"""The CIFAR-10 loader on the real files: official sizes, error paths, and the stratified split."""

import pytest
import torch

from modresnet.config import DataConfig
from modresnet.data import FOLDER, DataError, load_cifar10, stratified_indices


def test_real_data_loads_with_official_sizes(data_dir):
    d = load_cifar10(DataConfig(data_dir=str(data_dir)))
    assert (len(d.train), len(d.val), len(d.test)) == (45000, 5000, 10000)
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape[1:] == (3, 32, 32)
    assert d.classes[0] == "airplane" and d.classes[-1] == "truck"
    assert d.test.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_split_is_stratified_disjoint_and_deterministic(data_dir):
    a = load_cifar10(DataConfig(data_dir=str(data_dir)))
    b = load_cifar10(DataConfig(data_dir=str(data_dir)))
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert torch.bincount(a.val.y).tolist() == [500] * 10
    assert torch.bincount(a.train.y).tolist() == [4500] * 10
    labels = torch.arange(50000) % 10
    val_idx, train_idx = stratified_indices(labels, [5000, 45000], seed=0)
    assert len(set(val_idx.tolist()) | set(train_idx.tolist())) == 50000
    other, _ = stratified_indices(labels, [5000, 45000], seed=1)
    assert not torch.equal(other, val_idx)


def test_subset_is_stratified(data_dir):
    d = load_cifar10(DataConfig(data_dir=str(data_dir), subset=1000, test_subset=200))
    assert torch.bincount(d.train.y).tolist() == [100] * 10
    assert torch.bincount(d.test.y).tolist() == [20] * 10
    assert len(d.val) == 111  # subset / 9, keeping the 45k:5k ratio


def test_truncated_real_file_names_the_file(tmp_path, data_dir):
    folder = tmp_path / FOLDER
    folder.mkdir()
    for src in (data_dir / FOLDER).iterdir():
        (folder / src.name).symlink_to(src)
    (folder / "data_batch_3").unlink()
    (folder / "data_batch_3").write_bytes((data_dir / FOLDER / "data_batch_3").read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_3 is corrupt or truncated"):
        load_cifar10(DataConfig(data_dir=str(tmp_path), download=False))


def test_missing_file_names_the_file(tmp_path, data_dir):
    folder = tmp_path / FOLDER
    folder.mkdir()
    for src in (data_dir / FOLDER).iterdir():
        if src.name != "test_batch":
            (folder / src.name).symlink_to(src)
    with pytest.raises(DataError, match="test_batch is missing"):
        load_cifar10(DataConfig(data_dir=str(tmp_path), download=False))
