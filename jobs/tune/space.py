"""The search space of `modresnet tune`: a YAML file of SECTION.FIELD keys, each a constant
or one distribution, validated against the config before any trial starts (see
jobs/tune/space.yaml). Ray is imported only to build Tune domains."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modresnet.config import Config, ConfigError

DEFAULT_SPACE = Path(__file__).with_name("space.yaml")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "quniform", "randint")
NOT_TUNABLE = {
    "train.epochs": "set by --max-epochs",
    "train.device": "set by --device",
    "train.threads": "follows --cpus-per-trial",
}
SGD_ONLY = ("optim.momentum", "optim.nesterov")
ADAM_ONLY = ("optim.betas",)
MUTABLE = ("optim.lr", "optim.weight_decay")  # and every augment.* strength: what PBT perturbs


class SpaceError(ConfigError):
    """The search-space file is wrong; the message names the file and the field."""


@dataclass(frozen=True)
class Param:
    key: str  # SECTION.FIELD
    kind: str  # "constant" or one of DISTRIBUTIONS
    args: tuple

    def domain(self):
        from ray import tune

        a = self.args
        if self.kind == "constant":
            return a[0]
        if self.kind == "choice":
            return tune.choice(list(a))
        if self.kind == "uniform":
            return tune.uniform(a[0], a[1])
        if self.kind == "loguniform":
            return tune.loguniform(a[0], a[1])
        if self.kind == "quniform":
            return tune.quniform(a[0], a[1], a[2])
        return tune.randint(a[0], a[1] + 1)  # Ray's upper end is exclusive; ours is included

    def sample(self, rng: random.Random) -> Any:
        a = self.args
        if self.kind == "constant":
            return a[0]
        if self.kind == "choice":
            return rng.choice(a)
        if self.kind == "uniform":
            return rng.uniform(a[0], a[1])
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(a[0]), math.log(a[1])))
        if self.kind == "quniform":
            return round(rng.uniform(a[0], a[1]) / a[2]) * a[2]
        return rng.randint(a[0], a[1])

    def suggest(self, trial: Any, name: str) -> Any:
        """This parameter drawn by an Optuna trial under `name`. Optuna's categories are
        scalars, so a choice of lists (betas) is drawn by its JSON text and decoded."""
        a = self.args
        if self.kind == "choice":
            if all(_scalar(v) for v in a):
                return trial.suggest_categorical(name, list(a))
            return json.loads(trial.suggest_categorical(name, [json.dumps(v) for v in a]))
        if self.kind == "randint":
            return trial.suggest_int(name, a[0], a[1])
        step = a[2] if self.kind == "quniform" else None
        return trial.suggest_float(name, a[0], a[1], log=self.kind == "loguniform", step=step)

    def optuna_value(self, value: Any) -> Any:
        """`value` as this parameter's Optuna trial holds it (for an enqueued point)."""
        if self.kind == "choice" and not all(_scalar(v) for v in self.args):
            return json.dumps(value)
        return value

    def extremes(self) -> list[Any]:
        if self.kind in ("constant", "choice"):
            return list(self.args)
        return [self.args[0], self.args[1]]


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, Param]
    source: str = "<space>"
    raw: dict = field(default_factory=dict)

    def param_space(self) -> dict:
        """Nested {section: {field: domain}} for the Tuner."""
        out: dict[str, dict] = {}
        for key, p in self.params.items():
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = p.domain()
        return out

    def tuned_keys(self) -> list[str]:
        return [k for k, p in self.params.items() if p.kind != "constant"]

    def mutable_keys(self) -> list[str]:
        """The tuned keys PBT perturbs: learning rate, weight decay, augmentation strengths."""
        return [
            k
            for k in self.tuned_keys()
            if (k in MUTABLE or k.startswith("augment."))
            and all(_number_like(v) for v in self.params[k].args)
        ]

    def constants(self) -> dict:
        """Nested {section: {field: value}} of the constant keys (the Optuna param_space)."""
        out: dict[str, dict] = {}
        for key, p in self.params.items():
            if p.kind == "constant":
                section, name = key.split(".", 1)
                out.setdefault(section, {})[name] = p.args[0]
        return out

    def point(self, config: Config) -> dict:
        """The nested values `config` has at every key of the space (e.g. the paper's recipe)."""
        values = config.to_dict()
        out: dict[str, dict] = {}
        for key in self.params:
            section, name = key.split(".", 1)
            out.setdefault(section, {})[name] = values[section][name]
        return out


