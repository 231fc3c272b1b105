"""The search algorithms and schedulers of `modresnet tune`, without a Ray cluster: Optuna's
conditional space, the Ray Tune objects each --search/--scheduler builds, PBT's clamped
explore step, and how a PBT exploit's new lr and weight decay reach the donor's optimizer."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from jobs.tune import search as tune_search
from jobs.tune import space as spaces
from jobs.tune import trial as tune_trial
from jobs.tune.job import InvalidSetting, SearchSettings, new_job
from modresnet import config as configs
from modresnet import engine
from modresnet.model import build_model

BASE = configs.resolve("debug")


def _job(tmp_path: Path, space: spaces.SearchSpace | None = None, **settings):
    space = space or spaces.load_space(spaces.DEFAULT_SPACE, BASE)
    return new_job(BASE, space, SearchSettings(**settings), tmp_path, "s"), space


def test_optuna_draws_momentum_only_for_sgd_and_betas_only_for_adam():
    space = spaces.load_space(spaces.DEFAULT_SPACE, BASE)
    define = spaces.OptunaSpace(space, BASE.optim.name)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(define.point(configs.paper()))
    seen = set()
    for i in range(24):
        trial = study.ask()
        drawn = define(trial)
        name = drawn["optim/name"]
        seen.add(name)
        assert ("optim/momentum" in drawn) == ("optim/nesterov" in drawn) == (name == "sgd")
        assert ("optim/betas" in drawn) == (name != "sgd")
        assert set(trial.params) == set(drawn)  # Optuna models exactly what the trial uses
        if "optim/betas" in drawn:
            assert isinstance(drawn["optim/betas"], list)  # a list again, drawn as its JSON
        config = spaces.trial_config(BASE, _nested(drawn))
        if i == 0:  # the enqueued paper point comes first, exactly
            assert config.optim.name == "adam" and config.optim.lr == 1e-3
            assert config.schedule.name == "plateau" and config.augment.rotation == 20.0
        study.tell(trial, float(i % 5))
    assert seen == {"adam", "adamw", "sgd"}


def _nested(drawn: dict) -> dict:
    out: dict[str, dict] = {}
    for key, value in drawn.items():
        section, name = key.split("/", 1)
        out.setdefault(section, {})[name] = value
    return out


def test_leaderboard_and_wandb_values_leave_out_what_the_optimizer_does_not_use():
    flat = {"optim.name": "adam", "optim.momentum": 0.9, "optim.betas": [0.9, 0.99]}
    assert spaces.applicable(flat, "sgd") == {"optim.name": "adam", "optim.betas": [0.9, 0.99]}
    nested = {"optim": {"momentum": 0.9, "nesterov": True, "betas": [0.9, 0.99]}, "x": 1}
    assert spaces.applicable_nested(nested, "sgd") == {
        "optim": {"momentum": 0.9, "nesterov": True},
        "x": 1,
    }
    assert spaces.applicable_nested(nested, "adamw") == {"optim": {"betas": [0.9, 0.99]}, "x": 1}


@pytest.mark.parametrize(
    "search, scheduler, alg, sched",
    [
        ("random", "asha", "BasicVariantGenerator", "AsyncHyperBandScheduler"),
        ("optuna", "asha", "ConcurrencyLimiter", "AsyncHyperBandScheduler"),
        ("random", "pbt", "BasicVariantGenerator", "PopulationBasedTraining"),
        ("random", "fifo", "BasicVariantGenerator", "FIFOScheduler"),
    ],
)
def test_each_search_and_scheduler_builds_its_ray_tune_objects(
    tmp_path, search, scheduler, alg, sched
):
    job, space = _job(tmp_path, search=search, scheduler=scheduler, include_paper=True)
    assert type(tune_search.search_alg(job, space)).__name__ == alg
    assert type(tune_search.scheduler(job, space)).__name__ == sched
    params = tune_search.param_space(job, space)
    if search == "optuna":  # TPE draws the rest; the Tuner holds the constants only
        assert params == space.constants() == {}
    else:
        assert set(spaces.flatten(params)) == set(space.params)
    kept = tune_search.checkpoint_config(job)  # PBT keeps the recent ones a clone may need
    assert kept.num_to_keep == (job.grace_period + 2 if scheduler == "pbt" else 1)
    assert kept.checkpoint_score_attribute == (None if scheduler == "pbt" else "val_acc")


def test_pbt_mutates_lr_weight_decay_and_augmentation_within_the_space(tmp_path):
    job, space = _job(tmp_path, scheduler="pbt", grace_period=2)
    mutations = tune_search.mutations(space)  # what PBT will perturb
    assert set(mutations) == {"optim", "augment"}
    assert set(mutations["optim"]) == {"lr", "weight_decay"}
    assert "rotation" in mutations["augment"] and "cutout" in mutations["augment"]
    clamp = tune_search.Clamp(tuple(space.params[k] for k in space.mutable_keys()))
    perturbed = {
        "optim": {"lr": 0.03 * 1.2, "weight_decay": 1e-6 * 0.8},
        "augment": {k.split(".")[1]: 99.0 for k in space.mutable_keys() if "augment" in k},
    }
    clamped = clamp(perturbed)
    assert clamped["optim"] == {"lr": 0.03, "weight_decay": 1e-6}
    assert clamped["augment"]["cutout"] == 12 and clamped["augment"]["rotation"] == 20.0
    spaces.trial_config(BASE, clamped)  # a valid config


@pytest.mark.parametrize(
    "text, settings, fragment",
    [
        ("optim.name: {choice: [adam, sgd]}\n", {"scheduler": "pbt"}, "PBT has nothing"),
        ("optim.lr: 0.001\n", {"search": "optuna"}, "nothing to model"),
        (
            "optim.lr: {uniform: [0.001, 0.01]}\n",
            {"search": "optuna", "scheduler": "pbt"},
            "cannot",
        ),
        (
            "optim.lr: {uniform: [0.001, 0.01]}\n",
            {"scheduler": "pbt", "workers_per_trial": 2},
            "data-",
        ),
        ("optim.lr: 0.001\n", {"search": "grid"}, "must be one of random, optuna"),
    ],
)
def test_a_search_the_space_cannot_serve_is_refused(tmp_path, text, settings, fragment):
    import yaml

    space = spaces.parse_space(yaml.safe_load(text), BASE, "space.yaml")
    with pytest.raises(InvalidSetting, match=fragment):
        _job(tmp_path, space, **settings)


def test_fractional_cpus_and_gpus_per_trial_are_trial_resources(tmp_path):
    from jobs.tune.driver import _trainable

    job, _ = _job(tmp_path, cpus_per_trial=0.5, gpus_per_trial=0.5)
    assert (job.cpus_per_trial, job.gpus_per_trial) == (0.5, 0.5)
    assert callable(_trainable(job))  # Tune validates the resource request here


def _state(config):
    engine.seed_everything(0)
    return engine.build_state(config, build_model(config.model), 512)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "plateau", "constant"])
def test_an_exploit_trains_with_its_own_lr_and_weight_decay_not_the_donors(schedule):
    """Loading the donor's optimizer state brings the donor's lr and weight decay; the
    trial's mutated values must win, at the donor's point of the schedule."""
    donor_cfg = BASE.with_overrides(
        {"optim.lr": 1e-3, "optim.weight_decay": 1e-4, "schedule.name": schedule}
    )
    trial_cfg = donor_cfg.with_overrides({"optim.lr": 2.5e-3, "optim.weight_decay": 5e-4})
    donor = _state(donor_cfg)
    for _ in range(7):  # the donor is some way into its schedule
        donor.optimizer.step()
        if donor.scheduler is not None and schedule != "plateau":
            donor.scheduler.step()
    resumed = _state(donor_cfg)  # the donor resumed as it is: the lr a clone starts from
    resumed.load_state_dict(donor.state_dict())
    donor_lrs = [g["lr"] for g in resumed.optimizer.param_groups]
    clone = _state(trial_cfg)
    clone.load_state_dict(donor.state_dict())
    assert [g["lr"] for g in clone.optimizer.param_groups] == donor_lrs  # the trap
    assert tune_trial.retune(clone, donor_cfg, trial_cfg)
    for g, lr in zip(clone.optimizer.param_groups, donor_lrs, strict=True):
        assert g["lr"] == pytest.approx(2.5 * lr)
        assert g["weight_decay"] in (5e-4, 0.0)  # 0: the no-decay group of norms and biases
    if clone.scheduler is not None and schedule != "plateau":
        clone.scheduler.step()  # the schedule goes on from the mutated lr
        resumed.scheduler.step()
        assert clone.optimizer.param_groups[0]["lr"] == pytest.approx(
            2.5 * resumed.optimizer.param_groups[0]["lr"]
        )
    assert not tune_trial.retune(clone, trial_cfg, trial_cfg)  # a plain resume: no change


def test_a_restored_checkpoint_is_a_clone_only_when_another_trial_wrote_it():
    path = "/r/s/run_trial_ab12c_00002_2_lr=0.001_2026/checkpoint_000003"
    assert tune_trial.donor(path, "ab12c_00001") == "ab12c_00002"
    assert tune_trial.donor(path, "ab12c_00002") is None
    optuna_path = "/r/s/run_trial_33643cb0_1_flip=0.5_2026/checkpoint_000001"
    assert tune_trial.donor(optuna_path, "33643cb0") is None  # Optuna's ids have no `_`


@pytest.mark.parametrize("cpus, workers", [(2, 2), (4, 2), (3, 3), (1, 2), (0.5, 2)])
def test_a_data_parallel_trial_fits_one_node_and_one_cpu_nodes_alike(cpus, workers):
    """A trial holds TRIAL_CPU and each of its workers worker_cpus(): with --cpus-per-trial N
    that fits one N-CPU node, and also N/workers-CPU nodes each holding one worker, the trial
    beside one of them (it once needed 0.01 CPU more than a 1-CPU node has, and waited)."""
    from jobs.tune.trial import TRIAL_CPU, worker_cpus

    each = worker_cpus(cpus, workers)
    assert 0 < each and TRIAL_CPU + workers * each <= cpus  # one node of N CPUs
    assert TRIAL_CPU + each <= cpus / workers  # a node of one share: the trial and a worker
