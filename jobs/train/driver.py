"""Ray Train V2 driver: data-parallel training of ModifiedResNet through the one engine.

Each Ray worker runs `jobs.train.worker.train_loop_per_worker` (the one run assembler, then
`engine.fit`, reporting every epoch to Ray with a checkpoint folder in the core format).

After the fit the driver writes the core run directory, so evaluate/predict/serve read a
Ray run exactly like a local one:

    <storage>/<name>/
      config.yaml  metrics.jsonl  best/  last/  test.json  curves.png  confusion.png
      ray/         Ray Train's own storage (checkpoints, snapshot); resume = same name+storage
      wandb/       W&B files (on unless --no-wandb: jobs.runtime.wandb_policy)
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from jobs.runtime import connect, resolve_address, wandb_policy
from jobs.train.worker import train_loop_per_worker, wandb_init
from modresnet.config import Config
from modresnet.data import load_cifar10
from modresnet.errors import UserError, one_line
from modresnet.evaluation import finalize
from modresnet.rundir import RunDir, RunExistsError, write_run_dir

RAY_SUBDIR = "ray"  # Ray Train run storage: <storage>/<name>/ray


class RayTrainSetupError(UserError):
    """The cluster, the storage or the requested workers cannot run this job."""


@dataclass(frozen=True)
class RayOptions:
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    address: str | None = None  # None: RAY_ADDRESS, else an embedded local Ray
    max_failures: int = 3
    keep_checkpoints: int = 2  # best k by val_acc, plus the latest
    wandb: bool | None = True  # only False turns W&B off (jobs.runtime.wandb_policy)
    wandb_project: str = "modresnet"


@dataclass(frozen=True)
class RayResult:
    run: RunDir
    history: list[dict]
    test: dict
    ray_path: str


# --------------------------------------------------------------------------- W&B


def wandb_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:120]


# --------------------------------------------------------------------------- driver side


def check_storage(run_path: Path) -> None:
    try:
        run_path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise RayTrainSetupError(
            f"--storage: cannot write to {run_path} ({err.strerror or err})"
        ) from None


def check_resources(options: RayOptions) -> None:
    import ray

    res = ray.cluster_resources()
    need_cpu = options.workers * options.cpus_per_worker
    if need_cpu > res.get("CPU", 0):
        raise RayTrainSetupError(
            f"--workers {options.workers} x --cpus-per-worker {options.cpus_per_worker:g} needs "
            f"{need_cpu:g} CPUs but the Ray cluster has {res.get('CPU', 0):g}; use fewer workers"
        )
    if options.use_gpu and options.workers > res.get("GPU", 0):
        raise RayTrainSetupError(
            f"--gpu --workers {options.workers} needs {options.workers} GPUs "
            f"but the Ray cluster has {res.get('GPU', 0):g}"
        )


def _progress_callback(queue):
    from ray.train import UserCallback

    class EpochProgress(UserCallback):
        """Runs in the Train controller; forwards rank 0's epoch record to the driver, and
        ends the run at a worker's UserError (a node without its W&B key): an error raised
        here is a controller error, which Train does not retry as it does a worker's."""

        def after_report(self, run_context, metrics, checkpoint):
            if metrics:
                queue.put(dict(metrics[0]))

        def after_exception(self, run_context, worker_exceptions):
            for error in worker_exceptions.values():
                if isinstance(error, UserError):
                    raise error

    return EpochProgress()


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # what Ray Train resumes a run from


def scoring_device(options: RayOptions) -> torch.device:
    """Where the finished run's test set is scored: a GPU run's on this node's GPU (the
    workers have released theirs by then), else the CPU."""
    if options.use_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def train_ray(
    config: Config,
    run_path: Path,
    options: RayOptions = RayOptions(),
    resume: bool = False,
    on_epoch_done: Callable[[dict], None] | None = None,
    info: Callable[[str], None] = print,
    remote=None,
) -> RayResult:
    """Train on Ray, holding the run's lock for the whole run (one process per --name).

    With `remote` (a modresnet.storage.Location, the run's URI in an object store) Ray Train's
    storage is `<remote>/ray` (checkpoints and snapshot go there directly, so the same command
    resumes from there on any machine); `run_path` is then a local staging folder where the
    driver writes the core run directory before publishing it to `remote`."""
    run_path = Path(run_path).expanduser().resolve()
    with RunDir(run_path).lock() as run:
        for line in run.recover():
            info(line)
        return _train_ray_locked(
            config, run_path, run, options, resume, on_epoch_done, info, remote
        )


