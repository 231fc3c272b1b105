"""`modresnet tune`: an ASHA search on Ray Tune (jobs/tune/driver.py), started from flags or resumed
from the settings it saved. Ray and torch are imported when the command runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobs.tune.job import SearchSettings
from jobs.tune.space import flatten
from modresnet.cli_common import (
    RayAddress,
    Wandb,
    console,
    default_name,
    err_console,
    say,
    user_errors,
)
from modresnet.cli_config import (
    ConfigFile,
    Preset,
    Sets,
    build_config,
    config_flags,
    setting_flags,
    with_flags,
)

if TYPE_CHECKING:
    from jobs.tune.driver import TuneOptions
    from jobs.tune.job import TuneJob
    from modresnet.config import Config


def describe(job: TuneJob) -> str:
    """The search in a few words, e.g. 'random search + ASHA, max 9 epochs, grace 1, x3'."""
    head = f"{job.search} search + {job.scheduler.upper()}, max {job.max_epochs} epochs"
    if job.scheduler == "asha":
        return f"{head}, grace {job.grace_period}, reduction {job.reduction_factor}"
    if job.scheduler == "pbt":
        return f"{head}, exploit every {job.grace_period}"
    return head


def check_resume(
    job: TuneJob,
    settings: dict[str, Any],
    name: str | None,
    config: Config | None,
    space: Path | None,
) -> None:
    """Refuse a flag of `tune --resume` that contradicts the saved search: the resumed search
    runs with the saved settings, so a different value would be silently ignored. `settings`
    holds the search flags given, `config` the config they build (None: no config flag)."""
    from jobs.tune.job import TuneSetupError
    from jobs.tune.space import load_space

    fix = "drop it, or start a new search under another --name"
    if name is not None and name != job.name:
        raise TuneSetupError(f"--name {name} conflicts with --resume {job.name}; {fix}")
    for field, value in settings.items():
        if value != getattr(job, field):
            raise TuneSetupError(
                f"--{field.replace('_', '-')} {value} conflicts with the saved "
                f"search {job.name} ({field} {getattr(job, field)}); {fix}"
            )
    if config is not None:
        given = flatten(config.with_overrides({"train.epochs": job.max_epochs}).to_dict())
        saved = flatten(job.base.to_dict())
        for key, value in given.items():
            if value != saved[key]:
                raise TuneSetupError(
                    f"--preset/--config/--set/config flags give {key} {value}, "
                    f"the saved search {job.name} has {saved[key]}; {fix}"
                )
    if space is not None and load_space(space, job.base).raw != job.space:
        raise TuneSetupError(
            f"--space {space} differs from the saved search {job.name}'s space "
            f"({job.space_source}); {fix}"
        )


Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="Ray Tune's own progress reporter (trial tables, configs, results) "
        "instead of the compact table.",
    ),
]


@user_errors
@with_flags(
    setting_flags(SearchSettings, {"max_epochs": "the config's train.epochs"}),
    into="settings",
    after="space",
)
@config_flags("subset", "data_dir", "flavor", "seed", "device")
def tune(
    overrides: dict[str, Any],
    settings: dict[str, Any],
    preset: Preset = None,
    config_file: ConfigFile = None,
    sets: Sets = None,
    space: Annotated[
        Path | None, typer.Option(help="Search-space YAML (default jobs/tune/space.yaml).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Experiment name (default tune-PRESET-TIMESTAMP).")
    ] = None,
    storage: Annotated[
        Path | None,
        typer.Option(
            help="Folder for experiments (default ~/modresnet-runs or $MODRESNET_RUNS), or "
            "s3://BUCKET/PREFIX, gs://..., file://..."
        ),
    ] = None,
    address: RayAddress = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue the interrupted search NAME with its saved settings. --storage, "
            "--address, --wandb/--no-wandb and --verbose may be given; any other flag must "
            "repeat the saved value, or it is refused."
        ),
    ] = None,
    wandb: Wandb = True,
    verbose: Verbose = False,
) -> None:
    """Search recipes with Ray Tune (random or Optuna; ASHA, PBT or FIFO); write a
    leaderboard and export the best model."""
    from jobs.tune import driver
    from jobs.tune.job import new_job, read_job
    from jobs.tune.space import DEFAULT_SPACE, load_space
    from modresnet import names
    from modresnet import storage as object_storage
    from modresnet.errors import UserError
    from modresnet.rundir import default_storage

    for flag, value in (("--name", name), ("--resume", resume)):
        if value is not None:
            names.name(value, flag)

    where = object_storage.parse(storage) or default_storage()
    remote_root = where if isinstance(where, object_storage.Location) else None
    if remote_root is not None and (resume or settings.get("workers_per_trial", 1) > 1):
        raise UserError(
            f"--storage {remote_root}: object storage takes new searches with one "
            f"worker per trial; --resume and --workers-per-trial > 1 need a "
            f"filesystem path (local or NFS)"
        )
    root = object_storage.local_root(where).resolve()
    config_given = bool(preset or config_file or sets or overrides)
    if resume:
        job = read_job(root / resume)
        check_resume(
            job,
            settings,
            name,
            build_config(preset, config_file, overrides, sets) if config_given else None,
            space,
        )
    else:
        cfg = build_config(preset, config_file, overrides, sets)
        chosen = SearchSettings(**{"max_epochs": cfg.train.epochs, **settings})
        cfg = cfg.with_overrides({"train.epochs": chosen.max_epochs})
        job = new_job(
            cfg,
            load_space(space or DEFAULT_SPACE, cfg),
            chosen,
            root,
            name or f"tune-{default_name(preset or 'paper')}",
            remote=remote_root.uri if remote_root is not None else None,
        )
    _run(job, driver.TuneOptions(address=address, wandb=wandb), bool(resume), verbose, root)


def _run(job: TuneJob, options: TuneOptions, resume: bool, verbose: bool, root: Path) -> None:
    """Run the search and print its leaderboard, best trial and outputs."""
    from jobs.tune import driver
    from jobs.tune.results import leaderboard_table

    exp = job.experiment
    say(f"experiment: {exp}  ({job.samples} trials, {describe(job)}; Ray's log: {exp / 'ray.log'})")
    outcome = driver.run_search(
        job, options, resume=resume, verbose=verbose, console=console, info=say
    )
    if outcome.rows:
        console.print(leaderboard_table(outcome.rows, job, width=console.width))
    failure = outcome.failure()
    if outcome.all_failed:
        err_console.print(f"[bold red]search failed[/]: {failure}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if failure:
        err_console.print(f"[yellow]warning[/]: {failure}", highlight=False, soft_wrap=True)
    if outcome.interrupted or outcome.best is None or outcome.test is None:
        err_console.print(
            f"[bold yellow]search interrupted[/]; continue it with: modresnet tune "
            f"--resume {job.name} --storage {root}",
            highlight=False,
        )
        raise typer.Exit(130)
    best, test = outcome.best, outcome.test
    console.print(
        f"[bold green]best trial {best.trial_id}[/]: validation "
        f"{100 * best.best_val_acc:.2f}%, test accuracy {100 * test['test_acc']:.2f}% "
        f"on {test['n']:,} images ({sum(r.stopped_early for r in outcome.rows)} of "
        f"{len(outcome.rows)} trials stopped early by {job.scheduler.upper()})",
        soft_wrap=True,
    )
    say(f"outputs in {exp}:")
    for label, path in outcome.files.items():
        say(f"  {label + ':':<13} {path}")
