"""`modresnet`: the command line. A thin typer layer: parse, build a typed config, call the
core (or the Ray drivers in jobs/ and serve/), print. User errors exit 2 with one line."""

from __future__ import annotations

import functools
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modresnet import config as configs
from modresnet.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train, tune and serve ModifiedResNet CIFAR-10 classifiers.")
console = Console()
err_console = Console(stderr=True)


USER_ERRORS = (UserError, FileExistsError)


def user_errors(fn):
    """Turn user-fixable errors into one red line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


# Options shared by every command that builds a training config (train, tune, jobs submit).
Preset = Annotated[str, typer.Option(help=f"Recipe to start from: {', '.join(configs.PRESETS)}.")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="YAML config; overrides the preset.")]
Epochs = Annotated[Optional[int], typer.Option(help="train.epochs")]
Subset = Annotated[Optional[int], typer.Option(help="Stratified number of training images (data.subset).")]
DataDir = Annotated[Optional[str], typer.Option(help="Folder holding cifar-10-batches-py (else $MODRESNET_DATA, else ~/.cache/modresnet).")]
BatchSize = Annotated[Optional[int], typer.Option(help="train.batch_size (per worker)")]
Lr = Annotated[Optional[float], typer.Option(help="optim.lr")]
WeightDecay = Annotated[Optional[float], typer.Option(help="optim.weight_decay")]
Optimizer = Annotated[Optional[str], typer.Option(help="optim.name: adam | adamw | sgd")]
Schedule = Annotated[Optional[str], typer.Option(help="schedule.name: plateau | onecycle | cosine | constant")]
Flavor = Annotated[Optional[str], typer.Option(help="Model flavor: paper | debug (model.flavor)")]
Seed = Annotated[Optional[int], typer.Option(help="train.seed")]
Device = Annotated[Optional[str], typer.Option(help="train.device: auto | cpu | cuda")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Any config field, as SECTION.FIELD=VALUE (YAML value); repeatable.")]


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    out = {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. optim.lr=0.01")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def build_config(preset: str, config_file: Path | None, *, epochs=None, subset=None, data_dir=None,
                 batch_size=None, lr=None, weight_decay=None, optimizer=None, schedule=None,
                 flavor=None, seed=None, device=None, sets=None, extra=None) -> configs.Config:
    flags = {"train.epochs": epochs, "data.subset": subset, "data.data_dir": data_dir,
             "train.batch_size": batch_size, "optim.lr": lr, "optim.weight_decay": weight_decay,
             "optim.name": optimizer, "schedule.name": schedule, "model.flavor": flavor,
             "train.seed": seed, "train.device": device, **(extra or {})}
    overrides = {k: v for k, v in flags.items() if v is not None}
    overrides.update(parse_sets(sets))
    return configs.resolve(preset, config_file, overrides)


def default_name(preset: str) -> str:
    return f"{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def ray_default_name(preset: str, cfg: configs.Config, root: Path, remote=None) -> str:
    """Deterministic for the Ray path: PRESET-<config hash>, so re-running the same command
    after a crash resumes the unfinished run; a finished one gets the next -2, -3, ...
    (`remote`: the object-storage root, where finished runs are looked for instead)."""
    import hashlib

    from modresnet import storage as object_storage

    base = f"{preset}-{hashlib.sha256(cfg.to_yaml().encode()).hexdigest()[:8]}"
    for i in range(1, 1000):
        candidate = base if i == 1 else f"{base}-{i}"
        if not (object_storage.exists(remote.join(candidate, "test.json")) if remote is not None
                else (root / candidate / "test.json").exists()):
            return candidate
    return default_name(preset)


def describe(cfg: configs.Config) -> str:
    """What a run trains, in one line: model flavor and size, data, epochs, recipe."""
    from modresnet.model import build_model

    flavor = next((name for name, m in configs.FLAVORS.items() if m == cfg.model), "custom")
    params = sum(p.numel() for p in build_model(cfg.model).parameters())
    train_n = cfg.data.subset or 50000 - cfg.data.val_size
    test_n = cfg.data.test_subset or 10000
    return (f"training ModifiedResNet ({flavor} flavor, {params:,} parameters) on {train_n:,} "
            f"CIFAR-10 training images for {cfg.train.epochs} epochs ({cfg.optim.name} lr "
            f"{cfg.optim.lr:g}, {cfg.schedule.name} schedule, batch {cfg.train.batch_size} per "
            f"worker); test set: {test_n:,} images")


def epoch_line(record: dict, total: int) -> str:
    return (f"epoch {record['epoch']:>3}/{total}  train {record['train_loss']:.3f} / "
            f"{100 * record['train_acc']:5.1f}%  val {record['val_loss']:.3f} / "
            f"{100 * record['val_acc']:5.1f}%  lr {record['lr']:.2e}  "
            f"{record['images_per_s']:.0f} img/s  {record['epoch_s']:.1f}s")


@app.command()
@user_errors
def summary(flavor: Annotated[str, typer.Option(help="paper | debug")] = "paper") -> None:
    """Per-layer table of ModifiedResNet and its memory totals (the paper's Figure 2)."""
    from modresnet.model import FLAVORS, build_model
    from modresnet.summary import summarize

    if flavor not in FLAVORS:
        raise UserError(f"--flavor: must be one of {', '.join(FLAVORS)}; got {flavor!r}")
    s = summarize(build_model(FLAVORS[flavor]))
    table = Table(title=f"ModifiedResNet ({flavor})")
    table.add_column("Layer (type)")
    table.add_column("Output Shape")
    table.add_column("Param #", justify="right")
    for row in s.rows:
        table.add_row(row.name, str(list(row.output_shape)), f"{row.params:,}")
    console.print(table)
    console.print(f"Total params: {s.total_params:,}\nTrainable params: {s.trainable_params:,}\n"
                  f"Non-trainable params: {s.total_params - s.trainable_params:,}\n"
                  f"Input size (MB): {s.input_mb:.2f}\n"
                  f"Forward/backward pass size (MB): {s.forward_backward_mb:.2f}\n"
                  f"Params size (MB): {s.params_mb:.2f}\n"
                  f"Estimated Total Size (MB): {s.total_mb:.2f}")


@app.command()
@user_errors
def train(
    preset: Preset = "paper",
    config_file: ConfigFile = None,
    epochs: Epochs = None,
    subset: Subset = None,
    data_dir: DataDir = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    weight_decay: WeightDecay = None,
    optimizer: Optimizer = None,
    schedule: Schedule = None,
    flavor: Flavor = None,
    seed: Seed = None,
    device: Device = None,
    sets: Sets = None,
    storage: Annotated[Optional[Path], typer.Option(help="Folder for runs (default ~/modresnet-runs or $MODRESNET_RUNS), or s3://BUCKET/PREFIX, gs://..., file://... (Ray path only).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (default PRESET-TIMESTAMP).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run NAME from its last checkpoint.")] = False,
    local: Annotated[bool, typer.Option("--local", help="Train in this process without Ray.")] = False,
    workers: Annotated[int, typer.Option(help="Ray Train data-parallel workers.")] = 2,
    gpu: Annotated[bool, typer.Option("--gpu/--no-gpu", help="One GPU per worker (nccl), else CPU (gloo).")] = False,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs (and torch threads) per worker.")] = 1.0,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster HOST:PORT (else $RAY_ADDRESS, else an embedded local Ray).")] = None,
    max_failures: Annotated[int, typer.Option(help="Worker-group restarts from the latest checkpoint.")] = 3,
    wandb: Annotated[Optional[bool], typer.Option("--wandb/--no-wandb", help="Log to W&B (default: on with WANDB_API_KEY or WANDB_MODE=offline).")] = None,
) -> None:
    """Train ModifiedResNet on CIFAR-10 and write a run directory (Ray Train; --local: in-process)."""
    from modresnet.local import RunExistsError, train_local
    from modresnet.rundir import default_storage

    if resume and not name:
        raise UserError("--resume needs --name NAME of the run to continue")
    cfg = build_config(preset, config_file, epochs=epochs, subset=subset, data_dir=data_dir,
                       batch_size=batch_size, lr=lr, weight_decay=weight_decay, optimizer=optimizer,
                       schedule=schedule, flavor=flavor, seed=seed, device=device, sets=sets)
    from modresnet import storage as object_storage

    where = object_storage.parse(storage) or default_storage()
    remote_root = where if object_storage.is_remote(where) else None
    if remote_root is not None and local:
        raise UserError(f"--local trains into a local folder; for --storage {remote_root} train "
                        f"on Ray Train (drop --local), whose checkpoints go to the object store")
    root = object_storage.staging_root(remote_root) if remote_root else where.expanduser()
    run_name = name or (default_name(preset) if local
                        else ray_default_name(preset, cfg, root, remote=remote_root))
    run_path = root / run_name
    remote = remote_root.join(run_name) if remote_root is not None else None
    if resume and remote is None and not run_path.exists():
        raise UserError(f"--resume: no run at {run_path}; check --name and --storage")
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.3f}"),
                        TimeElapsedColumn(), console=console, transient=True)
    task = progress.add_task("train", total=None, epoch=1, loss=float("nan"))

    last_loss_read = [0.0]

    def on_batch(step: int, steps: int, loss) -> None:
        now = time.monotonic()  # reading the loss waits for the GPU: a few times a second
        if now - last_loss_read[0] > 0.5 or step == steps:
            last_loss_read[0] = now
            progress.update(task, completed=step, total=steps, loss=float(loss))
        else:
            progress.update(task, completed=step, total=steps)

    def on_epoch(record: dict) -> None:
        progress.console.print(epoch_line(record, cfg.train.epochs), highlight=False, soft_wrap=True)
        progress.update(task, completed=0, epoch=record["epoch"] + 1)

    console.print(f"run directory: {remote or run_path}", highlight=False, soft_wrap=True)
    console.print(describe(cfg), highlight=False, soft_wrap=True)
    if not local:
        _train_on_ray(cfg, run_path, resume, remote=remote, workers=workers, use_gpu=gpu,
                      cpus_per_worker=cpus_per_worker, address=address,
                      max_failures=max_failures, wandb=wandb)
        return
    try:
        with progress:
            result = train_local(cfg, run_path, resume=resume, on_batch=on_batch,
                                 on_epoch_done=on_epoch)
    except RunExistsError as err:
        raise UserError(str(err)) from None
    test = result.test
    console.print(f"[bold green]test accuracy {100 * test['test_acc']:.2f}%[/] on {test['n']:,} "
                  f"test images (best epoch {test['epoch']}, validation "
                  f"{100 * test['val_acc']:.2f}%)")
    console.print(f"outputs: {result.run.path}  (metrics.jsonl, curves.png, confusion.png, "
                  f"best/, last/, test.json)", highlight=False, soft_wrap=True)
    console.print(f"learning curves: {result.run.path / 'curves.png'}", highlight=False,
                  soft_wrap=True)


