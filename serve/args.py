"""The typed arguments of the Serve apps: everything about a deployment except secrets.

They are what `serve deploy serve/config.yaml` or a RayService's serveConfigV2 passes to the
builders in serve/app.py, so they are checked strictly: unknown keys are an error.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

APP_NAME = "modresnet"


class ServeArgs(BaseModel):
    """Everything about a deployment except secrets; visible through `serve config`.

    Unknown keys are an error: a misspelt arg in serve/config.yaml or a RayService's
    serveConfigV2 would otherwise be dropped silently and its default served instead."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(
        description="Run directory or checkpoint folder (readable by replicas)."
    )
    backend: Literal["onnx", "torch", "int8"] = "onnx"
    threads: int = Field(1, ge=1, le=64, description="Intra-op threads per replica.")
    replica_cpus: float = Field(1.0, gt=0, description="Logical CPUs each replica reserves.")
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(8, gt=0)
    upscale_delay_s: float = Field(10, ge=0)
    downscale_delay_s: float = Field(60, ge=0)
    look_back_period_s: float = Field(30, gt=0)
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Wait for more requests after the first of a batch. 0: a batch is what "
        "queued while the model was busy (on this CPU an image costs about the same alone or "
        "in 16, so waiting only adds latency); raise it where batches are much cheaper (GPU).",
    )
    max_ongoing_requests: int = Field(32, ge=1)
    max_queued_requests: int = Field(32, ge=-1, description="-1: unbounded; else 429 when full.")
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After sent with a 429.")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    body_timeout_s: float = Field(
        10, gt=0, le=600, description="Whole body must arrive within this; else 408."
    )
    max_images: int = Field(64, ge=1)
    max_pixels: int = Field(16_000_000, ge=1024, description="Per image (declared size).")
    request_pixels: int = Field(
        32_000_000, ge=1024, description="Declared pixels summed over one request's images."
    )
    decode_workers: int = Field(2, ge=1, le=64, description="Image-decoding threads per replica.")
    decode_timeout_s: float = Field(3, gt=0, le=600, description="Per image; else 413.")
    top_k: int = Field(5, ge=1, le=10)
    api_key_env: str = Field(
        "MODRESNET_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the env var holding the API key (not the key).",
    )
    api_key_required: bool = Field(
        False,
        description="Fail the deployment if a replica cannot "
        "see the key (instead of serving without auth).",
    )
    health_check_period_s: float = Field(5, gt=0)
    health_check_timeout_s: float = Field(30, gt=0)
    graceful_shutdown_timeout_s: float = Field(20, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = list(cls.model_fields)
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:

                def hint(key: str) -> str:
                    close = difflib.get_close_matches(key, known, n=1)
                    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")

                raise ValueError(
                    f"unknown serve arg{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(map(hint, unknown))}; the args are: {', '.join(known)}"
                )
        return data

    @field_validator("max_replicas")
    @classmethod
    def _replicas(cls, v: int, info: ValidationInfo) -> int:
        lo = info.data.get("min_replicas", 1)
        if v < lo:
            raise ValueError(f"max_replicas ({v}) is below min_replicas ({lo})")
        return v


class HealthArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str = Field(APP_NAME, description="The Serve application whose readiness to report.")
    cache_s: float = Field(1.0, gt=0, le=60, description="How stale a readiness answer may be.")
