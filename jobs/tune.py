"""Ray Tune driver: a hyperparameter search over ModifiedResNet recipes (random or Optuna's
TPE; ASHA, PBT or FIFO: jobs/tune_search.py).

Every trial trains through the one engine (`engine.fit`). With one worker per trial the
trial itself runs the loop and its `on_epoch` reports each epoch to Tune with a checkpoint
folder in the core format; with more, each trial launches a Ray Train `TorchTrainer` that
runs `jobs.train_worker.train_loop_per_worker` and forwards its reports to Tune.

    <storage>/<name>/
      modresnet-tune.json  the search's settings (base config, space, search, scheduler);
                           --resume reads it
      <trial dirs>/        Ray Tune's per-trial results (progress.csv, result.json,
                           TensorBoard events, checkpoints, wandb/offline-run-*)
      leaderboard.csv      one row per trial: key config values, val accuracy, epochs, early stop
      trials.png           validation accuracy per epoch of every trial, ASHA stops and PBT
                           exploits marked
      best_config.yaml     the best trial's full config (`modresnet train --config` reads it)
      best-run/            the best trial as a core run directory (best/ last/ metrics.jsonl
                           config.yaml test.json curves.png confusion.png): evaluate/predict/serve

The search space is a YAML file of SECTION.FIELD keys (see jobs/search_space.yaml).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from contextlib import nullcontext
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
from jobs.search_space import applicable_nested, trial_config
from jobs.tune_job import JOB_FILE, TuneJob, TuneSetupError
from jobs.tune_results import TuneOutcome, summarize, sync_wandb_dirs
from jobs.tune_search import donor, retune, saved_config
from modresnet import checkpoint, names
from modresnet.assembly import assemble
from modresnet.config import Config
from modresnet.engine import Record, TrainingState
from modresnet.ownership import check_private_storage

# --------------------------------------------------------------------------- trial side


def _report_metrics(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float))}


def run_trial(params: dict, job: TuneJob) -> None:
    """One Tune trial: the config of this point, trained by engine.fit, reported per epoch."""
    from ray import tune

    config = trial_config(job.base, params)
    if job.workers_per_trial > 1:
        return _run_train_trial(config, job)
    resumed = tune.get_checkpoint()
    with resumed.as_directory() if resumed is not None else nullcontext() as d:
        assembled = assemble(
            config, cpus=job.cpus_per_trial, resume_from=Path(d) if d is not None else None
        )
        saved = saved_config(Path(d)) if d is not None else None
        retuned = saved is not None and retune(assembled.state, saved, config)
    cloned = donor(resumed.path, tune.get_context().get_trial_id()) if resumed else None
    # a PBT exploit: the first epoch after it says so, and from whom (W&B, trials.png)
    event = {"pbt_exploit": 1, "pbt_donor": cloned or ""} if cloned or retuned else {}

    def on_epoch(record: Record, state: TrainingState) -> None:
        with tempfile.TemporaryDirectory(prefix="modresnet-tune-") as d:
            checkpoint.save_resumable(Path(d), state, config, assembled.classes, record)
            metrics = {**_report_metrics(record), **event}
            event.clear()
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    assembled.fit(on_epoch)


TRIAL_CPU = 0.01  # what a data-parallel trial holds itself: it only drives its TorchTrainer


def worker_cpus(cpus_per_trial: float, workers: int) -> float:
    """The CPUs each worker of a data-parallel trial reserves: its share of --cpus-per-trial,
    less the trial's own TRIAL_CPU, so that the trial and one worker fit in one share. A trial
    of N CPUs then fits on one N-CPU node and on N one-CPU nodes alike (a whole share per
    worker plus the trial fits neither: it waited forever on a cluster of 1-CPU nodes)."""
    share = cpus_per_trial / workers
    return max(share - TRIAL_CPU, share / 2)


def _run_train_trial(config: Config, job: TuneJob) -> None:
    """A data-parallel trial: a TorchTrainer over jobs.train's worker loop. Its Train run is
    named after the trial, so a restored trial resumes that run from its last checkpoint."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.train_worker import train_loop_per_worker

    workers = job.workers_per_trial
    per_worker_cpu = worker_cpus(job.cpus_per_trial, workers)
    per_worker_gpu = job.gpus_per_trial / workers
    trial_id = tune.get_context().get_trial_id()
    resources = {"CPU": per_worker_cpu, **({"GPU": per_worker_gpu} if per_worker_gpu else {})}
    TorchTrainer(
        train_loop_per_worker,  # type: ignore[arg-type]  # Ray's stub wants -> None
        train_loop_config={
            "config": config.to_dict(),
            "threads": job.cpus_per_trial / workers,
            "wandb": None,
        },
        torch_config=TorchConfig(backend="nccl" if per_worker_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=bool(per_worker_gpu), resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=job.train_storage,
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # a Train callback
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=job.metric,
                checkpoint_score_order=job.mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=1),
        ),
    ).fit()


# --------------------------------------------------------------------------- driver side


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
    grouped by search, tagged and configured with its search algorithm and scheduler."""
    group = job.name
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

    from jobs import tune_search

    space = job.search_space()
    tune_config = tune.TuneConfig(
        metric=job.metric,
        mode=job.mode,
        num_samples=job.samples,
        scheduler=tune_search.scheduler(job, space),
        search_alg=tune_search.search_alg(job, space),
        # The next trial runs in the finished one's process: no new Python importing torch
        # per trial (every trial of a search asks for the same resources). Not under PBT: an
        # exploit in a reused process restored a donor checkpoint that the donor's retention
        # had deleted meanwhile, and the clone failed.
        reuse_actors=job.scheduler != "pbt",
    )
    run_config = tune.RunConfig(
        name=job.name,
        storage_path=job.remote or job.storage,
        callbacks=callbacks,
        checkpoint_config=tune_search.checkpoint_config(job),
        stop={"epoch": job.max_epochs},  # before the scheduler: PBT never clones a finished trial
        failure_config=tune.FailureConfig(max_failures=1),
        verbose=None if verbose else 0,
    )  # 0: no Ray reporter; jobs/tune_progress draws a table
    return tune_search.param_space(job, space), tune_config, run_config


def _restored_output(tuner, run_config) -> None:
    """A restored Tuner brings the pickled RunConfig of the first run; give it this run's
    console settings (reporter verbosity, the progress callback)."""
    from jobs.tune_progress import ProgressCallback

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

    Progress: one compact table of trials on `console` (jobs/tune_progress.py), or with
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
            from jobs.train_worker import train_loop_per_worker  # noqa: F401
        except ImportError as err:
            raise TuneSetupError(
                f"--workers-per-trial {job.workers_per_trial} needs the Ray "
                f"Train worker in jobs/train_worker.py ({err})"
            ) from None

    from ray import tune

    from jobs.tune_progress import ProgressCallback, TrialTable

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
            tuner = tune.Tuner.restore(
                str(exp), trainable=_trainable(job), resume_errored=True, param_space=param_space
            )
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
