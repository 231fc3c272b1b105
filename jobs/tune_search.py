"""How a `modresnet tune` search draws points and which trials it stops or clones: the
search algorithm (random, or Optuna's TPE) and the scheduler (ASHA, PBT, or FIFO), built
from the TuneJob; and, trial side, how a PBT exploit's new hyperparameters take effect on
the donor's optimizer state.

Ray Tune is imported only to build its objects; the checks run without it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.search_space import OptunaSpace, Param, SearchSpace
from jobs.tune_job import TuneJob
from modresnet import config as configs

if TYPE_CHECKING:
    from modresnet.config import Config
    from modresnet.engine import TrainingState


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


# --------------------------------------------------------------------------- trial side


def saved_config(directory: Path) -> Config | None:
    """The config a checkpoint folder was trained with (None for a foreign folder), read by
    the checkpoint module's own validated sidecar reader."""
    from modresnet import checkpoint

    if not (Path(directory) / checkpoint.META).exists():
        return None
    return configs.from_dict(checkpoint.read_meta(Path(directory))["config"])


def retune(state: TrainingState, saved: Config, config: Config) -> bool:
    """Give a restored optimizer this trial's lr and weight decay where they differ from the
    checkpoint's (a PBT exploit: weights and moments come from the donor, the mutated
    hyperparameters from the trial). Loading the donor's optimizer state set its lr and
    weight decay; the schedule's progress is kept and scaled. True if anything changed."""
    from torch.optim.lr_scheduler import CosineAnnealingLR

    factor = config.optim.lr / saved.optim.lr
    decay = config.optim.weight_decay
    if factor == 1 and decay == saved.optim.weight_decay:
        return False
    for group in state.optimizer.param_groups:
        for key in ("lr", "initial_lr"):
            if key in group:
                group[key] *= factor
        if group["weight_decay"]:  # the no-decay group (norm_bias_decay off) stays at 0
            group["weight_decay"] = decay
    sched = state.scheduler
    if sched is not None:
        if hasattr(sched, "base_lrs"):
            sched.base_lrs = [lr * factor for lr in sched.base_lrs]
        if isinstance(sched, CosineAnnealingLR):
            sched.eta_min *= factor
    return True


def donor(checkpoint_path: str, trial_id: str) -> str | None:
    """The trial whose checkpoint this trial restored from, when it is another's (PBT)."""
    for part in Path(checkpoint_path).parts:
        if part.startswith("run_trial_"):  # run_trial_<id>_<index>_<tag>
            rest = part.removeprefix("run_trial_")
            if rest.startswith(f"{trial_id}_"):
                return None
            return "_".join(rest.split("_")[:2])  # PBT runs random search: ids are abcde_00001
    return None