@dataclass(frozen=True)
class OptunaSpace:
    """The space as an Optuna define-by-run function (picklable, for a resumed search):
    optim.name is drawn first, then only the fields its optimizer uses, so TPE never
    models momentum for adam or betas for sgd. Names are SECTION/FIELD, Ray's nesting."""

    space: SearchSpace
    base_optimizer: str

    def __call__(self, trial: Any) -> dict[str, Any]:
        keys = sorted(self.space.tuned_keys(), key=lambda k: k != "optim.name")
        drawn: dict[str, Any] = {}
        for key in keys:
            optimizer = drawn.get("optim.name", self.base_optimizer)
            if applies(key, optimizer):
                drawn[key] = self.space.params[key].suggest(trial, key.replace(".", "/"))
        return {k.replace(".", "/"): v for k, v in drawn.items()}

    def point(self, config: Config) -> dict[str, Any]:
        """`config`'s values of the fields this space draws for it, as Optuna enqueues them."""
        values = flatten(self.space.point(config))
        optimizer = values.get("optim.name", self.base_optimizer)
        return {
            k.replace(".", "/"): self.space.params[k].optuna_value(values[k])
            for k in self.space.tuned_keys()
            if applies(k, optimizer)
        }


def _number_like(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def applies(key: str, optimizer: str) -> bool:
    """Whether `key` means anything to `optimizer` (momentum and nesterov are sgd's, betas
    adam's and adamw's)."""
    return key not in (SGD_ONLY if optimizer != "sgd" else ADAM_ONLY)


def applicable(values: dict[str, Any], base_optimizer: str) -> dict[str, Any]:
    """The flat sampled values a trial's config really uses; the others are left out (a blank
    cell in leaderboard.csv, absent from the trial's W&B config)."""
    optimizer = values.get("optim.name", base_optimizer)
    return {k: v for k, v in values.items() if applies(k, optimizer)}


def applicable_nested(config: dict, base_optimizer: str) -> dict:
    """A trial's nested config without the fields its optimizer does not use."""
    optimizer = (config.get("optim") or {}).get("name", base_optimizer)
    return {
        section: {k: v for k, v in fields.items() if applies(f"{section}.{k}", optimizer)}
        if isinstance(fields, dict)
        else fields
        for section, fields in config.items()
    }


def flatten(nested: dict) -> dict[str, Any]:
    """{section: {field: value}} (a config's to_dict(), a trial's sampled point) as
    {"section.field": value}, the keys of --set and the search space; the one flattener."""
    return {
        f"{s}.{k}": v
        for s, fields in nested.items()
        if isinstance(fields, dict)
        for k, v in fields.items()
    }


def overrides_for(sampled: dict, base: Config) -> dict[str, Any]:
    """Dotted Config overrides for one sampled point, minus fields the sampled optimizer
    does not use (momentum/nesterov are sgd's, betas adam's)."""
    flat = flatten(sampled) if any(isinstance(v, dict) for v in sampled.values()) else dict(sampled)
    name = flat.get("optim.name", base.optim.name)
    out = applicable(flat, base.optim.name)
    if name != "sgd" and base.optim.nesterov:
        out["optim.nesterov"] = False  # a Nesterov base (fast, demo) must not make adam invalid
    return out


def trial_config(base: Config, sampled: dict) -> Config:
    return base.with_overrides(overrides_for(sampled, base))


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpaceError(f"{where}: expected a number, got {value!r}")
    return value


def _parse_param(where: str, key: str, spec: Any) -> Param:
    if not isinstance(spec, dict):
        return Param(key, "constant", (spec,))
    if len(spec) != 1:
        raise SpaceError(
            f"{where}: expected one distribution ({', '.join(DISTRIBUTIONS)}), "
            f"got {list(spec) or 'an empty mapping'}"
        )
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise SpaceError(
            f"{where}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}"
        )
    if not isinstance(args, list) or not args:
        raise SpaceError(
            f"{where}: {kind} needs a list, e.g. {{{kind}: "
            f"{'[a, b]' if kind == 'choice' else '[low, high]'}}}"
        )
    if kind == "choice":
        return Param(key, kind, tuple(args))
    need = 3 if kind == "quniform" else 2
    if len(args) != need:
        raise SpaceError(
            f"{where}: {kind} needs {need} values "
            f"({'[low, high, q]' if need == 3 else '[low, high]'}), got {args}"
        )
    low, high = (_number(f"{where}.{kind}[{i}]", v) for i, v in enumerate(args[:2]))
    if not low < high:
        raise SpaceError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise SpaceError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not all(isinstance(v, int) and not isinstance(v, bool) for v in args):
        raise SpaceError(f"{where}: randint needs integer bounds, got {args}")
    if kind == "quniform":
        q = _number(f"{where}.quniform[2]", args[2])
        if q <= 0 or q > high - low:
            raise SpaceError(f"{where}: quniform needs 0 < q <= high - low, got q={q}")
    return Param(key, kind, tuple(args))


def _context(key: str, base: Config) -> dict[str, Any]:
    """Overrides that make `key` meaningful on its own (nesterov needs sgd and momentum)."""
    if key in SGD_ONLY and base.optim.name != "sgd":
        return {"optim.name": "sgd", "optim.momentum": base.optim.momentum or 0.9}
    if key in ADAM_ONLY and base.optim.name == "sgd":
        return {"optim.name": "adam"}
    return {}


def parse_space(
    values: Any, base: Config, source: str = "<space>", checks: int = 200, seed: int = 0
) -> SearchSpace:
    if values is None:
        raise SpaceError(f"{source}: empty search space; add SECTION.FIELD keys")
    if not isinstance(values, dict):
        raise SpaceError(
            f"{source}: expected a mapping of SECTION.FIELD keys, got {type(values).__name__}"
        )
    sections = base.to_dict()
    params: dict[str, Param] = {}
    for key, spec in values.items():
        where = f"{source}: {key}"
        if not isinstance(key, str):
            raise SpaceError(f"{where}: keys must be SECTION.FIELD strings")
        section, _, name = key.partition(".")
        if section not in sections or name not in sections[section]:
            known = ", ".join(sections[section]) if section in sections else ", ".join(sections)
            raise SpaceError(
                f"{where}: unknown key; use SECTION.FIELD "
                f"({section + ' has' if section in sections else 'sections are'} "
                f"{known})"
            )
        if section in ("data", "model"):
            raise SpaceError(
                f"{where}: {section}.* is not tunable here; set it with the data/config flags"
            )
        if key in NOT_TUNABLE:
            raise SpaceError(f"{where}: not tunable ({NOT_TUNABLE[key]})")
        params[key] = _parse_param(where, key, spec)
    if not params:
        raise SpaceError(f"{source}: empty search space; add SECTION.FIELD keys")
    # every bound and every choice on its own, then random whole points
    for key, p in params.items():
        for value in p.extremes():
            try:
                trial_config(base, {**_context(key, base), key: value})
            except ConfigError as err:
                raise SpaceError(
                    f"{source}: {key}: value {value!r} makes an invalid config ({err})"
                ) from None
    rng = random.Random(seed)
    for _ in range(checks):
        point = {k: p.sample(rng) for k, p in params.items()}
        try:
            trial_config(base, point)
        except ConfigError as err:
            raise SpaceError(
                f"{source}: a sampled point makes an invalid config ({err}); "
                f"narrow that field's range"
            ) from None
    return SearchSpace(params, source, dict(values))


def load_space(path: str | Path, base: Config) -> SearchSpace:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"search space {path}: not found") from None
    except IsADirectoryError:
        raise SpaceError(f"search space {path}: is a directory, expected a YAML file") from None
    except yaml.YAMLError as err:
        raise SpaceError(f"search space {path}: not valid YAML ({err})") from None
    return parse_space(values, base, str(path))
