"""Serve's settings, each default written once, here: `ServeArgs` (the model app: everything
about a deployment except secrets), `ModelArgs` (a second version served beside the first, the
canary), `HealthArgs` (its health app) and `HttpOptions` (Serve's HTTP proxy).

They are what `serve deploy serve/config.yaml` or a RayService's serveConfigV2 passes to the
builders in serve/app.py, so they are checked strictly: unknown keys are an error. The
`modresnet serve` flags take their defaults and help from these fields (serve/commands.py), and
serve/config.yaml is generated from them: `python -m serve.args > serve/config.yaml`.
"""

from __future__ import annotations

import difflib
import json
import textwrap
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

APP_NAME = "modresnet"
GPU_BATCH_WAIT_S = 0.002
BackendName = Literal["onnx", "torch", "int8"]


CHECKPOINT_HELP = (
    "Run directory, checkpoint folder or registered model (models:/NAME@ALIAS, "
    "models:/NAME/VERSION) to serve (on a cluster: a path every replica can read)"
)
VERSION_HELP = (
    "The version label responses carry in X-Model-Version and the metrics in `version` "
    '(a registered model: NAME/VERSION; "": sha-<first 12 hex of the weights\' sha256>)'
)
# A label travels in a header and a metrics label: printable, no spaces, bounded.
VERSION_PATTERN = r"^[A-Za-z0-9._/@:+-]{0,200}$"
LINEAGE_HELP = "Where the version came from (run, search, data, code), shown on / and in /model"


