"""The settings of one `modresnet tune` search, typed: saved as <experiment>/modresnet-tune.json
when the search starts and read back by `--resume`, so a restored search is the same search.

Validated when created (from flags) and again when read (a hand-edited or truncated file is one
line naming the file and the field). The JSON is flat and compatible with the files earlier
versions wrote (they also stored `mode`, which follows from `metric`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jobs.search_space import SearchSpace, parse_space

if TYPE_CHECKING:
    from modresnet.storage import Location
from modresnet import config as configs
from modresnet import names
from modresnet.config import Config, ConfigError
from modresnet.errors import UserError
from modresnet.fields import coerce

JOB_FILE = "modresnet-tune.json"
Metric = Literal["val_acc", "val_loss", "train_acc", "train_loss"]
Mode = Literal["max", "min"]
Search = Literal["random", "optuna"]
Scheduler = Literal["asha", "pbt", "fifo"]
METRICS: dict[str, Mode] = {
    "val_acc": "max",
    "val_loss": "min",
    "train_acc": "max",
    "train_loss": "min",
}


class TuneSetupError(UserError):
    """Flags or the experiment folder do not allow this search."""


class InvalidSetting(TuneSetupError):
    """One search setting is out of range; `field` names it (the flag is --FIELD)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"--{field.replace('_', '-')}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """The search and trial resources: each field is the `tune` flag of the same name.
    grace_period is ASHA's first rung, and PBT's interval between exploits."""

    search: Search = "random"
    scheduler: Scheduler = "asha"
    samples: int = 8
    max_epochs: int = 10
    grace_period: int = 1
    reduction_factor: int = 2
    concurrent: int = 2
    metric: Metric = "val_acc"
    workers_per_trial: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    include_paper: bool = False
    search_seed: int = 0

    def __post_init__(self) -> None:
        for name, choices in (("search", Search), ("scheduler", Scheduler)):
            if getattr(self, name) not in typing.get_args(choices):
                raise InvalidSetting(
                    name,
                    f"must be one of {', '.join(typing.get_args(choices))}; "
                    f"got {getattr(self, name)!r}",
                )
        if self.metric not in METRICS:
            raise InvalidSetting(
                "metric", f"must be one of {', '.join(METRICS)}; got {self.metric!r}"
            )
        for name, low in (
            ("samples", 1),
            ("max_epochs", 1),
            ("grace_period", 1),
            ("reduction_factor", 2),
            ("concurrent", 1),
            ("workers_per_trial", 1),
        ):
            if getattr(self, name) < low:
                raise InvalidSetting(name, f"must be at least {low}, got {getattr(self, name)}")
        if self.grace_period > self.max_epochs and self.scheduler != "fifo":
            raise InvalidSetting(
                "grace_period",
                f"{self.grace_period} exceeds --max-epochs "
                f"{self.max_epochs}; {self.scheduler.upper()} could never act on a trial",
            )
        if self.cpus_per_trial <= 0:
            raise InvalidSetting("cpus_per_trial", f"must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise InvalidSetting("gpus_per_trial", f"must be >= 0, got {self.gpus_per_trial}")

    @property
    def mode(self) -> Mode:
        return METRICS[self.metric]


@dataclass(frozen=True, kw_only=True)
class TuneJob(SearchSettings):
    """A whole search: where it lives, the base config and space, and its settings."""

    name: str
    storage: str  # the local folder of the experiment (a staging folder for object storage)
    base: Config  # train.epochs is max_epochs
    space: dict[str, Any]  # the search-space YAML as parsed
    space_source: str  # where the space came from, for messages
    train_storage: str  # Ray Train runs of data-parallel trials
    remote: str | None = None  # object-storage root: Tune's storage_path, outputs published there

    @property
    def experiment(self) -> Path:
        return Path(self.storage) / self.name

    def remote_experiment(self) -> Location | None:
        """The experiment's folder in object storage, when the search lives there."""
        from modresnet import storage

        root = storage.parse(self.remote)
        if root is not None and not isinstance(root, storage.Location):
            raise InvalidSetting("remote", f"{self.remote} is not object storage (s3://, gs://)")
        return root.join(self.name) if root is not None else None

    def search_space(self) -> SearchSpace:
        """The parsed space, once it is known to serve this search and scheduler."""
        space = parse_space(self.space, self.base, self.space_source, checks=0)
        if self.search == "optuna" and not space.tuned_keys():
            raise InvalidSetting(
                "search",
                f"optuna: {space.source} has only constants, so there is nothing to "
                f"model; give a field a distribution, or use --search random",
            )
        if self.scheduler == "pbt":
            _check_pbt(self, space)
        return space

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["base"] = self.base.to_dict()
        out["mode"] = self.mode
        if self.remote is None:
            del out["remote"]
        return out

    @classmethod
    def from_dict(cls, values: Any, source: str) -> TuneJob:
        """The job a file holds, or a TuneSetupError naming `source` and the field."""
        if not isinstance(values, dict):
            raise TuneSetupError(f"{source}: expected a JSON object of search settings")
        values = dict(values)
        mode = values.pop("mode", None)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise TuneSetupError(
                f"{source}: {unknown[0]}: unknown field; a search has {', '.join(fields)}"
            )
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if name not in values:
                if f.default is dataclasses.MISSING:
                    raise TuneSetupError(f"{source}: {name}: missing")
                continue
            try:
                kwargs[name] = _coerce(name, values[name], hints[name])
            except ConfigError as err:
                raise TuneSetupError(f"{source}: {err}") from None
        try:
            names.name(kwargs["name"], "name")
            job = cls(**kwargs)
            job.search_space()
            job.remote_experiment()
        except InvalidSetting as err:
            raise TuneSetupError(f"{source}: {err.field}: {err.problem}") from None
        except names.UnsafeNameError as err:
            raise TuneSetupError(f"{source}: {err}") from None
        except ConfigError as err:
            raise TuneSetupError(f"{source}: space: {err}") from None
        if mode is not None and mode != job.mode:
            raise TuneSetupError(
                f"{source}: mode: {mode!r} contradicts metric {job.metric} ({job.mode})"
            )
        return job