def _train_on_ray(cfg: configs.Config, run_path: Path, resume: bool, remote=None,
                  **options: Any) -> None:
    """The Ray Train path (jobs/train.py); Ray is imported only there."""
    from jobs.train import RayOptions, train_ray

    start = time.perf_counter()
    result = train_ray(cfg, run_path, RayOptions(**options), resume=resume, remote=remote,
                       on_epoch_done=lambda record: console.print(
                           epoch_line(record, cfg.train.epochs), highlight=False, soft_wrap=True),
                       info=lambda line: console.print(f"[dim]{line}[/]", highlight=False,
                                                       soft_wrap=True))
    test = result.test
    console.print(f"[bold green]test accuracy {100 * test['test_acc']:.2f}%[/] on {test['n']:,} "
                  f"test images (best epoch {test['epoch']}, validation "
                  f"{100 * test['val_acc']:.2f}%) in {time.perf_counter() - start:.0f}s on "
                  f"{options['workers']} Ray worker(s)", soft_wrap=True)
    console.print(f"outputs: {remote or result.run.path}  (metrics.jsonl, curves.png, "
                  f"confusion.png, best/, last/, test.json, ray/, ray.log)", highlight=False,
                  soft_wrap=True)
    console.print(f"learning curves: {result.run.path / 'curves.png'}", highlight=False,
                  soft_wrap=True)


