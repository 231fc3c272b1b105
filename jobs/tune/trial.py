"""The trial side of a `modresnet tune` search: what each Tune trial runs (`run_trial`, the
trainable Ray records by its name), in its own process or as the driver of a data-parallel
Ray Train run; and how a PBT exploit's new hyperparameters take effect on the donor's
optimizer state."""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path

from ray.train import UserCallback

from jobs.tune.job import TuneJob
from jobs.tune.space import trial_config
from modresnet import checkpoint
from modresnet import config as configs
from modresnet.assembly import assemble
from modresnet.config import Config
from modresnet.engine import Record, TrainingState


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


class ToTrial(UserCallback):
    """A Ray Train callback (run in the Train controller) that hands each report of the run to
    its Tune trial through `queue`, for the trial's own thread to report to Tune.

    Not Ray's TuneReportCallback: with it, Tune's main thread moves each report into the
    trial's one-slot result queue while the trial's thread, once fit() returns, puts its final
    result into the same slot; when the run's last report is still on its way, the main thread
    then waits on a full slot forever (Ray 2.60, ray/train/_internal/session.py
    `_get_result_from_queues`): a data-parallel search hung after a trial's last epoch."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        item = dict(metrics[0])
        if checkpoint is not None:  # where the trial's files are (jobs/tune/results.py)
            item["checkpoint_path"] = checkpoint.path
        self.queue.put(item)  # blocks while the trial's previous report is still in Tune


def _run_train_trial(config: Config, job: TuneJob) -> None:
    """A data-parallel trial: a TorchTrainer over the Train worker loop (jobs/train/worker.py),
    run on a thread of its own while this one reports its epochs to Tune as they arrive, all of
    them before it returns. A trial ASHA stops ends with its process (jobs/tune/driver.py: no
    process reuse for these), and the Train run with it. Its Train run is named after the
    trial, so a restored trial resumes that run from its last checkpoint."""
    import threading

    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    from jobs.train.worker import train_loop_per_worker

    workers = job.workers_per_trial
    per_worker_cpu = worker_cpus(job.cpus_per_trial, workers)
    per_worker_gpu = job.gpus_per_trial / workers
    trial_id = tune.get_context().get_trial_id()
    resources = {"CPU": per_worker_cpu, **({"GPU": per_worker_gpu} if per_worker_gpu else {})}
    reports = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
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
            callbacks=[ToTrial(reports)],  # type: ignore[list-item]  # a Train callback
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=job.metric,
                checkpoint_score_order=job.mode,
            ),
            failure_config=ray.train.FailureConfig(max_failures=1),
        ),
    )
    failed: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as err:  # noqa: BLE001 - raised again on the trial's thread
            failed.append(err)

    runner = threading.Thread(target=fit, name="modresnet-train-run", daemon=True)
    runner.start()
    while runner.is_alive() or not reports.empty():  # its last report is queued by then
        try:
            tune.report(reports.get(timeout=0.5))  # SystemExit here: Tune stopped the trial
        except Empty:
            continue
    if failed:
        raise failed[0]


# --------------------------------------------------------------------------- PBT exploits


def saved_config(directory: Path) -> Config | None:
    """The config a checkpoint folder was trained with (None for a foreign folder), read by
    the checkpoint module's own validated sidecar reader."""
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
