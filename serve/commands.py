"""`modresnet serve`, and the client side of `modresnet predict --url`. Ray and the Serve
app are imported when the command runs, not when the CLI starts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from modresnet.cli_common import console, user_errors
from modresnet.errors import UserError

Backend = Annotated[
    str,
    typer.Option(
        help="onnx (exported once per checkpoint; the faster on CPU here) | torch | int8 (after "
        "python -m serve.quantize RUN)"
    ),
]
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
        "fails the deploy. Default: required if MODRESNET_API_KEY is set in this shell."
    ),
]


def predict_url(url: str, images: Sequence[Path], top_k: int) -> list[list[dict[str, Any]]]:
    """Top-k of each image from a running `modresnet serve` (API key from the environment)."""
    from serve.client import predict_paths

    return [r["top_k"] for r in predict_paths(url, list(images), top_k)]


@user_errors
def serve(
    checkpoint: Annotated[
        Path, typer.Argument(help="Run directory or checkpoint folder to serve.")
    ],
    host: Annotated[
        str, typer.Option(help="Interface for the HTTP proxy (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    backend: Backend = "onnx",
    min_replicas: Annotated[int, typer.Option(help="Autoscaling lower bound.")] = 1,
    max_replicas: Annotated[int, typer.Option(help="Autoscaling upper bound.")] = 2,
    target_ongoing_requests: Annotated[
        float, typer.Option(help="Autoscaling target of in-flight requests per replica.")
    ] = 8,
    max_batch_size: Annotated[
        int, typer.Option(help="Dynamic batching: most images per forward pass.")
    ] = 16,
    batch_wait_ms: Annotated[
        float,
        typer.Option(
            help="Dynamic batching: longest wait to fill a batch (0: what queued while the model "
            "was busy)."
        ),
    ] = 0,
    max_ongoing_requests: Annotated[
        int, typer.Option(help="Requests one replica works on at once.")
    ] = 32,
    max_queued_requests: Annotated[
        int, typer.Option(help="Queued requests before 429 + Retry-After (-1: unbounded).")
    ] = 32,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body; larger gets 413.")] = 10,
    replica_cpus: Annotated[float, typer.Option(help="Logical CPUs each replica reserves.")] = 1.0,
    threads: Annotated[int, typer.Option(help="Inference threads per replica.")] = 1,
    address: Address = None,
    api_key_env: ApiKeyEnv = None,
    ingress: Annotated[
        str,
        typer.Option(
            help="HTTP ingress of the Ray this command starts: haproxy (HTTP straight to the "
            "replicas; about twice the throughput on 2 cores) | proxy (Serve's Python proxy). "
            "With --address the cluster's own setting applies."
        ),
    ] = "haproxy",
) -> None:
    """Serve a checkpoint over HTTP with Ray Serve (FastAPI, batching, autoscaling).

    Run it again with another checkpoint and --address auto to roll replicas over with no
    downtime."""
    from pydantic import ValidationError

    from modresnet.checkpoint import resolve
    from modresnet.commands import local_run

    checkpoint = local_run(checkpoint)  # a run in s3:// or gs:// is fetched to a local cache
    resolve(checkpoint)  # a CheckpointError here is a one-line user error
    try:
        from serve.app import ServeArgs

        args = ServeArgs.model_validate(
            {
                "checkpoint": str(checkpoint),
                "backend": backend,
                "threads": threads,
                "replica_cpus": replica_cpus,
                "min_replicas": min_replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": target_ongoing_requests,
                "max_batch_size": max_batch_size,
                "batch_wait_timeout_s": batch_wait_ms / 1000,
                "max_ongoing_requests": max_ongoing_requests,
                "max_queued_requests": max_queued_requests,
                "max_body_bytes": int(max_body_mb * 1024 * 1024),
                "api_key_env": api_key_env or "MODRESNET_API_KEY",
                "api_key_required": bool(api_key_env or os.environ.get("MODRESNET_API_KEY")),
            }
        )
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    from serve.app import INGRESS
    from serve.launch import serve_app

    if ingress not in INGRESS:
        raise UserError(f"--ingress: must be one of {', '.join(INGRESS)}; got {ingress!r}")
    serve_app(
        args,
        host=host,
        port=port,
        address=address,
        ingress=ingress,
        info=lambda line: console.print(line, highlight=False),
    )
