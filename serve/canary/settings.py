"""How a canary moves traffic, one schema for `modresnet models promote` and `modresnet pipeline
run --promote canary`: each field is the flag of the same name (modresnet/cli_config.py), and
a bad value is one line naming its flag."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from modresnet.config import Int, Loc, Settings
from modresnet.errors import UserError


class CanaryFlagError(UserError):
    """A canary setting out of its range."""


class CanarySettings(Settings):
    model_config = ConfigDict(frozen=True, strict=False)
    label = "the canary"

    canary: Annotated[
        float,
        Field(
            gt=0,
            lt=100,
            description="First share of the requests the candidate answers, in % (100 is --direct)",
        ),
    ] = 10.0
    step: Annotated[
        float,
        Field(
            gt=0, le=100, description="Share added after each good window, in % (up to below 100)"
        ),
    ] = 30.0
    interval: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds per window of the serving metrics (Ray exports them every "
            "RAY_metrics_report_interval_ms, 10 s by default: use at least twice that)",
        ),
    ] = 20.0
    watch: Annotated[
        float, Field(ge=0, description="Seconds of good windows, over all steps, before promotion")
    ] = 60.0
    error_margin: Annotated[
        float,
        Field(
            ge=0,
            lt=1,
            description="Roll back when the candidate's 5xx rate exceeds the champion's by more "
            "than this (0.01: one point)",
        ),
    ] = 0.01
    latency_margin: Annotated[
        float,
        Field(
            ge=0,
            description="Roll back when the candidate's p99 latency exceeds the champion's by "
            "more than this share (0.5: 50 %)",
        ),
    ] = 0.5
    min_requests: Annotated[
        Int,
        Field(ge=1, description="A window with fewer requests for either version decides nothing"),
    ] = 20
    fail_rate: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="Rehearse a rollback: this share of the candidate's batches fail (500)",
        ),
    ] = 0.0

    @classmethod
    def invalid(cls, path: Loc, problem: str) -> Exception:
        flag = str(path[0]).replace("_", "-") if path else "canary"
        return CanaryFlagError(f"--{flag}: {problem}")