class ModelArgs(BaseModel):
    """One more version a replica serves beside its primary one (the canary): its own
    weights, label and lineage, loaded with the same backend and batching settings."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description=CHECKPOINT_HELP)
    version: str = Field(default="", pattern=VERSION_PATTERN, description=VERSION_HELP)
    lineage: dict[str, Any] = Field(default_factory=dict, description=LINEAGE_HELP)
    fail_rate: float = Field(
        default=0,
        ge=0,
        le=1,
        description="Chaos: this share of the model's batches fail with a 500, to rehearse a "
        "rollback",
    )


def registered(version: Any) -> dict[str, Any]:
    """The version label and lineage a registered version (modresnet.registry Version) is
    served with: what responses, metrics, /model and the page name and show of it."""
    return {
        "version": version.label,
        "lineage": {
            **version.lineage,
            "registered": version.label,
            "sha256": version.sha256,
            "val_acc": version.val_acc,
            "test_acc": version.test_acc,
            "test_n": version.test_n,
            "test_md5": version.test_md5,
        },
    }


class ServeArgs(BaseModel):
    """Everything about a deployment except secrets; visible through `serve config`.

    Unknown keys are an error: a misspelt arg in serve/config.yaml or a RayService's
    serveConfigV2 would otherwise be dropped silently and its default served instead."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description=CHECKPOINT_HELP, examples=["runs/demo"])
    version: str = Field(default="", pattern=VERSION_PATTERN, description=VERSION_HELP)
    lineage: dict[str, Any] = Field(default_factory=dict, description=LINEAGE_HELP)
    canary: ModelArgs | None = Field(
        default=None,
        description="A second version served beside the checkpoint, sent `canary_share` of "
        "the requests (the live share: the app's traffic table, serve/canary/traffic.py)",
    )
    canary_share: float = Field(
        default=0,
        ge=0,
        le=1,
        description="Share of requests the canary answers until the traffic table says otherwise",
    )
    backend: BackendName = Field(
        default="onnx",
        description="Inference backend (onnx: exported once per checkpoint, the faster on CPU "
        "here; int8: after python -m serve.quantize RUN)",
    )
    threads: int = Field(default=1, ge=1, le=64, description="Inference threads per replica")
    replica_cpus: float = Field(default=1.0, gt=0, description="Logical CPUs each replica reserves")
    gpus_per_replica: float = Field(
        default=0,
        ge=0,
        description="GPUs each replica reserves, fractions allowed (0.25: four replicas share "
        "one); runs the torch backend, which is then the default",
    )
    min_replicas: int = Field(default=1, ge=1, description="Autoscaling lower bound")
    max_replicas: int = Field(
        default=2,
        ge=1,
        validate_default=True,  # min_replicas alone must not pass over the default
        description="Autoscaling upper bound",
    )
    target_ongoing_requests: float = Field(
        default=8, gt=0, description="Autoscaling target of in-flight requests per replica"
    )
    upscale_delay_s: float = Field(
        default=10, ge=0, description="Autoscaling: load over the target this long adds a replica"
    )
    downscale_delay_s: float = Field(
        default=60,
        ge=0,
        description="Autoscaling: load under the target this long removes a replica",
    )
    look_back_period_s: float = Field(
        default=30, gt=0, description="Autoscaling: the window the load is averaged over"
    )
    max_batch_size: int = Field(
        default=16, ge=1, le=1024, description="Dynamic batching: most images per forward pass"
    )
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="Dynamic batching: longest wait to fill a batch (0: what queued while the "
        f"model was busy). With GPUs the default is {GPU_BATCH_WAIT_S * 1000:g} ms: there a "
        "batch costs little more than one image and the model is free again within a "
        "millisecond, so without a wait nearly every arrival runs as a batch of its own",
    )
    max_ongoing_requests: int = Field(
        default=32, ge=1, description="Requests one replica works on at once"
    )
    max_queued_requests: int = Field(
        default=32, ge=-1, description="Queued requests before 429 + Retry-After (-1: unbounded)"
    )
    retry_after_s: int = Field(default=1, ge=1, le=3600, description="Retry-After sent with a 429")
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest request body; larger gets 413"
    )
    body_timeout_s: float = Field(
        default=10, gt=0, le=600, description="Whole body must arrive within this; else 408"
    )
    max_images: int = Field(
        default=64, ge=1, description="Most images in one request; more gets 413"
    )
    max_pixels: int = Field(
        default=16_000_000,
        ge=1024,
        description="Most pixels an image may declare (its header, read before decoding)",
    )
    request_pixels: int = Field(
        default=32_000_000, ge=1024, description="Declared pixels summed over one request's images"
    )
    decode_workers: int = Field(
        default=2, ge=1, le=64, description="Image-decoding threads per replica"
    )
    decode_timeout_s: float = Field(
        default=3, gt=0, le=600, description="Longest decode of one image; past it, 413"
    )
    top_k: int = Field(
        default=5, ge=1, le=10, description="Classes per image when a request names none"
    )
    api_key_env: str = Field(
        default="MODRESNET_API_KEY",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the env var holding the API key (not the key)",
    )
    api_key_required: bool = Field(
        default=False,
        description="Fail the deployment if a replica cannot "
        "see the key (instead of serving without auth)",
    )
    health_check_period_s: float = Field(
        default=5, gt=0, description="Time between Serve's health checks of a replica"
    )
    health_check_timeout_s: float = Field(
        default=30, gt=0, description="A health check slower than this fails"
    )
    graceful_shutdown_timeout_s: float = Field(
        default=20, ge=0, description="A stopping replica's time to finish its requests"
    )
    metrics: bool = Field(
        default=True,
        description="Record the Prometheus series (docs/serving.md); off only to measure what "
        "they cost",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _name_unknown_keys(cls, data: Any, handler: ModelWrapValidatorHandler[ServeArgs]) -> Any:
        """`extra="forbid"` refuses unknown keys; this says which arg each one may have meant."""
        try:
            return handler(data)
        except ValidationError as err:
            if not any(e["type"] == "extra_forbidden" for e in err.errors()):
                raise
            details: list[InitErrorDetails] = []
            for e in err.errors():
                if e["type"] != "extra_forbidden":
                    details.append(
                        {
                            "type": e["type"],
                            "loc": e["loc"],
                            "input": e["input"],
                            "ctx": e.get("ctx", {}),
                        }
                    )
                    continue
                *parent, last = map(str, e["loc"])  # a canary's key: ("canary", key)
                prefix = "".join(part + "." for part in parent)
                known = [prefix + k for k in (ModelArgs if parent else cls).model_fields]
                key = prefix + last
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                message = f"unknown serve arg {key!r}{hint}; the args are: {', '.join(known)}"
                details.append(
                    {
                        "type": PydanticCustomError("unknown_arg", message),
                        "loc": e["loc"],
                        "input": e["input"],
                    }
                )
            raise ValidationError.from_exception_data(cls.__name__, details) from None

    @model_validator(mode="before")
    @classmethod
    def _gpu_defaults(cls, data: Any) -> Any:
        """With GPUs, the backend and the batch wait not given default to the GPU's."""
        if isinstance(data, dict) and data.get("gpus_per_replica"):
            data = {"backend": "torch", "batch_wait_timeout_s": GPU_BATCH_WAIT_S, **data}
        return data

    @field_validator("gpus_per_replica")
    @classmethod
    def _gpus_run_torch(cls, v: float, info: ValidationInfo) -> float:
        backend = info.data.get("backend")
        if v and backend not in (None, "torch"):
            raise ValueError(
                f"GPU replicas run the torch backend only, not {backend}: use --backend torch"
            )
        return v

    @field_validator("max_replicas")
    @classmethod
    def _replicas(cls, v: int, info: ValidationInfo) -> int:
        lo = info.data.get("min_replicas", 1)
        if v < lo:
            raise ValueError(f"max_replicas ({v}) is below min_replicas ({lo})")
        return v


class HealthArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str = Field(
        default=APP_NAME, description="The Serve application whose readiness to report"
    )
    cache_s: float = Field(
        default=1.0, gt=0, le=60, description="How stale a readiness answer may be"
    )


class HttpOptions(BaseModel):
    """Serve's HTTP proxy: `serve.start(http_options=...)`, serve/config.yaml's http_options."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        default="127.0.0.1", description="Interface for the HTTP proxy (0.0.0.0: every interface)"
    )
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port")


CONFIG_HEADER = """\
# Generated from serve/args.py by `python -m serve.args > serve/config.yaml`: change a default
# there, not here (tests/unit/test_serve_args.py checks the two agree).
#
# `serve deploy serve/config.yaml` (or `serve run serve/config.yaml`) with a Ray cluster whose
# nodes can read the checkpoint path and import this repo (install it on every node, or set
# runtime_env.working_dir to a remote URI / local:///abs/dir). No secrets here: args are
# readable through `serve config` and the dashboard. The API key, if any, is read by the
# replicas from the environment variable NAMED by api_key_env (export it on every node);
# api_key_required: true makes a replica without it fail the deployment instead of serving open.
# The second app answers /v2/health/* on its own replica, so probes never wait behind requests.
# The first app has the name `modresnet serve` deploys: redeploying rolls replicas over in place.
# http_options.host: `serve build` would emit 0.0.0.0; widen only behind a firewall/TLS proxy.
"""


def _scalar(value: Any) -> str:
    """A YAML scalar as a person writes it: true, 8, 1.0, onnx."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if yaml.safe_load(value) == value else json.dumps(value)
    if value is None or isinstance(value, dict | list):
        return json.dumps(value)
    return repr(value)


def _args_yaml(model: type[BaseModel], values: dict[str, Any], indent: str) -> list[str]:
    """`key: value` lines, each after its field's description as a comment."""
    lines = []
    for name, field in model.model_fields.items():
        if field.description:
            lines += textwrap.wrap(
                field.description,
                100,
                initial_indent=indent + "# ",
                subsequent_indent=indent + "# ",
            )
        lines.append(f"{indent}{name}: {_scalar(values[name])}")
    return lines


def config_yaml() -> str:
    """serve/config.yaml: both apps with every arg at its default (the checkpoint: its example)."""
    args = {
        name: field.examples[0] if field.examples else field.get_default(call_default_factory=True)
        for name, field in ServeArgs.model_fields.items()
    }
    http = HttpOptions().model_dump()
    lines = [
        "proxy_location: EveryNode",
        "http_options:",
        *[f"  {k}: {_scalar(v)}" for k, v in http.items()],
        "applications:",
        f"  - name: {APP_NAME}",
        "    route_prefix: /",
        "    import_path: serve.app:build_app",
        "    args:",
        *_args_yaml(ServeArgs, args, " " * 6),
        f"  - name: {APP_NAME}-health",
        "    route_prefix: /v2/health",
        "    import_path: serve.app:build_health",
        "    args:",
        *_args_yaml(HealthArgs, HealthArgs().model_dump(), " " * 6),
    ]
    return CONFIG_HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(config_yaml(), end="")
