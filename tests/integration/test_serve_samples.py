"""The page's bundled sample strip (serve/protocols/samples.json) is what it says: the first
16 images of the official CIFAR-10 test batch, each with its true label, as PNGs that decode
to exactly its pixels."""

from __future__ import annotations

import json

import torch

from modresnet.data import TEST_FILES, _load_files, batches_dir
from modresnet.images import decode_image
from serve.protocols import samples


def test_the_bundled_samples_are_the_first_test_images(data_dir):
    bundled = samples.load()
    assert json.loads(samples.PATH.read_text()) == samples.from_data(str(data_dir))
    test = _load_files(batches_dir(data_dir), TEST_FILES)
    for i, sample in enumerate(bundled):
        assert sample["index"] == i
        assert torch.equal(decode_image(sample["png"]), test.x[i]), i
    assert [s["label"] for s in bundled[:4]] == ["cat", "ship", "ship", "airplane"]