@app.command()
@user_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory or checkpoint folder.")],
    tta: Annotated[bool, typer.Option(help="Average with the mirrored image.")] = False,
    data_dir: DataDir = None,
    subset: Annotated[Optional[int], typer.Option(help="Stratified number of test images.")] = None,
) -> None:
    """Evaluate a checkpoint on the CIFAR-10 test set; prints JSON."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    from modresnet.data import load_cifar10
    from modresnet.inference import Predictor

    predictor = Predictor.from_path(_local_run(checkpoint), tta=tta)
    data_cfg = dataclasses.replace(predictor.loaded.config.data, data_dir=data_dir,
                                   test_subset=subset, subset=None, val_subset=None)
    test = load_cifar10(data_cfg).test
    probs = predictor.probabilities(test.x)
    pred = probs.argmax(1)
    result = {"checkpoint": str(predictor.loaded.path), "sha256": predictor.loaded.sha256,
              "n": len(test), "tta": tta,
              "test_acc": float((pred == test.y).float().mean()),
              "test_loss": float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), test.y))}
    print(json.dumps(result, indent=2))


@app.command()
@user_errors
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG/JPEG/... files of any size and mode.")],
    checkpoint: Annotated[Optional[Path], typer.Option(help="Run directory or checkpoint folder.")] = None,
    top_k: Annotated[int, typer.Option(help="Classes to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    url: Annotated[Optional[str], typer.Option(help="Ask a running `modresnet serve` at this URL instead of loading a checkpoint (API key from $MODRESNET_API_KEY).")] = None,
) -> None:
    """Classify image files with a checkpoint, or over HTTP with --url."""
    if url is not None:
        if checkpoint is not None:
            raise UserError("pass either --checkpoint (local) or --url (a server), not both")
        _predict_url(images, url, top_k, as_json)
        return
    import torch

    from modresnet.images import ImageError, decode_image
    from modresnet.inference import Predictor

    if checkpoint is None:
        raise UserError("predict needs --checkpoint RUN_OR_CHECKPOINT or --url URL")
    decoded = []
    for path in images:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise UserError(f"{path}: cannot read ({err.strerror})") from None
        try:
            decoded.append(decode_image(data))
        except ImageError as err:
            raise ImageError(f"{path}: {err}") from None
    predictor = Predictor.from_path(_local_run(checkpoint))
    results = predictor.top_k(predictor.probabilities(torch.stack(decoded)), top_k)
    if as_json:
        print(json.dumps([{"image": str(p), "top_k": [{"label": r.label, "probability": r.probability}
                                                       for r in rs]} for p, rs in zip(images, results)], indent=2))
        return
    table = Table()
    table.add_column("image", overflow="fold")
    for i in range(len(results[0])):
        table.add_column(f"#{i + 1}")
    for path, rs in zip(images, results):
        table.add_row(str(path), *[f"{r.label} {100 * r.probability:.1f}%" for r in rs])
    console.print(table)


@app.command()
@user_errors
def tune(
    preset: Preset = "paper",
    config_file: ConfigFile = None,
    subset: Subset = None,
    data_dir: DataDir = None,
    flavor: Flavor = None,
    seed: Seed = None,
    device: Device = None,
    sets: Sets = None,
    space: Annotated[Optional[Path], typer.Option(help="Search-space YAML (default jobs/search_space.yaml).")] = None,
    samples: Annotated[int, typer.Option(help="Trials to run (the paper point counts as one).")] = 8,
    max_epochs: Annotated[Optional[int], typer.Option(help="Epochs of a trial that ASHA never stops (default: the config's train.epochs).")] = None,
    grace_period: Annotated[int, typer.Option(help="ASHA: epochs before a trial can be stopped.")] = 1,
    reduction_factor: Annotated[int, typer.Option(help="ASHA: keep the top 1/N at every rung.")] = 2,
    concurrent: Annotated[int, typer.Option(help="Trials running at once.")] = 2,
    metric: Annotated[str, typer.Option(help="val_acc | val_loss | train_acc | train_loss")] = "val_acc",
    include_paper: Annotated[bool, typer.Option("--include-paper", help="Run the paper's recipe as the first trial.")] = False,
    workers_per_trial: Annotated[int, typer.Option(help="Ray Train data-parallel workers per trial (1: train in the trial).")] = 1,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs per trial (fractions allowed).")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs per trial (fractions allowed).")] = 0.0,
    search_seed: Annotated[int, typer.Option(help="Seed of the random search.")] = 0,
    name: Annotated[Optional[str], typer.Option(help="Experiment name (default tune-PRESET-TIMESTAMP).")] = None,
    storage: Annotated[Optional[Path], typer.Option(help="Folder for experiments (default ~/modresnet-runs or $MODRESNET_RUNS), or s3://BUCKET/PREFIX, gs://..., file://...")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default $RAY_ADDRESS, else a local Ray).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue the interrupted search NAME (its saved settings are used).")] = None,
    wandb: Annotated[Optional[bool], typer.Option("--wandb/--no-wandb", help="W&B run per trial (default on; offline without WANDB_API_KEY).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Ray Tune's own progress reporter (trial tables, configs, results) instead of the compact table.")] = False,
) -> None:
    """Search recipes with Ray Tune + ASHA; write a leaderboard and export the best model."""
    from jobs import tune as tuning
    from jobs.search_space import DEFAULT_SPACE, load_space
    from jobs.tune_results import leaderboard_table
    from modresnet.rundir import default_storage

    from modresnet import storage as object_storage

    where = object_storage.parse(storage) or default_storage()
    remote_root = where if object_storage.is_remote(where) else None
    if remote_root is not None and (resume or workers_per_trial > 1):
        raise UserError(f"--storage {remote_root}: object storage takes new searches with one "
                        f"worker per trial; --resume and --workers-per-trial > 1 need a "
                        f"filesystem path (local or NFS)")
    root = (object_storage.staging_root(remote_root) if remote_root else where.expanduser()).resolve()
    options_kw = dict(samples=samples, grace_period=grace_period, reduction_factor=reduction_factor,
                      concurrent=concurrent, metric=metric, workers_per_trial=workers_per_trial,
                      cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                      include_paper=include_paper, search_seed=search_seed, address=address,
                      wandb=wandb)
    if resume:
        job = tuning.read_job(root / resume)
        options = tuning.TuneOptions(**{**options_kw, "max_epochs": job["max_epochs"]})
    else:
        cfg = build_config(preset, config_file, subset=subset, data_dir=data_dir, flavor=flavor,
                           seed=seed, device=device, sets=sets)
        options = tuning.TuneOptions(**{**options_kw, "max_epochs": max_epochs or cfg.train.epochs})
        options.check()
        cfg = cfg.with_overrides({"train.epochs": options.max_epochs})
        search_space = load_space(space or DEFAULT_SPACE, cfg)
        job = tuning.new_job(cfg, search_space, options, root, name or f"tune-{default_name(preset)}")
        if remote_root is not None:
            job["remote"] = remote_root.uri  # Ray Tune's storage_path; outputs published there
    exp = root / job["name"]
    console.print(f"experiment: {exp}  ({job['samples']} trials, ASHA max {job['max_epochs']} "
                  f"epochs, grace {job['grace_period']}, reduction {job['reduction_factor']}; "
                  f"Ray's log: {exp / 'ray.log'})", highlight=False, soft_wrap=True)
    outcome = tuning.run_search(job, options, resume=bool(resume), verbose=verbose,
                                console=console,
                                info=lambda line: console.print(line, highlight=False,
                                                                soft_wrap=True))
    if outcome.rows:
        console.print(leaderboard_table(outcome.rows, job, width=console.width))
    if outcome.interrupted or outcome.best is None:
        err_console.print(f"[bold yellow]search interrupted[/]; continue it with: modresnet tune "
                          f"--resume {job['name']} --storage {root}", highlight=False)
        raise typer.Exit(130)
    best, test = outcome.best, outcome.test
    console.print(f"[bold green]best trial {best.trial_id}[/]: validation "
                  f"{100 * best.best_val_acc:.2f}%, test accuracy {100 * test['test_acc']:.2f}% "
                  f"on {test['n']:,} images ({sum(r.stopped_early for r in outcome.rows)} of "
                  f"{len(outcome.rows)} trials stopped early by ASHA)", soft_wrap=True)
    console.print(f"outputs in {exp}:", highlight=False, soft_wrap=True)
    for label, path in outcome.files.items():
        console.print(f"  {label + ':':<13} {path}", highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------
# `modresnet jobs ...` (Ray Jobs API) and `modresnet cluster ...` (a local multi-node Ray).
# The logic lives in jobs/submit.py and jobs/cluster.py, imported only when these run.

jobs_app = typer.Typer(no_args_is_help=True,
                       help="Run train | tune | serve on a Ray cluster through the Jobs API.")
cluster_app = typer.Typer(no_args_is_help=True,
                          help="A real multi-node Ray cluster on this machine (token auth on).")
app.add_typer(jobs_app, name="jobs")
app.add_typer(cluster_app, name="cluster")

JobsAddress = Annotated[Optional[str], typer.Option(
    "--address", help="Jobs API http://HEAD:8265 (else $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, "
                      "or the `modresnet cluster up` cluster).")]
JobId = Annotated[str, typer.Argument(help="Submission id (see `modresnet jobs list`).")]
InsecureToken = Annotated[bool, typer.Option(
    "--insecure-token", help="Send the cluster token over plain http to a non-loopback address "
                             "(only on a network you trust; prefer https or an SSH tunnel).")]


def _exit_for(status: str) -> None:
    from jobs.submit import EXIT_CODES

    code = EXIT_CODES.get(status, 1)
    if code:
        raise typer.Exit(code)


def _check_passthrough(command: str, args: list[str]) -> None:
    """Parse the pass-through args with the local command's own options, so a typo fails here
    in a second instead of on the cluster."""
    cmd = getattr(typer.main.get_command(app), "commands", {}).get(command)
    if cmd is None:
        raise UserError(f"this modresnet has no `{command}` command to submit")
    try:
        cmd.make_context(command, list(args), resilient_parsing=False)
    except Exception as err:  # click's UsageError, or typer's vendored copy of it
        if any(c.__name__ == "UsageError" for c in type(err).__mro__):
            raise UserError(f"{command}: {err.format_message()}") from None
        raise


@jobs_app.command("submit", context_settings={"allow_extra_args": True,
                                              "ignore_unknown_options": True})
@user_errors
def jobs_submit(
    ctx: typer.Context,
    command: Annotated[str, typer.Argument(help="train | tune | serve; every further option goes to it.")],
    address: JobsAddress = None,
    submission_id: Annotated[Optional[str], typer.Option(help="Job id (default: generated).")] = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", help="Extra NAME=VALUE for the job (no secrets); repeatable.")] = None,
    entrypoint_num_cpus: Annotated[Optional[float], typer.Option(help="CPUs reserved for the driver (lets it run on a worker node).")] = None,
    insecure_token: InsecureToken = False,
) -> None:
    """Submit `modresnet COMMAND [OPTIONS]` as a Ray job; the last output line is its id.

    Example: modresnet jobs submit train --preset debug --epochs 2 --address http://127.0.0.1:8265
    (put `--` before COMMAND if it has an option also called --address or --env).
    """
    from jobs import submit as jobs_submit_mod

    if command not in jobs_submit_mod.COMMANDS:
        raise UserError(f"unknown command {command!r}: choose one of "
                        f"{', '.join(jobs_submit_mod.COMMANDS)}")
    args = list(ctx.args)
    _check_passthrough(command, args)
    extra_env = jobs_submit_mod.parse_env(env)
    addr = jobs_submit_mod.resolve_address(address)
    job_id = jobs_submit_mod.submit(command, args, address=addr, submission_id=submission_id,
                                    env=extra_env, entrypoint_num_cpus=entrypoint_num_cpus,
                                    insecure_token=insecure_token)
    err_console.print(f"submitted `modresnet {command}` to {addr}; follow it with: "
                      f"modresnet jobs logs {job_id} --follow", highlight=False, soft_wrap=True)
    print(job_id, flush=True)


@jobs_app.command("list")
@user_errors
def jobs_list(address: JobsAddress = None, insecure_token: InsecureToken = False) -> None:
    """Jobs on the cluster, oldest first."""
    from jobs import submit as jobs_submit_mod

    table = Table()
    for col in ("submission id", "status", "started", "entrypoint"):
        table.add_column(col)
    for job in jobs_submit_mod.list_jobs(address, insecure_token):
        started = (datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
                   if job.start_time else "-")
        table.add_row(job.submission_id or job.job_id or "-", str(job.status), started,
                      job.entrypoint)
    console.print(table)


@jobs_app.command("status")
@user_errors
def jobs_status(job_id: JobId, address: JobsAddress = None,
                insecure_token: InsecureToken = False) -> None:
    """Print a job's status. Exit 0: PENDING/RUNNING/SUCCEEDED, 1: FAILED/STOPPED."""
    from jobs import submit as jobs_submit_mod

    info = jobs_submit_mod.job_info(job_id, address, insecure_token)
    status = str(info.status)
    line = f"{job_id}: {status}"
    if info.message:
        line += f"  ({info.message})"
    if info.driver_exit_code is not None:
        line += f"  driver exit code {info.driver_exit_code}"
    print(line)
    _exit_for(status)


