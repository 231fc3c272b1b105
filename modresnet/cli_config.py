"""The CLI's side of the config: preset, --config and --set, and the shortcut flags (--lr,
--epochs, ...) derived from one table of config fields, their types and choices read from
the dataclasses. Values are checked by the config itself, so a flag and the same --set fail
with the same message naming the field."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from modresnet import config as configs
from modresnet.errors import UserError
from modresnet.fields import choices


@dataclass(frozen=True)
class ConfigFlag:
    """--PARAM sets the config field `path`; `note` leads its help."""

    param: str
    path: str
    note: str = ""

    def option(self) -> Any:
        """The typer annotation: optional (None: not given), typed and described by the field."""
        hint = configs.field_hint(self.path)
        allowed = choices(hint)
        if typing.get_origin(hint) in (types.UnionType, typing.Union):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        what = f"{self.note} ({self.path})" if self.note else self.path
        text = f"{what}: {' | '.join(allowed)}" if allowed else what
        return Annotated[(str if allowed else hint) | None, typer.Option(help=text)]


CONFIG_FLAGS = {
    flag.param: flag
    for flag in (
        ConfigFlag("epochs", "train.epochs"),
        ConfigFlag("subset", "data.subset", "Stratified number of training images"),
        ConfigFlag(
            "data_dir",
            "data.data_dir",
            "Folder holding cifar-10-batches-py (else $MODRESNET_DATA, else ~/.cache/modresnet)",
        ),
        ConfigFlag("batch_size", "train.batch_size", "Per worker"),
        ConfigFlag("lr", "optim.lr"),
        ConfigFlag("weight_decay", "optim.weight_decay"),
        ConfigFlag("optimizer", "optim.name"),
        ConfigFlag("schedule", "schedule.name"),
        ConfigFlag("flavor", "model.flavor", "Model flavor"),
        ConfigFlag("seed", "train.seed"),
        ConfigFlag("device", "train.device"),
    )
}

Preset = Annotated[
    str | None,
    typer.Option(help=f"Recipe to start from: {', '.join(configs.PRESETS)}; default paper."),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="YAML config; overrides the preset.")
]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Any config field, as SECTION.FIELD=VALUE (YAML value); repeatable."
    ),
]
DataDir = CONFIG_FLAGS["data_dir"].option()


def config_flags(*params: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the shortcut flags `params` (keys of CONFIG_FLAGS), listed after its
    --set; it receives the ones given as `overrides` ({"optim.lr": 0.1})."""
    flags = [CONFIG_FLAGS[p] for p in params]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.name != "overrides"
        ]
        added = [
            inspect.Parameter(
                f.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=f.option()
            )
            for f in flags
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            given = {f.path: kwargs.pop(f.param) for f in flags}
            command(**kwargs, overrides={k: v for k, v in given.items() if v is not None})

        at = next((i + 1 for i, p in enumerate(own) if p.name == "sets"), len(own))
        parameters = own[:at] + added + own[at:]
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return wrapper

    return decorate


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


def build_config(
    preset: str | None, config_file: Path | None, overrides: dict[str, Any], sets: list[str] | None
) -> configs.Config:
    """Preset, then the YAML file, then the shortcut flags, then --set."""
    return configs.resolve(preset or "paper", config_file, {**overrides, **parse_sets(sets)})
