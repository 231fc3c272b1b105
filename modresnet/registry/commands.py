"""`modresnet models register | list | show | alias | rollback`: the registry from the command
line. MLflow is imported when a command runs, so `modresnet --help` stays fast."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modresnet.cli_common import console, say, user_errors
from modresnet.registry.gate import GATE_TOLERANCE
from modresnet.registry.refs import ModelRef, parse_spec

if TYPE_CHECKING:
    from modresnet.registry.store import Registry, Version

DEFAULT_NAME = "modresnet-cifar10"

models_app = typer.Typer(
    no_args_is_help=True,
    help="Registered models (MLflow Model Registry): versions with lineage, aliases, rollback.",
)

RegistryUri = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="MLflow tracking server or database URI (default: MLFLOW_TRACKING_URI, else an "
        "embedded SQLite registry under the storage root).",
    ),
]
Storage = Annotated[
    str | None,
    typer.Option(
        help="Storage root of the embedded registry (default ~/modresnet-runs or "
        "$MODRESNET_RUNS), or s3://BUCKET/PREFIX for its artifacts."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Reason = Annotated[str, typer.Option(help="Why, recorded in the alias history.")]


def _open(registry: str | None, storage: str | None) -> Registry:
    from modresnet.registry.store import open_registry

    return open_registry(registry, storage)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _when(epoch: float | None) -> str:
    return "-" if not epoch else datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _versions_table(versions: list[Version], title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("model", "version", "aliases", "test acc", "val acc", "test n", "sha256"):
        table.add_column(col, justify="right" if "acc" in col or col == "test n" else "left")
    table.add_column("created")
    table.add_column("run", overflow="fold")
    for v in versions:
        table.add_row(
            v.name,
            v.version,
            ", ".join(v.aliases) or "-",
            _pct(v.test_acc),
            _pct(v.val_acc),
            "-" if v.test_n is None else f"{v.test_n:,}",
            v.sha256[:12],
            _when(v.created),
            str(v.lineage.get("run_uri") or "-"),
        )
    return table


def _print_version(v: Version) -> None:
    from rich.table import Table

    table = Table(title=v.label, show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    lineage = v.lineage
    rows = [
        ("aliases", ", ".join(v.aliases) or "-"),
        ("test accuracy", f"{_pct(v.test_acc)} on {v.test_n or 0:,} images (md5 {v.test_md5})"),
        ("validation accuracy", _pct(v.val_acc)),
        ("weights sha256", v.sha256),
        ("run", str(lineage.get("run_uri") or "-")),
        ("search", str(lineage.get("search") or "-")),
        ("trial", str(lineage.get("trial") or "-")),
        ("config sha256", str(lineage.get("config_hash") or "-")),
        ("code", str(lineage.get("code_version") or "-")),
        ("created", _when(v.created)),
        ("artifacts", v.source),
        *((f"note: {k}", val) for k, val in sorted(v.notes.items())),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _history_table(name: str, history: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=f"{name}: alias history (the last moves kept)")
    for col in ("at", "alias", "version", "previous", "reason"):
        table.add_column(col, overflow="fold")
    for e in history:
        reason = ("rollback: " if e.get("rollback") else "") + str(e.get("reason") or "")
        table.add_row(
            _when(e.get("at")),
            str(e.get("alias")),
            "(deleted)" if e.get("version") is None else str(e.get("version")),
            str(e.get("previous") or "-"),
            reason or "-",
        )
    return table


@models_app.command()
@user_errors
def register(
    run: Annotated[
        str, typer.Argument(help="A finished run directory, its best/, or an s3:// / gs:// run.")
    ],
    name: Annotated[str, typer.Option(help="Registered model name.")] = DEFAULT_NAME,
    registry: RegistryUri = None,
    storage: Storage = None,
    as_json: AsJson = False,
) -> None:
    """Register a finished run's best checkpoint as the next version of NAME, with lineage."""
    v = _open(registry, storage).register(run, name)
    if as_json:
        print(json.dumps(v.to_dict(), indent=2))
        return
    say(
        f"registered {v.label}: test accuracy {_pct(v.test_acc)} on {v.test_n or 0:,} images, "
        f"sha256 {v.sha256[:12]}; serve it with `modresnet serve models:/{v.label}`"
    )


@models_app.command("list")
@user_errors
def list_models(
    registry: RegistryUri = None, storage: Storage = None, as_json: AsJson = False
) -> None:
    """Every version of every registered model, newest first."""
    reg = _open(registry, storage)
    versions = [v for name in reg.names() for v in reg.versions(name)]
    if as_json:
        print(json.dumps([v.to_dict() for v in versions], indent=2))
    elif not versions:
        say(f"no registered models in {reg.uri}; add one with `modresnet models register RUN`")
    else:
        console.print(_versions_table(versions))


@models_app.command()
@user_errors
def show(
    model: Annotated[str, typer.Argument(help="NAME, NAME/VERSION or NAME@ALIAS.")],
    registry: RegistryUri = None,
    storage: Storage = None,
    as_json: AsJson = False,
) -> None:
    """A model (its versions and alias history) or one version with its lineage."""
    reg = _open(registry, storage)
    ref = parse_spec(model)
    whole = "/" not in model.removeprefix("models:/") and "@" not in model
    if whole:
        versions, history = reg.versions(ref.name), reg.history(ref.name)
        if as_json:
            print(
                json.dumps(
                    {
                        "name": ref.name,
                        "versions": [v.to_dict() for v in versions],
                        "history": history,
                    },
                    indent=2,
                )
            )
            return
        console.print(_versions_table(versions, title=ref.name))
        console.print(_history_table(ref.name, history))
        return
    v = reg.get(ref)
    if as_json:
        print(json.dumps(v.to_dict(), indent=2))
    else:
        _print_version(v)


@models_app.command()
@user_errors
def alias(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version number.")],
    alias: Annotated[str, typer.Argument(help="champion, candidate, or another alias.")],
    tolerance: Annotated[
        float,
        typer.Option(
            help="candidate only: how far below the champion's test accuracy it may be "
            "(a share: 0.005 is half a point)."
        ),
    ] = GATE_TOLERANCE,
    reason: Reason = "",
    registry: RegistryUri = None,
    storage: Storage = None,
) -> None:
    """Point ALIAS at NAME/VERSION; `candidate` must pass the gate against the champion."""
    reg = _open(registry, storage)
    champion = None
    if alias == "candidate":
        champion = reg.gate(name, version, tolerance)
    v = reg.set_alias(name, version, alias, tolerance=tolerance, reason=reason)
    against = "" if champion is None else f" (gate: champion {champion.label} "
    if champion is not None:
        against += f"{_pct(champion.test_acc)}, tolerance {100 * tolerance:.2f} points)"
    say(f"{name}@{alias} -> {v.label}, test accuracy {_pct(v.test_acc)}{against}")


@models_app.command()
@user_errors
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    reason: Reason = "manual rollback",
    registry: RegistryUri = None,
    storage: Storage = None,
) -> None:
    """Move `champion` back to the version that held it before; the history is kept."""
    reg = _open(registry, storage)
    before = reg.get(ModelRef(name, alias="champion"))
    v = reg.rollback(name, reason=reason)
    say(f"{name}@champion: {before.label} -> {v.label} (test accuracy {_pct(v.test_acc)})")
