"""Training in tests: a fixed number of torch threads (MODRESNET_TEST_THREADS, default 2),
never torch's per-machine default, and a fresh seeded training state."""

from __future__ import annotations

import os

from modresnet import engine
from modresnet.model import build_model

THREADS = int(os.environ.get("MODRESNET_TEST_THREADS", "2"))


def fresh_state(cfg, n: int) -> engine.TrainingState:
    engine.seed_everything(cfg.train.seed)
    return engine.build_state(cfg, build_model(cfg.model), n)