@jobs_app.command("logs")
@user_errors
def jobs_logs(job_id: JobId, address: JobsAddress = None,
              follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
              insecure_token: InsecureToken = False) -> None:
    """Print a job's logs. Exit code as for `jobs status` (after --follow: the final status)."""
    from jobs import submit as jobs_submit_mod

    status = jobs_submit_mod.logs(job_id, address, follow=follow, insecure_token=insecure_token)
    if follow:
        err_console.print(f"job {job_id}: {status}", highlight=False)
    _exit_for(status)


@jobs_app.command("stop")
@user_errors
def jobs_stop(job_id: JobId, address: JobsAddress = None,
              insecure_token: InsecureToken = False) -> None:
    """Stop a job and wait until it is stopped. Exit 0 once it is no longer running."""
    from jobs import submit as jobs_submit_mod

    status = jobs_submit_mod.stop(job_id, address, insecure_token=insecure_token)
    print(f"{job_id}: {status}")
    if status not in jobs_submit_mod.TERMINAL:
        raise typer.Exit(1)


@cluster_app.command("up")
@user_errors
def cluster_up(
    workers: Annotated[int, typer.Option(help="Worker raylets (nodes) besides the head.")] = 2,
    cpus_per_node: Annotated[float, typer.Option(help="Logical CPUs of each worker node.")] = 1.0,
    head_cpus: Annotated[float, typer.Option(help="Logical CPUs of the head (0 keeps work off it).")] = 0.0,
    object_store_mb: Annotated[int, typer.Option(help="Object store per node, MiB.")] = 256,
) -> None:
    """Start head + N worker raylets on loopback with token auth; print the client's exports.

    eval "$(modresnet cluster up)" sets RAY_ADDRESS, RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH.
    """
    from jobs import cluster as local_cluster

    state = local_cluster.up(workers=workers, cpus_per_node=cpus_per_node, head_cpus=head_cpus,
                             object_store_mb=object_store_mb,
                             log=lambda line: err_console.print(line, highlight=False))
    for name, value in state.exports().items():
        print(f"export {name}={value}")
    sys.stdout.flush()


