"""How a `modresnet tune` search draws points and which trials it stops or clones: the
search algorithm (random, or Optuna's TPE) and the scheduler (ASHA, PBT, or FIFO), built
from the TuneJob (a PBT exploit's effect inside the trial: jobs/tune/trial.py).

Ray Tune is imported only to build its objects; the checks run without it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from jobs.tune.job import TuneJob
from jobs.tune.space import OptunaSpace, Param, SearchSpace
from modresnet import config as configs


def param_space(job: TuneJob, space: SearchSpace) -> dict:
    """The Tuner's param_space: every distribution for random search; only the constants
    for Optuna, whose define-by-run function draws the rest."""
    return space.constants() if job.search == "optuna" else space.param_space()


def search_alg(job: TuneJob, space: SearchSpace):
    """Random search seeded with --search-seed, or TPE with the same seed; both hold
    --concurrent trials at once and start with the paper point if asked."""
    paper = configs.paper()
    if job.search == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per study created
        define = OptunaSpace(space, job.base.optim.name)
        searcher = OptunaSearch(
            define,
            metric=job.metric,
            mode=job.mode,
            points_to_evaluate=[define.point(paper)] if job.include_paper else None,
            seed=job.search_seed,
        )
        return ConcurrencyLimiter(searcher, max_concurrent=job.concurrent)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(
        points_to_evaluate=[space.point(paper)] if job.include_paper else None,
        max_concurrent=job.concurrent,
        random_state=job.search_seed,
    )


@dataclass(frozen=True)
class Clamp:
    """PBT's explore step keeps every perturbed value inside the space (x1.2 of the top of
    a range, or a rounded choice, would make a config the space never allowed)."""

    params: tuple[Param, ...]

    def __call__(self, config: dict) -> dict:
        for p in self.params:
            section, name = p.key.split(".", 1)
            value = config[section][name]
            if p.kind == "choice":
                config[section][name] = min(p.args, key=lambda v: abs(v - value))
            else:
                low, high = p.args[0], p.args[1]
                value = min(max(value, low), high)
                config[section][name] = round(value) if p.kind == "randint" else value
        return config


def mutations(space: SearchSpace) -> dict[str, Any]:
    """PBT's hyperparam_mutations: each mutable key, nested; a choice shifts along its list,
    a range is scaled by 0.8 or 1.2 (or resampled), then clamped (Clamp)."""
    out: dict[str, Any] = {}
    for key in space.mutable_keys():
        p = space.params[key]
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = list(p.args) if p.kind == "choice" else p.domain()
    return out


def scheduler(job: TuneJob, space: SearchSpace):
    """ASHA over epochs, PBT exploiting every --grace-period epochs, or FIFO (none)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if job.scheduler == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            max_t=job.max_epochs,
            grace_period=job.grace_period,
            reduction_factor=job.reduction_factor,
        )
    if job.scheduler == "fifo":
        return FIFOScheduler()
    # PBT draws with the global RNGs: seeded, a search's perturbations repeat
    random.seed(job.search_seed)
    import numpy as np

    np.random.seed(job.search_seed)
    return PopulationBasedTraining(
        time_attr="epoch",
        perturbation_interval=job.grace_period,
        hyperparam_mutations=mutations(space),
        custom_explore_fn=Clamp(tuple(space.params[k] for k in space.mutable_keys())),
    )


def checkpoint_config(job: TuneJob):
    """The best checkpoint of a trial (the one export reads). Under PBT, the most recent
    ones: a clone restores the donor's checkpoint of its last perturbation, at most
    --grace-period epochs old, which keeping by score could have deleted (its accuracy may
    have dipped); export then takes the best of those."""
    from ray import tune

    if job.scheduler == "pbt":
        return tune.CheckpointConfig(num_to_keep=job.grace_period + 2)
    return tune.CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute=job.metric, checkpoint_score_order=job.mode
    )
