"""The driver side of a `modresnet tune` search: it saves the job, connects to Ray, starts
or restores the Tuner over `run_trial` (jobs/tune/trial.py) with its search algorithm and
scheduler (search.py), W&B callbacks and progress table (progress.py), then summarizes the
results (results.py)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from jobs.ray_private import (
    flushing_wandb_callback,
    keep_secrets_out_of_trials,
    restored_run_config,
)
from jobs.runtime import (
    WandbPolicy,
    check_wandb_key_on_this_node,
    connect,
    quiet_tune_output,
    use_wandb_env,
    wandb_policy,
)
from jobs.tune.job import JOB_FILE, TuneJob, TuneSetupError
from jobs.tune.results import TuneOutcome, summarize, sync_wandb_dirs
from jobs.tune.space import applicable_nested
from jobs.tune.trial import TRIAL_CPU, run_trial
from modresnet import names
from modresnet.ownership import check_private_storage


@dataclass(frozen=True)
class TuneOptions:
    """How this process runs the search; unlike the TuneJob, these may change on --resume."""

    address: str | None = None
    wandb: bool | None = True  # only False turns W&B off (jobs.runtime.wandb_policy)
    wandb_project: str = "modresnet-tune"
    upload_timeout: int = 60


def _wandb_callbacks(
    wandb: WandbPolicy, options: TuneOptions, job: TuneJob, info: Callable[[str], None]
) -> list:
    """One W&B run per trial, by the policy all commands share (jobs.runtime.wandb_policy),
    grouped by search (or by the pipeline that runs it), tagged and configured with its
    search algorithm and scheduler."""
    group = wandb.group or job.name
    project = os.environ.get("WANDB_PROJECT", options.wandb_project)
    if not wandb.enabled:
        info(wandb.reason)
        return []
    info(f"{wandb.reason}, project {project}, group {group}")
    use_wandb_env(wandb)
    kwargs = {"mode": "offline"} if wandb.mode == "offline" else {}
    return [
        flushing_wandb_callback()(
            project=project,
            group=group,
            upload_timeout=options.upload_timeout,
            log_config=True,
            tags=[f"search:{job.search}", f"scheduler:{job.scheduler}"],
            search={"search": job.search, "scheduler": job.scheduler, "max_epochs": job.max_epochs},
            clean=partial(applicable_nested, base_optimizer=job.base.optim.name),
            **kwargs,
        )
    ]


def _trainable(job: TuneJob):
    from ray import tune

    if job.workers_per_trial > 1:  # the trial only drives a TorchTrainer; its workers hold the CPUs
        resources = {"cpu": TRIAL_CPU}
    else:
        resources = {"cpu": job.cpus_per_trial, "gpu": job.gpus_per_trial}
    return tune.with_resources(tune.with_parameters(run_trial, job=job), resources)


def _tuner_parts(job: TuneJob, callbacks: list, verbose: bool = True):
    from ray import tune

    from jobs.tune import search

    space = job.search_space()
    tune_config = tune.TuneConfig(
        metric=job.metric,
        mode=job.mode,
        num_samples=job.samples,
        scheduler=search.scheduler(job, space),
        search_alg=search.search_alg(job, space),
        # The next trial runs in the finished one's process: no new Python importing torch
        # per trial (every trial of a search asks for the same resources). Not under PBT: an
        # exploit in a reused process restored a donor checkpoint that the donor's retention
        # had deleted meanwhile, and the clone failed. Nor for data-parallel trials: one that
        # ASHA stops is inside its Train run, so Tune cannot reset its process for the next
        # trial and failed that trial ("reuse requires reset_config()"); ending the process
        # ends the Train run, its child, as well.
        reuse_actors=job.scheduler != "pbt" and job.workers_per_trial == 1,
    )
    run_config = tune.RunConfig(
        name=job.name,
        storage_path=job.remote or job.storage,
        callbacks=callbacks,
        checkpoint_config=search.checkpoint_config(job),
        stop={"epoch": job.max_epochs},  # before the scheduler: PBT never clones a finished trial
        failure_config=tune.FailureConfig(max_failures=1),
        verbose=None if verbose else 0,
    )  # 0: no Ray reporter; jobs/tune/progress.py draws a table
    return search.param_space(job, space), tune_config, run_config


def _restored_output(tuner, run_config) -> None:
    """A restored Tuner brings the pickled RunConfig of the first run; give it this run's
    console settings (reporter verbosity, the progress callback)."""
    from jobs.tune.progress import ProgressCallback

    restored = restored_run_config(tuner)
    if restored is None:  # not found: the first run's settings stay
        return
    restored.verbose = run_config.verbose
    if not any(isinstance(c, ProgressCallback) for c in restored.callbacks or []):
        restored.callbacks = list(restored.callbacks or []) + [ProgressCallback()]


def run_search(
    job: TuneJob,
    options: TuneOptions,
    resume: bool = False,
    info: Callable[[str], None] = print,
    verbose: bool = False,
    console=None,
) -> TuneOutcome:
    """Start (or restore) the search, then write the leaderboard, plot and best run.

    Progress: one compact table of trials on `console` (jobs/tune/progress.py), or with
    `verbose` Ray Tune's own reporter. Ray's Python logs go to <experiment>/ray.log."""
    exp = job.experiment
    if resume:
        if not (exp / JOB_FILE).exists():
            raise TuneSetupError(f"--resume: no search at {exp}; check NAME and --storage")
        check_private_storage(exp)  # it unpickles Ray's state from there
    else:
        remote = job.remote_experiment()
        if remote is not None:  # object storage: Tune writes there; exp is the local staging
            from modresnet import storage as object_storage

            object_storage.check_writable(remote)
            if object_storage.exists(remote.join(JOB_FILE)):
                raise TuneSetupError(f"{remote} already holds a search; choose another --name")
            staged = names.inside(Path(job.storage), exp, "--name")
            shutil.rmtree(staged, ignore_errors=True)  # staging of an earlier, unpublished try
        if exp.exists() and any(exp.iterdir()):
            raise TuneSetupError(
                f"{exp} already holds a search; continue it with --resume "
                f"{job.name}, or choose another --name"
            )
        exp.mkdir(parents=True, exist_ok=True)
        (exp / JOB_FILE).write_text(json.dumps(job.to_dict(), indent=2))
    if job.workers_per_trial > 1:
        try:
            from jobs.train.worker import train_loop_per_worker  # noqa: F401
        except ImportError as err:
            raise TuneSetupError(
                f"--workers-per-trial {job.workers_per_trial} needs the Ray "
                f"Train worker in jobs/train/worker.py ({err})"
            ) from None

    from ray import tune

    from jobs.tune.progress import ProgressCallback, TrialTable

    wandb = wandb_policy(options.wandb)
    callbacks = _wandb_callbacks(wandb, options, job, info) + [ProgressCallback()]
    connection = connect(options.address, log_file=exp / "ray.log")
    try:
        import ray

        if connection != "embedded":  # a Ray this process started has this process's env
            check_wandb_key_on_this_node(wandb)
        keep_secrets_out_of_trials()

        cpus = ray.cluster_resources().get("CPU", 0)
        if job.cpus_per_trial > cpus:
            raise TuneSetupError(
                f"--cpus-per-trial {job.cpus_per_trial:g} exceeds the "
                f"{cpus:g} CPUs of the Ray cluster"
            )
        if resume:
            if not tune.Tuner.can_restore(str(exp)):
                raise TuneSetupError(
                    f"--resume: {exp} has no Tune experiment state to restore "
                    f"(it was interrupted before the first trial started); "
                    f"start it again under a new --name"
                )
            param_space, _, run_config = _tuner_parts(job, callbacks, verbose)
            try:  # Ray's state names the classes it pickled (callbacks, searcher) by module
                tuner = tune.Tuner.restore(
                    str(exp),
                    trainable=_trainable(job),
                    resume_errored=True,
                    param_space=param_space,
                )
            except ModuleNotFoundError as err:
                raise TuneSetupError(
                    f"--resume: {exp} was started by another version of modresnet or Ray: its "
                    f"saved Ray state needs the module {err.name}, which is not installed here; "
                    f"resume it with that version, or start it again under a new --name"
                ) from None
            _restored_output(tuner, run_config)
            info(f"resuming search {exp}")
        else:
            param_space, tune_config, run_config = _tuner_parts(job, callbacks, verbose)
            tuner = tune.Tuner(
                _trainable(job),
                param_space=param_space,
                tune_config=tune_config,
                run_config=run_config,
            )
        with (
            quiet_tune_output(verbose),
            TrialTable(job, console=console, enabled=not verbose),
            warnings.catch_warnings(),
        ):
            # PBT runs each trial in a fresh process on purpose (reuse_actors above): not advice
            warnings.filterwarnings("ignore", "Consider boosting PBT performance")
            grid = tuner.fit()
        if not job.remote:  # in object storage Tune uploaded each trial folder itself
            sync_wandb_dirs(grid)
        outcome = summarize(grid, job, info)
        remote = job.remote_experiment()
        if remote is not None:
            from modresnet import storage as object_storage

            object_storage.publish(exp, remote)  # test.json files last
            info(f"published the search's outputs to {remote}")
        return outcome
    finally:
        if connection != "existing":
            ray.shutdown()