def _train_ray_locked(
    config: Config,
    run_path: Path,
    run: RunDir,
    options: RayOptions,
    resume: bool,
    on_epoch_done: Callable[[dict], None] | None,
    info: Callable[[str], None],
    remote=None,
) -> RayResult:
    if options.workers < 1:
        raise RayTrainSetupError(f"--workers: need at least 1, got {options.workers}")
    if options.cpus_per_worker <= 0:
        raise RayTrainSetupError("--cpus-per-worker: must be positive")
    if options.use_gpu and config.train.device == "cpu":
        raise RayTrainSetupError("--gpu contradicts train.device cpu")
    ray_dir = run_path / RAY_SUBDIR
    if remote is not None:
        from modresnet import storage

        storage.check_writable(remote)
        ray_dir = remote.join(RAY_SUBDIR)
        has_ray, has_snapshot = storage.exists(ray_dir), storage.exists(ray_dir.join(RAY_SNAPSHOT))
        finished, has_run = storage.exists(remote.join(storage.FINISHED)), False
    else:
        has_ray, has_snapshot = ray_dir.exists(), (ray_dir / RAY_SNAPSHOT).exists()
        finished, has_run = run.test_file.exists(), run.exists()
    if has_ray and not finished and not resume:
        resume = True  # an unfinished Ray run of this name: re-running the command resumes it
        info(f"resuming the unfinished Ray run in {ray_dir}")
    elif resume and not has_ray and has_run:
        raise RayTrainSetupError(
            f"--resume: {run_path} was trained in-process (no {RAY_SUBDIR}/ "
            f"folder); resume it with --local"
        )
    elif resume and not has_snapshot:
        raise RayTrainSetupError(
            f"--resume: {ray_dir}/{RAY_SNAPSHOT} is missing, so run "
            f"{run_path.name} has no training state to continue (it never "
            f"finished an epoch); start it again under a new --name"
        )
    elif (has_run or has_ray or finished) and not resume:
        raise RunExistsError.at(remote or run_path)
    check_storage(run_path.parent)
    wandb = wandb_policy(options.wandb)
    info(wandb.reason)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    connection = connect(options.address, log_file=run_path / "ray.log")
    stop = threading.Event()
    try:
        check_resources(options)
        check_storage(run_path)
        wb = None
        runtime_env = None
        if wandb.enabled:
            wb = {
                "project": os.environ.get("WANDB_PROJECT", options.wandb_project),
                "id": wandb_id(run_path.name),
                "name": run_path.name,
                "dir": str(run_path),
                "mode": "offline" if wandb.mode == "offline" else None,
            }
            if resolve_address(options.address):  # workers on other nodes log the same way
                runtime_env = {"env_vars": wandb.worker_env()}
        queue = Queue(actor_options={"num_cpus": 0})
        run_config = RunConfig(
            name=RAY_SUBDIR,
            storage_path=str(remote or run_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=options.keep_checkpoints,
                checkpoint_score_attribute="val_acc",
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=options.max_failures),
            callbacks=[_progress_callback(queue)],
            worker_runtime_env=runtime_env,  # type: ignore[call-arg]  # V2's RunConfig
        )
        trainer = TorchTrainer(
            train_loop_per_worker,  # type: ignore[arg-type]  # Ray's type omits return_value
            train_loop_config={
                "config": config.to_dict(),
                "threads": options.cpus_per_worker,
                "wandb": wb,
            },
            torch_config=TorchConfig(backend="nccl" if options.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=options.workers,
                use_gpu=options.use_gpu,
                resources_per_worker={"CPU": options.cpus_per_worker},
            ),
            run_config=run_config,
        )

        def pump() -> None:
            while not stop.is_set():
                try:
                    record = queue.get(timeout=0.5)
                except Empty:
                    continue
                except Exception:  # the queue actor went away with the cluster
                    return
                if on_epoch_done is not None:
                    on_epoch_done(record)

        printer = threading.Thread(target=pump, daemon=True)
        printer.start()
        result = _fit(trainer)
        deadline = time.monotonic() + 10
        while printer.is_alive() and not queue.empty() and time.monotonic() < deadline:
            stop.wait(0.2)  # let the last epoch line out before the summary
        stop.set()
        printer.join(timeout=5)

        latest = result.checkpoint
        if latest is None:
            raise RayTrainSetupError(f"Ray Train finished without a checkpoint in {ray_dir}")
        best = result.get_best_checkpoint(metric="val_acc", mode="max") or latest
        if remote is not None:  # Ray's checkpoints are in the object store: download two
            fetched = Path(tempfile.mkdtemp(prefix="modresnet-ray-ckpt-"))
            latest_dir = Path(latest.to_directory(str(fetched / "latest")))
            best_dir = Path(best.to_directory(str(fetched / "best")))
        else:
            fetched, latest_dir, best_dir = None, Path(latest.path), Path(best.path)
        history = write_run_dir(run, config, latest_dir, best_dir)
        if fetched is not None:
            shutil.rmtree(fetched, ignore_errors=True)
        try:
            data = load_cifar10(config.data)
            test = finalize(run, data.test, data.classes, scoring_device(options))
        except Exception as err:  # training is done and saved: say so, in one line
            _append_traceback(run_path / "ray.log")
            raise RayTrainSetupError(
                f"training finished and {run_path} holds its checkpoints and metrics, but the "
                f"test evaluation failed ({type(err).__name__}: {one_line(err)}); "
                f"`modresnet evaluate {run_path}` "
                f"evaluates it once that is fixed (traceback in {run_path / 'ray.log'})"
            ) from None
        if wb is not None:
            try:
                _log_final_wandb(wb, config, run, test, step=history[-1]["epoch"] + 1)
            except Exception as err:  # W&B is a copy; the run directory is complete
                _append_traceback(run_path / "ray.log")
                info(
                    "warning: W&B could not record the test result "
                    f"({type(err).__name__}: {one_line(err)}); the "
                    f"run directory {run_path} is complete and W&B holds every epoch"
                )
        if remote is not None:
            from modresnet import storage

            storage.publish(run_path, remote)  # test.json last: readers see a whole run
            info(f"published the run directory to {remote}")
        return RayResult(run, history, test, result.path)
    finally:
        stop.set()
        if connection != "existing":
            ray.shutdown()


