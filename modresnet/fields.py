"""Checked fields for typed settings (the run config, the tune job): a value read from YAML,
JSON or a flag becomes the field's annotated type, a `Literal` field holds one of its
values, a number stays in its range, and every error names the field."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args

from modresnet.errors import UserError


class ConfigError(UserError, ValueError):
    """A config key or value a user wrote is wrong; the message names the field."""


# Builds the dataclass `cls` at `path` from a mapping of its fields.
Build = Callable[[str, type, dict[str, Any]], Any]


def check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name}: must be between {low} and {high}, got {value}")


def choices(hint: Any) -> tuple[str, ...] | None:
    """The allowed values of a `Literal` field type (also inside `X | None`), else None."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        hint = next(a for a in get_args(hint) if a is not type(None))
    return get_args(hint) if typing.get_origin(hint) is Literal else None


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_choices(section: Any, path: str) -> None:
    """Every `Literal` field of a dataclass holds one of its values, however it was built."""
    section_type: type = type(section)
    for name, hint in type_hints(section_type).items():
        allowed = choices(hint)
        value = getattr(section, name)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{path}.{name}: must be one of {', '.join(allowed)}; got {value!r}")


def plain(value: Any) -> Any:
    """Tuples as lists, all the way down: what YAML and JSON write."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def coerce(path: str, value: Any, hint: Any, build: Build | None = None) -> Any:
    """Turn a YAML/JSON/CLI value into the annotated type, or raise ConfigError naming `path`.
    `build` makes nested dataclasses."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return coerce(path, value, args[0], build)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and build is not None:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of fields, got {value!r}")
        return build(path, hint, value)
    if origin is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = items[0]
        if len(items) != 2 or items[1] is not Ellipsis:
            if len(value) != len(items):
                raise ConfigError(f"{path}: expected {len(items)} values, got {list(value)}")
        return tuple(coerce(f"{path}[{i}]", v, item, build) for i, v in enumerate(value))
    if origin is Literal:
        if not isinstance(value, str) or value not in get_args(hint):
            raise ConfigError(f"{path}: must be one of {', '.join(get_args(hint))}; got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {hint}")
