"""The settings of one `modresnet pipeline run`, typed: the search (the `tune` settings), the
retrain (the `train` resources), the registration, the gate and the promotion. Saved in
pipeline.json when the pipeline starts, so a rerun is checked against the pipeline it resumes.
Each group is a settings model whose fields become the command's flags (modresnet/cli_config.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from jobs.tune.job import SearchSettings
from modresnet.config import Config, Int, Settings
from modresnet.errors import UserError
from serve.canary.settings import CanarySettings

Promote = Literal["canary", "direct", "none"]


class PipelineSetupError(UserError):
    """The flags, the storage or the saved pipeline do not allow this run."""


class RetrainSettings(Settings):
    """The retrain of the best configuration at its full budget: the `train` command's
    resources, each field the flag of the same name."""

    model_config = ConfigDict(frozen=True)
    label = "the retrain"

    workers: Annotated[Int, Field(ge=1, description="Ray Train data-parallel workers")] = 2
    gpu: Annotated[bool, Field(description="One GPU per worker (nccl), else CPU (gloo)")] = False
    cpus_per_worker: Annotated[
        float, Field(gt=0, description="CPUs (and torch threads) per worker")
    ] = 1.0
    max_failures: Annotated[
        Int, Field(ge=0, description="Worker-group restarts from the latest checkpoint")
    ] = 3


class PipelineSettings(Settings):
    """What a pipeline is: a rerun must give the same (pipeline.json holds them). How it runs
    (--address, --notify, --wandb) may change between runs."""

    model_config = ConfigDict(frozen=True)
    label = "a pipeline"

    name: str
    storage: str  # as given: a path or an object-storage URI
    registry: str | None = None  # MLflow tracking URI; None: $MLFLOW_TRACKING_URI or the default
    model: str  # the registered model's name
    app: str = "modresnet"  # the Serve app promotion rolls over
    promote: Promote = "canary"
    tolerance: Annotated[float, Field(ge=0, le=1)]  # the gate's (modresnet.registry)
    base: Config  # train.epochs and data.subset are the retrain's full budget
    search_subset: Annotated[Int | None, Field(ge=1)] = None  # the trials' data.subset
    space: dict[str, Any]
    space_source: str
    search: SearchSettings
    retrain: RetrainSettings
    canary: CanarySettings

    def differences(self, saved: PipelineSettings) -> list[str]:
        """Each setting (dotted) whose value differs from `saved`'s, in order."""
        return _diff(saved.model_dump(mode="json"), self.model_dump(mode="json"), "")


def _diff(old: Any, new: Any, where: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            out += _diff(old.get(key), new.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if old == new else [f"{where} {new!r} (saved: {old!r})"]