@cluster_app.command("status")
@user_errors
def cluster_status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """The local cluster's addresses, nodes and processes. Exit 0 running, 1 not."""
    from jobs import cluster as local_cluster

    info = local_cluster.status()
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{'running' if info['running'] else 'NOT running'}: Jobs API {info['jobs_address']}, "
              f"GCS {info['gcs_address']}, {info['processes']} processes")
        for node in info["nodes"] or []:
            print(f"  {'head  ' if node['is_head'] else 'worker'} {node['node_id'][:12]}  "
                  f"{node['cpus']:g} CPU")
        if info.get("error"):
            print(f"  {info['error']}")
        print(f"  token: {info['token_path']}  temp dir: {info['temp_dir']}")
    if not info["running"]:
        raise typer.Exit(1)


@cluster_app.command("down")
@user_errors
def cluster_down() -> None:
    """Stop exactly the processes `cluster up` started (by pid; never `ray stop`)."""
    from jobs import cluster as local_cluster

    local_cluster.down(log=lambda line: err_console.print(line, highlight=False))


def _local_run(value):
    """A RUN/--checkpoint argument in object storage (s3://, gs://) -> its local cached copy."""
    from modresnet.storage import local_run

    return local_run(value)


def _predict_url(images: list[Path], url: str, top_k: int, as_json: bool) -> None:
    from serve.client import predict_paths

    results = predict_paths(url, images, top_k)
    if as_json:
        print(json.dumps([{"image": str(p), "top_k": r["top_k"]} for p, r in zip(images, results)],
                         indent=2))
        return
    table = Table()
    table.add_column("image", overflow="fold")
    for i in range(len(results[0]["top_k"])):
        table.add_column(f"#{i + 1}")
    for path, r in zip(images, results):
        table.add_row(str(path), *[f"{x['label']} {100 * x['probability']:.1f}%" for x in r["top_k"]])
    console.print(table)


