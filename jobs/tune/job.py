"""The settings of one `modresnet tune` search, typed: saved as <experiment>/modresnet-tune.json
when the search starts and read back by `--resume`, so a restored search is the same search.

Validated when created (from flags) and again when read (a hand-edited or truncated file is one
line naming the file and the field). The JSON is flat and compatible with the files earlier
versions wrote (they also stored `mode`, which follows from `metric`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from jobs.tune.space import SearchSpace, parse_space

if TYPE_CHECKING:
    from modresnet.storage import Location
from modresnet import names
from modresnet.config import Config, ConfigError, FieldError, Int, Loc, Settings, dotted
from modresnet.errors import UserError

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


class SearchSettings(Settings):
    """The search and trial resources: each field is the `tune` flag of the same name, its
    description that flag's help. grace_period is ASHA's first rung, and PBT's interval
    between exploits."""

    model_config = ConfigDict(frozen=True)
    label = "a search"

    search: Annotated[Search, Field(description="How points are drawn (optuna: Optuna's TPE)")] = (
        "random"
    )
    scheduler: Annotated[
        Scheduler,
        Field(
            description="Stop weak trials (asha), clone strong ones and mutate their lr, "
            "weight decay and augmentation (pbt), or run all to the max (fifo)"
        ),
    ] = "asha"
    samples: Annotated[
        Int, Field(ge=1, description="Trials to run (the paper point counts as one)")
    ] = 8
    max_epochs: Annotated[
        Int, Field(ge=1, description="Epochs of a trial that runs to the end")
    ] = 10
    grace_period: Annotated[
        Int,
        Field(
            ge=1,
            description="ASHA: epochs before a trial can be stopped; PBT: epochs between exploits",
        ),
    ] = 1
    reduction_factor: Annotated[
        Int, Field(ge=2, description="ASHA: keep the top 1/N at every rung")
    ] = 2
    concurrent: Annotated[Int, Field(ge=1, description="Trials running at once")] = 2
    metric: Annotated[Metric, Field(description="What ranks the trials")] = "val_acc"
    workers_per_trial: Annotated[
        Int,
        Field(
            ge=1, description="Ray Train data-parallel workers per trial (1: train in the trial)"
        ),
    ] = 1
    cpus_per_trial: Annotated[
        float, Field(gt=0, description="CPUs per trial (fractions allowed)")
    ] = 1.0
    gpus_per_trial: Annotated[
        float, Field(ge=0, description="GPUs per trial (fractions allowed)")
    ] = 0.0
    include_paper: Annotated[
        bool, Field(description="Run the paper's recipe as the first trial")
    ] = False
    search_seed: Annotated[
        Int, Field(description="Seed of the search: its draws, TPE, PBT's perturbations")
    ] = 0

    @classmethod
    def invalid(cls, path: Loc, problem: str) -> Exception:
        return InvalidSetting(dotted(path), problem)

    @model_validator(mode="after")
    def _rungs(self) -> Self:
        if self.grace_period > self.max_epochs and self.scheduler != "fifo":
            raise FieldError(
                ("grace_period",),
                f"{self.grace_period} exceeds --max-epochs {self.max_epochs}; "
                f"{self.scheduler.upper()} could never act on a trial",
            )
        return self

    @model_validator(mode="after")
    def _whole_gpus(self) -> Self:
        """NCCL refuses two ranks of one job on one GPU, which a fractional share per worker
        of a data-parallel trial lets Ray do."""
        workers, gpus = self.workers_per_trial, self.gpus_per_trial
        if workers > 1 and gpus and not (gpus / workers).is_integer():
            raise FieldError(
                ("gpus_per_trial",),
                f"{gpus:g} over --workers-per-trial {workers} is {gpus / workers:g} of a GPU per "
                f"worker, and NCCL needs each rank on its own GPU; give every worker whole GPUs "
                f"(--gpus-per-trial {workers * max(1, round(gpus / workers))}) or use "
                f"--workers-per-trial 1",
            )
        return self

    @property
    def mode(self) -> Mode:
        return METRICS[self.metric]


class TuneJob(SearchSettings):
    """A whole search: where it lives, the base config and space, and its settings."""

    name: str
    storage: str  # the local folder of the experiment (a staging folder for object storage)
    base: Config  # train.epochs is max_epochs
    space: dict[str, Any]  # the search-space YAML as parsed
    space_source: str  # where the space came from, for messages
    train_storage: str  # Ray Train runs of data-parallel trials
    remote: str | None = None  # object-storage root: Tune's storage_path, outputs published there
    # export the best trial as best-run/ and test it once; a pipeline tests its retrain instead
    test_best: bool = True

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
        out = self.model_dump(mode="json", exclude={"remote"} if self.remote is None else None)
        out["mode"] = self.mode
        return out

    @classmethod
    def from_dict(cls, values: Any, source: str) -> TuneJob:
        """The job a file holds, or a TuneSetupError naming `source` and the field."""
        if not isinstance(values, dict):
            raise TuneSetupError(f"{source}: expected a JSON object of search settings")
        values = dict(values)
        mode = values.pop("mode", None)
        try:
            job = cls.model_validate(values)
            names.name(job.name, "name")
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


def new_job(
    base: Config,
    space: SearchSpace,
    settings: SearchSettings,
    storage: Path,
    name: str,
    remote: str | None = None,
    test_best: bool = True,
) -> TuneJob:
    """A new search of `space` around `base`, whose trials train max_epochs at most."""
    exp = storage / names.name(name, "--name")
    job = TuneJob(
        **dict(settings),
        name=name,
        storage=str(storage),
        base=base.with_overrides({"train.epochs": settings.max_epochs}),
        space=space.raw,
        space_source=space.source,
        train_storage=str(exp / "train-runs"),
        remote=remote,
        test_best=test_best,
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
    from modresnet.ownership import check_private_storage

    check_private_storage(exp)  # Ray's pickled state is loaded from there
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TuneSetupError(f"{path}: not a readable search file ({err})") from None
    return TuneJob.from_dict(values, str(path))
