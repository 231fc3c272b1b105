"""`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/NAME`: how a user names a registered
version wherever a run path is accepted. Parsed and checked here, before any part of it reaches
an MLflow filter string or a path."""

from __future__ import annotations

import re
from dataclasses import dataclass

from modresnet import names
from modresnet.errors import UserError

PREFIX = "models:/"
CHAMPION, CANDIDATE = "champion", "candidate"
_VERSION = re.compile(r"[1-9][0-9]{0,9}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,63}")
FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME (its @champion)"
ALIAS_RULE = "a lowercase letter, then up to 63 lowercase letters, digits, '_' or '-'"


class RegistryError(UserError):
    """A registered model, version or alias that cannot be used, or a registry out of reach."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{PREFIX}{self.name}/{self.version}"
        return f"{PREFIX}{self.name}@{self.alias or CHAMPION}"


def is_ref(text: object) -> bool:
    return isinstance(text, str) and text.startswith(PREFIX)


def model_name(value: object, field: str = "model name") -> str:
    """A registered model's name: the rule for run names (modresnet.names)."""
    if not names.is_name(value):
        raise RegistryError(f"{field}: {_shown(value)} is not a valid name ({names.NAME_RULE})")
    return str(value)


def version_number(value: object, field: str = "version") -> str:
    if not isinstance(value, str) or _VERSION.fullmatch(value) is None:
        raise RegistryError(f"{field}: {_shown(value)} is not a version number (1, 2, ...)")
    return value


def alias_name(value: object, field: str = "alias") -> str:
    if not isinstance(value, str) or _ALIAS.fullmatch(value) is None:
        raise RegistryError(f"{field}: {_shown(value)} is not a valid alias ({ALIAS_RULE})")
    return value


def parse_ref(text: str) -> ModelRef:
    """`models:/...` -> ModelRef; anything else is a one-line RegistryError naming the forms."""
    if not is_ref(text):
        raise RegistryError(f"{_shown(text)} is not a model reference; use {FORMS}")
    return _parse_body(text, text[len(PREFIX) :])


def parse_spec(text: str) -> ModelRef:
    """What `models show` takes: a reference with or without its `models:/` prefix."""
    return parse_ref(text if is_ref(text) else PREFIX + text)


def _parse_body(text: str, body: str) -> ModelRef:
    name, at, alias = body.partition("@")
    name, slash, version = name.partition("/")
    bad = RegistryError(f"{_shown(text)} is not a model reference; use {FORMS}")
    if not names.is_name(name) or (at and slash):
        raise bad
    if slash:
        if _VERSION.fullmatch(version) is None:
            raise bad
        return ModelRef(name, version=version)
    if at:
        if _ALIAS.fullmatch(alias) is None:
            raise bad
        return ModelRef(name, alias=alias)
    return ModelRef(name, alias=CHAMPION)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