@app.command("serve")
@user_errors
def serve_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Run directory or checkpoint folder to serve.")],
    host: Annotated[str, typer.Option(help="Interface for the HTTP proxy (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    backend: Annotated[str, typer.Option(help="onnx (exported once per checkpoint; the faster on CPU here) | torch | int8 (after python -m serve.quantize RUN)")] = "onnx",
    min_replicas: Annotated[int, typer.Option(help="Autoscaling lower bound.")] = 1,
    max_replicas: Annotated[int, typer.Option(help="Autoscaling upper bound.")] = 2,
    target_ongoing_requests: Annotated[float, typer.Option(help="Autoscaling target of in-flight requests per replica.")] = 8,
    max_batch_size: Annotated[int, typer.Option(help="Dynamic batching: most images per forward pass.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="Dynamic batching: longest wait to fill a batch.")] = 10,
    max_ongoing_requests: Annotated[int, typer.Option(help="Requests one replica works on at once.")] = 32,
    max_queued_requests: Annotated[int, typer.Option(help="Queued requests before 429 + Retry-After (-1: unbounded).")] = 32,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body; larger gets 413.")] = 10,
    replica_cpus: Annotated[float, typer.Option(help="Logical CPUs each replica reserves.")] = 1.0,
    threads: Annotated[int, typer.Option(help="Inference threads per replica.")] = 1,
    address: Annotated[Optional[str], typer.Option(help="Join this Ray cluster (e.g. auto) instead of starting one; a running app is updated in place and the command returns.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Require auth: the env var the replicas read the API key from; a replica without it fails the deploy. Default: required if MODRESNET_API_KEY is set in this shell.")] = None,
) -> None:
    """Serve a checkpoint over HTTP with Ray Serve (FastAPI, batching, autoscaling).

    Run it again with another checkpoint and --address auto to roll replicas over with no
    downtime."""
    import os

    from pydantic import ValidationError

    from modresnet.checkpoint import resolve

    checkpoint = _local_run(checkpoint)  # a run in s3:// or gs:// is fetched to a local cache
    resolve(checkpoint)  # a CheckpointError here is a one-line user error
    try:
        from serve.app import ServeArgs

        args = ServeArgs(checkpoint=str(checkpoint), backend=backend, threads=threads,
                         replica_cpus=replica_cpus, min_replicas=min_replicas,
                         max_replicas=max_replicas, target_ongoing_requests=target_ongoing_requests,
                         max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_ms / 1000,
                         max_ongoing_requests=max_ongoing_requests,
                         max_queued_requests=max_queued_requests,
                         max_body_bytes=int(max_body_mb * 1024 * 1024),
                         api_key_env=api_key_env or "MODRESNET_API_KEY",
                         api_key_required=bool(api_key_env or os.environ.get("MODRESNET_API_KEY")))
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    from serve.launch import serve_app

    serve_app(args, host=host, port=port, address=address,
              info=lambda line: console.print(line, highlight=False))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