def _fit(trainer):
    """trainer.fit(), with a worker's UserError as its one line instead of Ray's report of
    every worker's traceback (from the controller, `EpochProgress`, or from the workers)."""
    from ray.train import TrainingFailedError

    try:
        return trainer.fit()
    except TrainingFailedError as err:
        causes = [getattr(err, "controller_failure", None)]
        causes += list(getattr(err, "worker_failures", {}).values())
        for cause in causes:
            if isinstance(cause, UserError):
                raise RayTrainSetupError(str(cause)) from None
        raise


def _append_traceback(path: Path) -> None:
    import traceback

    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(traceback.format_exc())
    except OSError:
        pass


def _log_final_wandb(wb: dict, config: Config, run: RunDir, test: dict, step: int) -> None:
    """The test result, as the step after the last epoch: the epochs were logged at steps
    1..N by rank 0, and W&B drops a step lower than one it has (an offline resume starts its
    counter at 0, so the step must be explicit)."""
    import wandb

    wrun = wandb_init(wb, config.to_dict())
    payload = {"test_acc": test["test_acc"], "test_loss": test["test_loss"]}
    curves = run.path / "curves.png"
    if curves.exists():
        payload["curves"] = wandb.Image(str(curves))
    wrun.log(payload, step=step)
    wrun.summary.update({"test_acc": test["test_acc"], "best_epoch": test["epoch"]})
    wrun.finish()
