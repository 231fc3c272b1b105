"""Ray Train V2 driver: data-parallel training of ModifiedResNet through the one engine.

Each Ray worker runs `train_loop_per_worker`, which builds the same `TrainingState` as the
local path (DDP from `ray.train.torch.prepare_model` goes in through `build_state(wrap=)`),
resumes from `ray.train.get_checkpoint()` and calls `engine.fit` with an `on_epoch` that
reports every epoch to Ray with a checkpoint folder in the core format (rank 0 writes it).

After the fit the driver writes the core run directory, so evaluate/predict/serve read a
Ray run exactly like a local one:

    <storage>/<name>/
      config.yaml  metrics.jsonl  best/  last/  test.json  curves.png  confusion.png
      ray/         Ray Train's own storage (checkpoints, snapshot); resume = same name+storage
      wandb/       W&B files, when W&B is on
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from modresnet import checkpoint, engine
from modresnet.config import Config, from_dict
from modresnet.data import load_cifar10
from modresnet.errors import UserError
from modresnet.model import build_model
from modresnet.rundir import RunDir, finalize

RAY_SUBDIR = "ray"  # Ray Train run storage: <storage>/<name>/ray
log = logging.getLogger(__name__)


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
    wandb: bool | None = None  # None: on when WANDB_API_KEY is set or WANDB_MODE=offline
    wandb_project: str = "modresnet"


@dataclass(frozen=True)
class RayResult:
    run: RunDir
    history: list[dict]
    test: dict
    ray_path: str


# --------------------------------------------------------------------------- W&B


def wandb_settings(requested: bool | None) -> tuple[bool, str | None, str]:
    """(enabled, mode, reason). Auto: on with an API key or WANDB_MODE=offline."""
    mode = os.environ.get("WANDB_MODE", "").lower() or None
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if requested is False or mode == "disabled":
        return False, mode, "W&B off (--no-wandb or WANDB_MODE=disabled)"
    usable = has_key or mode in ("offline", "dryrun")
    if requested is None:
        if usable:
            return True, mode, f"W&B on ({'offline' if mode in ('offline', 'dryrun') else 'online'})"
        return False, mode, "W&B off: set WANDB_API_KEY, or WANDB_MODE=offline to log locally"
    if not usable:
        raise RayTrainSetupError("--wandb: needs WANDB_API_KEY (online) or WANDB_MODE=offline")
    return True, mode, "W&B on"


def wandb_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:120]


def _wandb_init(wb: dict, config: dict):
    import wandb

    return wandb.init(project=wb["project"], id=wb["id"], name=wb["name"], resume="allow",
                      dir=wb["dir"], config=config, mode=wb["mode"] or None)


# --------------------------------------------------------------------------- worker side


def train_loop_per_worker(loop_config: dict) -> dict:
    config: Config = from_dict(loop_config["config"])
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    torch.set_num_threads(max(1, int(loop_config["threads"])))
    rank = ray.train.get_context().get_world_rank()
    device = get_device()
    data = load_cifar10(config.data)
    engine.seed_everything(config.train.seed)
    model = build_model(config.model).to(device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    state = engine.build_state(config, model, len(data.train),
                               wrap=lambda m: prepare_model(m, move_to_device=False))
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            checkpoint.load_training_state(Path(d), state)

    wb = loop_config.get("wandb")
    wandb_run = _wandb_init(wb, config.to_dict()) if wb and rank == 0 else None

    def on_epoch(record: dict, st: engine.TrainingState) -> None:
        if wandb_run is not None:
            wandb_run.log(record, step=record["epoch"])
        with tempfile.TemporaryDirectory(prefix="modresnet-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                checkpoint.save_resumable(Path(tmp), st, config, data.classes, record)
                ckpt = Checkpoint.from_directory(tmp)
            ray.train.report(dict(record), checkpoint=ckpt)  # a barrier: every rank reports

    train, val = engine.to_device(data.train, device), engine.to_device(data.val, device)
    try:
        engine.fit(state, train, val, config, device, on_epoch)
    finally:
        if wandb_run is not None:
            wandb_run.finish()
    return {"epochs": state.epoch}


# --------------------------------------------------------------------------- driver side


def check_storage(run_path: Path) -> None:
    try:
        run_path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise RayTrainSetupError(f"--storage: cannot write to {run_path} "
                                 f"({err.strerror or err})") from None


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds on a host:port nobody listens on (ray.init would retry for a minute)."""
    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayTrainSetupError(f"--address {address!r}: expected HOST:PORT, e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise RayTrainSetupError(f"--address {address}: no Ray cluster reachable there "
                                 f"({err.strerror or err}); start one with `ray start --head` "
                                 f"or drop --address to use a local Ray") from None


def local_token_auth() -> None:
    """Token auth for a Ray this process starts, without Ray's warning or a token file.

    A local `ray.init()` with RAY_AUTH_MODE unset turns token auth on, writes
    ~/.ray/auth_token and warns on every start. Setting the mode explicitly keeps auth on
    and silences the warning; a token only this process tree knows (children inherit the
    environment) keeps the home folder untouched. An explicit RAY_AUTH_MODE is respected."""
    import secrets

    if "RAY_AUTH_MODE" in os.environ:
        return
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ["RAY_AUTH_MODE"] = "token"
    # This process read Ray's config when it imported ray; refresh it as ray.init does when
    # it turns auth on by default (ray._private.authentication.authentication_token_setup).
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