def _check_pbt(job: TuneJob, space: SearchSpace) -> None:
    if not space.mutable_keys():
        raise InvalidSetting(
            "scheduler",
            f"pbt: {space.source} tunes none of optim.lr, optim.weight_decay, augment.* "
            f"(numbers), so PBT has nothing to mutate; tune one of them, or use "
            f"--scheduler asha",
        )
    if job.search == "optuna":
        raise InvalidSetting(
            "scheduler",
            "pbt changes the trials' configs mid-run, which Optuna's model cannot "
            "follow; use --search random with pbt, or --scheduler asha with optuna",
        )
    if job.workers_per_trial > 1:
        raise InvalidSetting(
            "scheduler",
            "pbt clones one trial's checkpoint into another, which a data-parallel trial "
            "(--workers-per-trial > 1) cannot take; use --scheduler asha, or one worker",
        )


def _coerce(name: str, value: Any, hint: Any) -> Any:
    if name == "base":
        try:
            return configs.from_dict(value)
        except ConfigError as err:
            raise ConfigError(f"base: {err}") from None
    if name == "space":
        if not isinstance(value, dict):
            raise ConfigError(f"space: expected a mapping of SECTION.FIELD keys, got {value!r}")
        return value
    return coerce(name, value, hint)


def new_job(
    base: Config,
    space: SearchSpace,
    settings: SearchSettings,
    storage: Path,
    name: str,
    remote: str | None = None,
) -> TuneJob:
    """A new search of `space` around `base`, whose trials train max_epochs at most."""
    exp = storage / names.name(name, "--name")
    job = TuneJob(
        **{f.name: getattr(settings, f.name) for f in dataclasses.fields(SearchSettings)},
        name=name,
        storage=str(storage),
        base=base.with_overrides({"train.epochs": settings.max_epochs}),
        space=space.raw,
        space_source=space.source,
        train_storage=str(exp / "train-runs"),
        remote=remote,
    )
    job.search_space()  # refuses a space this search or scheduler cannot use
    return job


def read_job(exp: Path) -> TuneJob:
    """The saved search to resume, once its folder is known to be safe to unpickle from."""
    path = exp / JOB_FILE
    if not path.exists():
        raise TuneSetupError(
            f"--resume: {exp} holds no modresnet search ({JOB_FILE} "
            f"missing); check NAME and --storage"
        )
    from modresnet.rundir import check_private_storage

    check_private_storage(exp)  # Ray's pickled state is loaded from there
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TuneSetupError(f"{path}: not a readable search file ({err})") from None
    return TuneJob.from_dict(values, str(path))
