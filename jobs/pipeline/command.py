"""`modresnet pipeline run|status|list`: search, retrain, evaluate, register, gate and promote
as one job (jobs/pipeline/driver.py), resumed by running the same command again. The search
flags are the `tune` command's, the retrain's the `train` command's resources, generated
from the same settings models (modresnet/cli_config.py). Ray and torch load when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from jobs.pipeline.settings import Promote, RetrainSettings
from jobs.tune.command import Verbose
from jobs.tune.job import SearchSettings
from modresnet.cli_common import RayAddress, Wandb, console, err_console, say, user_errors
from modresnet.cli_config import (
    ConfigFile,
    Preset,
    Sets,
    build_config,
    config_flags,
    setting_flags,
    with_flags,
)
from serve.canary.settings import CanarySettings

pipeline_app = typer.Typer(
    no_args_is_help=True,
    help="Search, retrain, register, gate and promote a model as one resumable job.",
)

Name = Annotated[str, typer.Argument(help="The pipeline (its folder under --storage).")]
Storage = Annotated[
    Path | None,
    typer.Option(
        help="Folder for pipelines (default ~/modresnet-runs or $MODRESNET_RUNS), or "
        "s3://BUCKET/PREFIX, gs://..., file://..."
    ),
]
STOPPED_EXIT = 3  # the gate refused the new version, or its canary rolled back


def _storage(storage: Path | None) -> str:
    """--storage as one canonical string: an object-store URI, or an absolute path."""
    from modresnet import storage as object_storage
    from modresnet.rundir import default_storage

    where = object_storage.parse(storage) or default_storage()
    return where.uri if isinstance(where, object_storage.Location) else str(where.resolve())


@pipeline_app.command("run")
@user_errors
@with_flags(setting_flags(CanarySettings, {}), into="canary", after="tolerance")
@with_flags(setting_flags(RetrainSettings, {}), into="retrain", after="space")
@with_flags(
    setting_flags(SearchSettings, {"max_epochs": "the config's train.epochs"}),
    into="search",
    after="space",
)
@config_flags("epochs", "subset", "data_dir", "flavor", "seed", "device")
def run(
    overrides: dict[str, Any],
    search: dict[str, Any],
    retrain: dict[str, Any],
    canary: dict[str, Any],
    name: Name,
    preset: Preset = None,
    config_file: ConfigFile = None,
    sets: Sets = None,
    space: Annotated[
        Path | None, typer.Option(help="Search-space YAML (default jobs/tune/space.yaml).")
    ] = None,
    search_subset: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Training images per search trial (default: --subset's); the retrain has "
            "--subset's.",
        ),
    ] = None,
    storage: Storage = None,
    registry: Annotated[
        str | None,
        typer.Option(
            help="MLflow registry URI (default $MLFLOW_TRACKING_URI, else SQLite under --storage)."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Registered model name (default: the pipeline's NAME).")
    ] = None,
    app: Annotated[str, typer.Option(help="The Serve app promotion rolls over.")] = "modresnet",
    promote: Annotated[
        Promote,
        typer.Option(
            help="canary: shift traffic step by step, watching errors and latency; direct: "
            "make it the champion at once; none: stop after the gate."
        ),
    ] = "canary",
    tolerance: Annotated[
        float | None,
        typer.Option(
            help="Gate: test accuracy the new version may lose against the champion "
            "(default 0.005, half a point)."
        ),
    ] = None,
    address: RayAddress = None,
    notify: Annotated[
        str | None,
        typer.Option(
            help="POST a JSON document (with a Slack-compatible `text`) to this URL on every "
            "stage change."
        ),
    ] = None,
    wandb: Wandb = True,
    verbose: Verbose = False,
) -> None:
    """Run a pipeline: a search, a retrain of its best configuration at the full budget, the
    test evaluation, registration, the gate against the champion and promotion. Run the
    same command again to continue one that stopped."""
    from jobs.pipeline.driver import RunOptions, run_pipeline
    from jobs.pipeline.notify import check_url
    from jobs.pipeline.report import figures, stages_table
    from jobs.pipeline.settings import PipelineSettings
    from jobs.tune.space import DEFAULT_SPACE, load_space
    from modresnet import names
    from modresnet.registry import GATE_TOLERANCE

    names.name(name, "NAME")
    names.name(model or name, "--model")
    names.name(app, "--app")
    if notify is not None:
        check_url(notify)
    cfg = build_config(preset, config_file, overrides, sets)
    chosen = SearchSettings(**{"max_epochs": cfg.train.epochs, **search})
    searched = load_space(space or DEFAULT_SPACE, cfg)
    settings = PipelineSettings(
        name=name,
        storage=_storage(storage),
        registry=registry,
        model=model or name,
        app=app,
        promote=promote,
        tolerance=GATE_TOLERANCE if tolerance is None else tolerance,
        base=cfg,
        search_subset=search_subset,
        space=searched.raw,
        space_source=searched.source,
        search=chosen,
        retrain=RetrainSettings(**retrain),
        canary=CanarySettings(**canary),
    )
    try:
        state = run_pipeline(
            settings,
            RunOptions(address=address, notify=notify, wandb=wandb, verbose=verbose),
            info=say,
            console=console,
        )
    except KeyboardInterrupt:
        err_console.print(
            f"[bold yellow]pipeline {name} interrupted[/]; continue it with the same command",
            highlight=False,
        )
        raise typer.Exit(130) from None
    console.print(stages_table(state))
    for line in figures(state):
        say(line)
    if state.status == "stopped":
        err_console.print(
            f"[bold yellow]pipeline {name} stopped[/]: {state.reason}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(STOPPED_EXIT)


@pipeline_app.command("status")
@user_errors
def status(name: Name, storage: Storage = None) -> None:
    """The stages of pipeline NAME (status, start, duration, output), its best trial
    (validation), the new version's test accuracy against the champion's, the promotion."""
    from jobs.pipeline.report import figures, stages_table
    from jobs.pipeline.settings import PipelineSetupError
    from jobs.pipeline.state import Store

    store = Store(_storage(storage), name)
    state = store.read()
    if state is None:
        raise PipelineSetupError(
            f"no pipeline {name} in {store.root}; see `modresnet pipeline list`, or check --storage"
        )
    console.print(stages_table(state))
    for line in figures(state):
        say(line)


@pipeline_app.command("list")
@user_errors
def list_pipelines(storage: Storage = None) -> None:
    """Every pipeline under --storage, with its status and new version."""
    from jobs.pipeline.report import list_table
    from jobs.pipeline.state import list_states

    where = _storage(storage)
    rows = list_states(where)
    if not rows:
        say(f"no pipelines in {where}")
        return
    console.print(list_table(rows))