_RAY_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(filename)s:%(lineno)d -- %(message)s"


def ray_logs_to(path: Path) -> None:
    """Send the Python logs of Ray's libraries (ray, ray.tune, ray.train, ray.serve, ...)
    to `path` (appended) instead of the console; call again after importing a Ray library
    that sets up its own console handler (ray.serve does at import). Idempotent."""
    import sys

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["ray"] + sorted(n for n in logging.root.manager.loggerDict if n.startswith("ray."))
    for name in names:
        logger = logging.getLogger(name)
        if not logger.handlers and name != "ray":
            continue
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler):
                continue  # Ray's own files (session logs) stay
            if isinstance(handler, logging.StreamHandler) and (
                    handler.stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
                    or type(handler).__name__ == "PlainRayHandler"):
                logger.removeHandler(handler)
        if logger.propagate and name != "ray":
            continue  # reaches "ray"'s file handler
        target = str(path.resolve())
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == target
                   for h in logger.handlers):
            handler = logging.FileHandler(target, mode="a", encoding="utf-8")
            handler.setFormatter(logging.Formatter(_RAY_LOG_FORMAT))
            logger.addHandler(handler)


def connect(address: str | None, log_file: Path | None = None) -> bool:
    """Connect to (or start) Ray; True when this call started it and must shut it down.
    With `log_file`, Ray's Python logs go there (INFO and up) instead of the console."""
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if ray.is_initialized():
        if log_file is not None:
            ray_logs_to(log_file)
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet = dict(log_to_driver=False,
                 logging_level=logging.INFO if log_file is not None else logging.WARNING)
    if log_file is not None:
        ray_logs_to(log_file)
    if address:
        check_address(address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise RayTrainSetupError(f"--address {address}: cannot connect "
                                     f"({str(err).splitlines()[0]})") from None
    else:
        local_token_auth()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=True,
                 object_store_memory=256 * 1024**2, **quiet)
    if log_file is not None:
        ray_logs_to(log_file)  # ray.init may have set up more of Ray's loggers
    return True


def check_resources(options: RayOptions) -> None:
    import ray

    res = ray.cluster_resources()
    need_cpu = options.workers * options.cpus_per_worker
    if need_cpu > res.get("CPU", 0):
        raise RayTrainSetupError(
            f"--workers {options.workers} x --cpus-per-worker {options.cpus_per_worker:g} needs "
            f"{need_cpu:g} CPUs but the Ray cluster has {res.get('CPU', 0):g}; use fewer workers")
    if options.use_gpu and options.workers > res.get("GPU", 0):
        raise RayTrainSetupError(f"--gpu --workers {options.workers} needs {options.workers} GPUs "
                                 f"but the Ray cluster has {res.get('GPU', 0):g}")


def _progress_callback(queue):
    from ray.train import UserCallback

    class EpochProgress(UserCallback):
        """Runs in the Train controller; forwards rank 0's epoch record to the driver."""

        def after_report(self, run_context, metrics, checkpoint):
            if metrics:
                queue.put(dict(metrics[0]))

    return EpochProgress()


def _copy_checkpoint(src: Path, dst: Path, model_only: bool) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and (not model_only or f.name in (checkpoint.WEIGHTS, checkpoint.META)):
            shutil.copy2(f, tmp / f.name)
    checkpoint.replace_dir(tmp, dst)


def write_run_dir(run: RunDir, config: Config, latest: Path, best: Path) -> list[dict]:
    """The core run directory from Ray's checkpoints: history from the latest, best/ from the
    best by val_acc, last/ with the resumable state."""
    import json

    run.create(config)
    history = json.loads((latest / checkpoint.STATE_META).read_text())["history"]
    run.write_metrics(history)
    _copy_checkpoint(best, run.best, model_only=True)
    _copy_checkpoint(latest, run.last, model_only=False)
    return history


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # what Ray Train resumes a run from


def train_ray(config: Config, run_path: Path, options: RayOptions = RayOptions(),
              resume: bool = False, on_epoch_done: Callable[[dict], None] | None = None,
              info: Callable[[str], None] = print, remote=None) -> RayResult:
    """Train on Ray, holding the run's lock for the whole run (one process per --name).

    With `remote` (a modresnet.storage.Location, the run's URI in an object store) Ray Train's
    storage is `<remote>/ray` (checkpoints and snapshot go there directly, so the same command
    resumes from there on any machine); `run_path` is then a local staging folder where the
    driver writes the core run directory before publishing it to `remote`."""
    run_path = Path(run_path).expanduser().resolve()
    with RunDir(run_path).lock() as run:
        for line in run.recover():
            info(line)
        return _train_ray_locked(config, run_path, run, options, resume, on_epoch_done, info,
                                 remote)


