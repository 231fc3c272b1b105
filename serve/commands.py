"""`modresnet serve`, and the client side of `modresnet predict --url`. Its flags are generated
from the fields of ServeArgs and HttpOptions (serve/args.py: type, help, default), by the
generator every command uses (modresnet/cli_config.py). Ray and the Serve app are imported when
the command runs, not when the CLI starts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from modresnet import config as configs
from modresnet.cli_common import console, user_errors
from modresnet.cli_config import Flag, with_flags
from modresnet.errors import UserError
from serve.args import HttpOptions, ServeArgs, registered
from serve.environment import INGRESS

# Flags in another unit than their field: --PARAM -> (field, field value per flag unit).
SCALED = {"batch_wait_ms": ("batch_wait_timeout_s", 1e-3), "max_body_mb": ("max_body_bytes", 2**20)}
HTTP_FLAGS = ("host", "port")
ARG_FLAGS = (
    "backend",
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "max_batch_size",
    "batch_wait_ms",
    "max_ongoing_requests",
    "max_queued_requests",
    "max_body_mb",
    "replica_cpus",
    "gpus_per_replica",
    "threads",
)


def _flag(model: type[BaseModel], param: str) -> Flag:
    """--PARAM from the field of `model` it sets; a SCALED one takes a number in its own unit."""
    name, scale = SCALED.get(param, (param, 1))
    field = model.model_fields[name]
    default = field.default / scale if scale != 1 else field.default
    if scale != 1:
        field = FieldInfo(annotation=float, description=field.description)
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    return Flag(param, param, field, default=shown)


FLAGS = [_flag(HttpOptions, p) for p in HTTP_FLAGS] + [_flag(ServeArgs, p) for p in ARG_FLAGS]


def _settings(model: type[BaseModel], values: dict[str, Any]) -> Any:
    """`model` from flag values, a bad one a UserError naming its flag."""
    try:
        return model.model_validate(values)
    except ValidationError as err:
        loc, problem = configs.explain(err, model)
        name = str(loc[0]) if loc else ""
        flag = next((p for p, (field, _) in SCALED.items() if field == name), name)
        raise UserError(f"--{flag.replace('_', '-')}: {problem}") from None


Address = Annotated[
    str | None,
    typer.Option(
        help="Join this Ray cluster (e.g. auto) instead of starting one; a running app is updated "
        "in place and the command returns."
    ),
]
ApiKeyEnv = Annotated[
    str | None,
    typer.Option(
        help="Require auth: the env var the replicas read the API key from; a replica without it "
        "fails the deploy. Default: required if "
        f"{ServeArgs.model_fields['api_key_env'].default} is set in this shell."
    ),
]
Metrics = Annotated[
    bool,
    typer.Option("--metrics/--no-metrics", help=ServeArgs.model_fields["metrics"].description),
]
PrometheusTargets = Annotated[
    Path | None,
    typer.Option(
        help="Where to write the Prometheus file_sd targets of the Ray this serves on. Default: "
        "$MODRESNET_HOME/prometheus/targets/modresnet-serve-PORT.json (~/.modresnet when unset)."
    ),
]
Registry = Annotated[
    str | None,
    typer.Option(
        help="The model registry a models:/ checkpoint is read from: an MLflow tracking URI. "
        "Default: MLFLOW_TRACKING_URI, else the embedded one under the storage root."
    ),
]
Ingress = Annotated[
    str,
    typer.Option(
        help="HTTP ingress of the Ray this command starts: haproxy (HTTP straight to the "
        "replicas; about twice the throughput on 2 cores) | proxy (Serve's Python proxy). "
        "With --address the cluster's own setting applies."
    ),
]


def _model(checkpoint: str, registry: str | None) -> dict[str, Any]:
    """The checkpoint, version and lineage ServeArgs get for CHECKPOINT: a registered model is
    fetched from the registry and named by its version; a run in s3:// or gs:// is fetched to a
    local cache. A bad one is a one-line user error."""
    if checkpoint.startswith("models:/"):
        from modresnet.registry import resolve_checkpoint

        path, version = resolve_checkpoint(checkpoint, registry)
        assert version is not None
        return {"checkpoint": str(path), **registered(version)}
    from modresnet.checkpoint import resolve
    from modresnet.commands import local_run

    local = local_run(Path(checkpoint))
    resolve(local)
    return {"checkpoint": str(local)}


def predict_url(url: str, images: Sequence[Path], top_k: int) -> list[list[dict[str, Any]]]:
    """Top-k of each image from a running `modresnet serve` (API key from the environment)."""
    from serve.client import predict_paths

    return [r["top_k"] for r in predict_paths(url, list(images), top_k)]


@user_errors
@with_flags(FLAGS, into="given", after="checkpoint")
def serve(
    given: dict[str, Any],
    checkpoint: Annotated[
        str, typer.Argument(help=ServeArgs.model_fields["checkpoint"].description)
    ],
    address: Address = None,
    registry: Registry = None,
    api_key_env: ApiKeyEnv = None,
    ingress: Ingress = INGRESS[0],
    metrics: Metrics = True,
    prometheus_targets: PrometheusTargets = None,
) -> None:
    """Serve a checkpoint or a registered model (models:/NAME@champion) over HTTP with Ray
    Serve (FastAPI, batching, autoscaling).

    Run it again with another checkpoint and --address auto to roll replicas over with no
    downtime."""
    model = _model(checkpoint, registry)
    values = {k: v for k, v in given.items() if k not in HTTP_FLAGS}
    for param, (field, scale) in SCALED.items():
        if param in values:
            value = values.pop(param) * scale
            values[field] = int(value) if field.endswith("_bytes") else value
    default_env = ServeArgs.model_fields["api_key_env"].default
    args = _settings(
        ServeArgs,
        {
            **model,
            **values,
            "api_key_env": api_key_env or default_env,
            "api_key_required": bool(api_key_env or os.environ.get(default_env)),
            "metrics": metrics,
        },
    )
    http = _settings(HttpOptions, {k: v for k, v in given.items() if k in HTTP_FLAGS})
    if ingress not in INGRESS:
        raise UserError(f"--ingress: must be one of {', '.join(INGRESS)}; got {ingress!r}")
    from serve.launch import serve_app

    serve_app(
        args,
        http,
        address=address,
        ingress=ingress,
        prometheus_targets=prometheus_targets,
        info=lambda line: console.print(line, highlight=False),
    )
