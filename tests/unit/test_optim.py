"""The learning-rate schedules: one-cycle on tiny runs, and a resumed schedule on the
uninterrupted curve."""

import pytest
import torch
from helpers.engine import fresh_state

from modresnet import config as configs
from modresnet import engine

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("torch_threads")


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_resumed_schedule_has_the_uninterrupted_lr(schedule):
    """A resumed per-step schedule continues at the lr the uninterrupted run has, at the same
    length and after train.epochs grows. Cosine's step() scales the current lr, so resuming it
    by stepping once more used to land below the curve (1.98e-5 for 4.77e-5 at step 7)."""
    cfg = configs.resolve(
        "debug",
        overrides={"schedule.name": schedule, "train.epochs": 3, "train.batch_size": 10},
    )

    def stepped(config, steps: int) -> engine.TrainingState:
        state = fresh_state(config, 50)  # 5 steps per epoch
        for _ in range(steps):
            state.optimizer.step()
            state.scheduler.step()
        return state

    saved = stepped(cfg, 7).state_dict()
    for epochs in (3, 6):
        longer = cfg.replace(train=cfg.train.replace(epochs=epochs))
        resumed = fresh_state(longer, 50)
        resumed.load_state_dict(saved)
        expected = stepped(longer, 7).optimizer.param_groups[0]["lr"]
        assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)


def test_one_cycle_survives_tiny_runs_and_peaks_once():
    from modresnet.optim import one_cycle

    for total in range(1, 12):  # torch's OneCycleLR divided by zero at 4 steps, warm-up 0.25
        f = one_cycle(total, 0.25, 0.0)
        values = [f(step) for step in range(total + 1)]
        assert all(0.0 <= v <= 1.0 for v in values)
    f = one_cycle(100, 0.2, 0.01)
    assert f(0) < f(10) < f(20) == 1.0 > f(60) > f(100) == pytest.approx(0.01)