def _train_ray_locked(config: Config, run_path: Path, run: RunDir, options: RayOptions,
                      resume: bool, on_epoch_done: Callable[[dict], None] | None,
                      info: Callable[[str], None], remote=None) -> RayResult:
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
        raise RayTrainSetupError(f"--resume: {run_path} was trained in-process (no {RAY_SUBDIR}/ "
                                 f"folder); resume it with --local")
    elif resume and not has_snapshot:
        raise RayTrainSetupError(f"--resume: {ray_dir}/{RAY_SNAPSHOT} is missing, so run "
                                 f"{run_path.name} has no training state to continue (it never "
                                 f"finished an epoch); start it again under a new --name")
    elif (has_run or has_ray or finished) and not resume:
        raise RayTrainSetupError(f"run directory {remote or run_path} already holds a run; pass --resume "
                                 f"to continue it, or choose another --name")
    check_storage(run_path.parent)
    wb_on, wb_mode, wb_reason = wandb_settings(options.wandb)
    info(wb_reason)

    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    started = connect(options.address, log_file=run_path / "ray.log")
    stop = threading.Event()
    try:
        check_resources(options)
        check_storage(run_path)
        wb = None
        runtime_env = None
        if wb_on:
            wb = {"project": os.environ.get("WANDB_PROJECT", options.wandb_project),
                  "id": wandb_id(run_path.name), "name": run_path.name, "dir": str(run_path),
                  "mode": "offline" if wb_mode in ("offline", "dryrun") else None}
            env = {k: os.environ[k] for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT")
                   if k in os.environ}
            runtime_env = {"env_vars": env} if options.address or os.environ.get("RAY_ADDRESS") else None
        queue = Queue(actor_options={"num_cpus": 0})
        run_config = RunConfig(
            name=RAY_SUBDIR, storage_path=str(remote or run_path),
            checkpoint_config=CheckpointConfig(num_to_keep=options.keep_checkpoints,
                                               checkpoint_score_attribute="val_acc",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=options.max_failures),
            callbacks=[_progress_callback(queue)],
            **({"worker_runtime_env": runtime_env} if runtime_env else {}),
        )
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": config.to_dict(), "threads": options.cpus_per_worker,
                               "wandb": wb},
            torch_config=TorchConfig(backend="nccl" if options.use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=options.workers, use_gpu=options.use_gpu,
                                         resources_per_worker={"CPU": options.cpus_per_worker}),
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
        result = trainer.fit()
        deadline = time.monotonic() + 10
        while printer.is_alive() and not queue.empty() and time.monotonic() < deadline:
            stop.wait(0.2)  # let the last epoch line out before the summary
        stop.set()
        printer.join(timeout=5)

        best = result.get_best_checkpoint(metric="val_acc", mode="max") or result.checkpoint
        if result.checkpoint is None:
            raise RayTrainSetupError(f"Ray Train finished without a checkpoint in {ray_dir}")
        if remote is not None:  # Ray's checkpoints are in the object store: download two
            fetched = Path(tempfile.mkdtemp(prefix="modresnet-ray-ckpt-"))
            latest_dir = Path(result.checkpoint.to_directory(str(fetched / "latest")))
            best_dir = Path(best.to_directory(str(fetched / "best")))
        else:
            fetched, latest_dir, best_dir = None, Path(result.checkpoint.path), Path(best.path)
        history = write_run_dir(run, config, latest_dir, best_dir)
        if fetched is not None:
            shutil.rmtree(fetched, ignore_errors=True)
        try:
            data = load_cifar10(config.data)
            test = finalize(run, data.test, data.classes, torch.device("cpu"))
        except Exception as err:  # training is done and saved: say so, in one line
            _append_traceback(run_path / "ray.log")
            raise RayTrainSetupError(
                f"training finished and {run_path} holds its checkpoints and metrics, but the "
                f"test evaluation failed ({_one_line(err)}); `modresnet evaluate {run_path}` "
                f"evaluates it once that is fixed (traceback in {run_path / 'ray.log'})") from None
        if wb is not None:
            try:
                _log_final_wandb(wb, config, run, test, step=history[-1]["epoch"] + 1)
            except Exception as err:  # W&B is a copy; the run directory is complete
                _append_traceback(run_path / "ray.log")
                info(f"warning: W&B could not record the test result ({_one_line(err)}); the "
                     f"run directory {run_path} is complete and W&B holds every epoch")
        if remote is not None:
            from modresnet import storage

            storage.publish(run_path, remote)  # test.json last: readers see a whole run
            info(f"published the run directory to {remote}")
        return RayResult(run, history, test, result.path)
    finally:
        stop.set()
        if started:
            ray.shutdown()


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


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

    wrun = _wandb_init(wb, config.to_dict())
    payload = {"test_acc": test["test_acc"], "test_loss": test["test_loss"]}
    curves = run.path / "curves.png"
    if curves.exists():
        payload["curves"] = wandb.Image(str(curves))
    wrun.log(payload, step=step)
    wrun.summary.update({"test_acc": test["test_acc"], "best_epoch": test["epoch"]})
    wrun.finish()
