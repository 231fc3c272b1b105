"""How a training run is assembled: the one rule for its intra-op thread count."""

import pytest
import torch

from modresnet import config as configs

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("torch_threads")


def test_one_thread_rule():
    """train.threads wins; else the CPUs Ray gave the worker or trial (at least one); else,
    locally, torch's default."""
    from modresnet.assembly import thread_count

    cfg = configs.resolve("debug")
    assert thread_count(cfg, None) is None
    assert thread_count(cfg, 2.0) == 2 and thread_count(cfg, 0.49) == 1
    pinned = configs.resolve("debug", overrides={"train.threads": 3})
    assert thread_count(pinned, None) == 3 and thread_count(pinned, 8.0) == 3
