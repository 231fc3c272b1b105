"""The CLI's side of typed settings: preset, --config and --set, and the flags derived from
settings models by one generator: the config's shortcut flags (--lr, --epochs, ...) from a
table of config fields, and any model's own fields (the tune command's search settings).
A flag's type, choices, help and default are read from the model's field; values are checked
by the model itself, so a flag and the same --set fail with the same message naming the
field."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from modresnet import config as configs
from modresnet.errors import UserError


@dataclass(frozen=True)
class Flag:
    """--PARAM (dashes for underscores) sets `key` to a value typed and described by `field`
    (`shown`: the field's path in the help, `default`: the default it names, if any)."""

    param: str
    key: str
    field: FieldInfo
    shown: str = ""
    default: str = ""

    def option(self) -> Any:
        """The typer annotation: optional (None: not given), typed and described by the field."""
        hint = configs.plain_type(self.field.annotation)
        allowed = configs.choices(hint)
        what = self.field.description or ""
        if self.shown:
            what = f"{what} ({self.shown})" if what else self.shown
        text = f"{what}: {' | '.join(allowed)}" if allowed else what
        if self.default:
            text = f"{text}; default {self.default}"
        names = [f"--{self.param.replace('_', '-')}"] if hint is bool else []
        return Annotated[(str if allowed else hint) | None, typer.Option(*names, help=text)]


def config_flag(param: str, path: str) -> Flag:
    """--PARAM sets the config field `path` (SECTION.FIELD)."""
    return Flag(param, path, configs.field_info(path), shown=path)


def setting_flags(model: type[BaseModel], shown_defaults: dict[str, str]) -> list[Flag]:
    """One flag per field of `model`, in its order, each naming its default (`shown_defaults`
    replaces the model's where a command computes it; a false bool names none)."""
    flags = []
    for name, field in model.model_fields.items():
        default = shown_defaults.get(name, "" if field.default is False else field.default)
        text = f"{default:g}" if isinstance(default, float) else str(default)
        flags.append(Flag(name, name, field, default=text))
    return flags


CONFIG_FLAGS = {
    flag.param: flag
    for flag in (
        config_flag("epochs", "train.epochs"),
        config_flag("subset", "data.subset"),
        config_flag("data_dir", "data.data_dir"),
        config_flag("batch_size", "train.batch_size"),
        config_flag("lr", "optim.lr"),
        config_flag("weight_decay", "optim.weight_decay"),
        config_flag("optimizer", "optim.name"),
        config_flag("schedule", "schedule.name"),
        config_flag("flavor", "model.flavor"),
        config_flag("seed", "train.seed"),
        config_flag("device", "train.device"),
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


def with_flags(
    flags: Iterable[Flag], into: str, after: str
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command `flags`, listed after its parameter `after`; it receives the ones given
    as the mapping `into` ({flag.key: value})."""
    flags = list(flags)

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.name != into
        ]
        added = [
            inspect.Parameter(
                f.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=f.option()
            )
            for f in flags
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            given = {f.key: kwargs.pop(f.param) for f in flags}
            command(**kwargs, **{into: {k: v for k, v in given.items() if v is not None}})

        at = next((i + 1 for i, p in enumerate(own) if p.name == after), len(own))
        parameters = own[:at] + added + own[at:]
        wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        return wrapper

    return decorate


def config_flags(*params: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the shortcut flags `params` (keys of CONFIG_FLAGS), listed after its
    --set; it receives the ones given as `overrides` ({"optim.lr": 0.1})."""
    return with_flags((CONFIG_FLAGS[p] for p in params), into="overrides", after="sets")


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
