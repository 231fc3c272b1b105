"""`modresnet train`: on Ray Train by default (jobs/train/driver.py), in this process with --local
(modresnet.commands). Ray and torch are imported when the command runs."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modresnet import config as configs
from modresnet.cli_common import (
    RayAddress,
    Wandb,
    default_name,
    describe,
    epoch_line,
    print_run_result,
    say,
    user_errors,
)
from modresnet.cli_config import ConfigFile, Preset, Sets, build_config, config_flags
from modresnet.errors import UserError

if TYPE_CHECKING:
    from modresnet.storage import Location


def ray_default_name(
    preset: str, cfg: configs.Config, root: Path, remote: Location | None = None
) -> str:
    """Deterministic for the Ray path: PRESET-<config hash>, so re-running the same command
    after a crash resumes the unfinished run; a finished one gets the next -2, -3, ...
    (`remote`: the object-storage root, where finished runs are looked for instead)."""
    from modresnet import storage as object_storage

    base = f"{preset}-{hashlib.sha256(cfg.to_yaml().encode()).hexdigest()[:8]}"
    for i in range(1, 1000):
        candidate = base if i == 1 else f"{base}-{i}"
        if not (
            object_storage.exists(remote.join(candidate, "test.json"))
            if remote is not None
            else (root / candidate / "test.json").exists()
        ):
            return candidate
    return default_name(preset)


def _train_on_ray(
    cfg: configs.Config, run_path: Path, resume: bool, remote: Location | None, **options: Any
) -> None:
    from jobs.train.driver import RayOptions, train_ray

    start = time.perf_counter()
    result = train_ray(
        cfg,
        run_path,
        RayOptions(**options),
        resume=resume,
        remote=remote,
        on_epoch_done=lambda record: say(epoch_line(record, cfg.train.epochs)),
        info=lambda line: say(f"[dim]{line}[/]"),
    )
    print_run_result(
        result.test,
        remote or result.run.path,
        result.run.path,
        extra_files=("ray/", "ray.log"),
        how=f" in {time.perf_counter() - start:.0f}s on {options['workers']} Ray worker(s)",
    )


@user_errors
@config_flags(
    "epochs",
    "subset",
    "data_dir",
    "batch_size",
    "lr",
    "weight_decay",
    "optimizer",
    "schedule",
    "flavor",
    "seed",
    "device",
)
def train(
    overrides: dict[str, Any],
    preset: Preset = None,
    config_file: ConfigFile = None,
    sets: Sets = None,
    storage: Annotated[
        Path | None,
        typer.Option(
            help="Folder for runs (default ~/modresnet-runs or $MODRESNET_RUNS), or "
            "s3://BUCKET/PREFIX, gs://..., file://... (Ray path only)."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default PRESET-TIMESTAMP).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the run NAME from its last checkpoint.")
    ] = False,
    local: Annotated[
        bool, typer.Option("--local", help="Train in this process without Ray.")
    ] = False,
    workers: Annotated[int, typer.Option(help="Ray Train data-parallel workers.")] = 2,
    gpu: Annotated[
        bool, typer.Option("--gpu/--no-gpu", help="One GPU per worker (nccl), else CPU (gloo).")
    ] = False,
    cpus_per_worker: Annotated[
        float, typer.Option(help="CPUs (and torch threads) per worker.")
    ] = 1.0,
    address: RayAddress = None,
    max_failures: Annotated[
        int, typer.Option(help="Worker-group restarts from the latest checkpoint.")
    ] = 3,
    wandb: Wandb = True,
) -> None:
    """Train ModifiedResNet on CIFAR-10 into a run directory (Ray Train; --local: in-process)."""
    from modresnet import names
    from modresnet import storage as object_storage
    from modresnet.commands import train_in_process
    from modresnet.rundir import default_storage

    if name is not None:
        names.name(name, "--name")
    if resume and not name:
        raise UserError("--resume needs --name NAME of the run to continue")
    preset = preset or "paper"
    cfg = build_config(preset, config_file, overrides, sets)
    where = object_storage.parse(storage) or default_storage()
    remote_root = where if isinstance(where, object_storage.Location) else None
    if remote_root is not None and local:
        raise UserError(
            f"--local trains into a local folder; for --storage {remote_root} train "
            f"on Ray Train (drop --local), whose checkpoints go to the object store"
        )
    root = object_storage.local_root(where)
    run_name = name or (
        default_name(preset) if local else ray_default_name(preset, cfg, root, remote=remote_root)
    )
    run_path = root / run_name
    remote = remote_root.join(run_name) if remote_root is not None else None
    if resume and remote is None and not run_path.exists():
        raise UserError(f"--resume: no run at {run_path}; check --name and --storage")
    say(f"run directory: {remote or run_path}")
    say(describe(cfg))
    if local:
        train_in_process(cfg, run_path, resume)
    else:
        _train_on_ray(
            cfg,
            run_path,
            resume,
            remote,
            workers=workers,
            use_gpu=gpu,
            cpus_per_worker=cpus_per_worker,
            address=address,
            max_failures=max_failures,
            wandb=wandb,
        )
