"""The Ray Serve deployments: the model app (the replica of serve/service.py as a Serve
ingress, with dynamic batching, autoscaling, backpressure) and its health app.

`build_app(ServeArgs)` is a typed application builder, so `serve run serve.app:build_app
checkpoint=...` and `serve deploy serve/config.yaml` work as well as `modresnet serve`
(the arguments: serve/args.py). A checkpoint may be a registered model (models:/NAME@ALIAS):
the builder fetches it from the registry (MLFLOW_TRACKING_URI, else the embedded one) and
labels it with its registered version and lineage.
Secrets never travel in args: the API key is read inside each replica from the environment
variable *named* by `api_key_env` (default MODRESNET_API_KEY). With `api_key_required` a
replica that cannot see the key refuses to start, so the deployment fails instead of serving
without auth.

Hostile traffic: bodies must arrive within `body_timeout_s` (408), JSON is parsed with depth
and number limits (serve/http/jsonlimits.py), images decode on a thread pool with pixel and
time bounds (serve/decode.py), excess requests get the replica's 429 + Retry-After once
`max_queued_requests` wait (`serve_limits`), and the health probes are a separate tiny app at
/v2/health (`build_health`) so they answer even when every request slot of the model is taken.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

from fastapi import FastAPI
from ray import serve

from modresnet.checkpoint import resolve
from serve.args import HealthArgs, ModelArgs, ServeArgs, registered
from serve.http.headers import add_security_headers
from serve.protocols import health
from serve.service import Service


@serve.ingress()
class Classifier(Service):
    """The Serve deployment class: `Service` with Serve's ASGI wrapper."""


def serve_limits(args: ServeArgs) -> dict[str, int]:
    """Serve's max_ongoing_requests and max_queued_requests for a replica whose own gate
    (serve/http/gate.py) admits `args.max_ongoing_requests` and queues `args.max_queued_requests`:
    twice that many reach the replica, so the gate, not Serve, refuses the next and counts it;
    Serve's queue of the same length (at least 1, Serve's least) behind it is the backstop.
    With an unbounded queue the gate refuses nothing, and Serve holds requests to the ongoing
    limit as it would alone."""
    queued = args.max_queued_requests
    if queued < 0:
        return {"max_ongoing_requests": args.max_ongoing_requests, "max_queued_requests": -1}
    admitted = args.max_ongoing_requests + queued
    return {"max_ongoing_requests": 2 * admitted, "max_queued_requests": max(queued, 1)}


Served = TypeVar("Served", ServeArgs, ModelArgs)


def resolve_model(model: Served, registry: str | None = None) -> Served:
    """`model` with its checkpoint an absolute local folder. A models:/ ref is fetched from the
    registry (`registry`: its URI; None: MLFLOW_TRACKING_URI, else the embedded one) and,
    unless given, takes the registered version's label and lineage."""
    if not model.checkpoint.startswith("models:/"):
        return model.model_copy(update={"checkpoint": str(resolve(model.checkpoint).resolve())})
    from modresnet.registry import resolve_checkpoint

    path, version = resolve_checkpoint(model.checkpoint, registry)
    assert version is not None
    named = registered(version)
    return model.model_copy(
        update={
            "checkpoint": str(path),
            "version": model.version or named["version"],
            "lineage": model.lineage or named["lineage"],
        }
    )


def resolve_args(args: ServeArgs, registry: str | None = None) -> ServeArgs:
    """`args` with the primary's and the canary's checkpoints resolved (`resolve_model`)."""
    args = resolve_model(args, registry)
    if args.canary is not None:
        args = args.model_copy(update={"canary": resolve_model(args.canary, registry)})
    return args


def build_app(args: ServeArgs | dict[str, Any]) -> serve.Application:
    """Typed builder: `serve run serve.app:build_app checkpoint=runs/demo backend=onnx`."""
    if isinstance(args, dict):
        args = ServeArgs.model_validate(args)
    args = resolve_args(args)
    deployment: Any = serve.deployment(Classifier)
    deployment = deployment.options(
        name="Classifier",
        autoscaling_config={
            "min_replicas": args.min_replicas,
            "initial_replicas": args.min_replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
            "upscale_delay_s": args.upscale_delay_s,
            "downscale_delay_s": args.downscale_delay_s,
            "look_back_period_s": args.look_back_period_s,
        },
        **serve_limits(args),
        backpressure_config={"status_code": 429, "retry_after_s": args.retry_after_s},
        max_constructor_retry_count=3,  # a replica that cannot start (no key) fails the deploy fast
        ray_actor_options={"num_cpus": args.replica_cpus, "num_gpus": args.gpus_per_replica},
        health_check_period_s=args.health_check_period_s,
        health_check_timeout_s=args.health_check_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
        graceful_shutdown_timeout_s=args.graceful_shutdown_timeout_s,
        max_surge_percent=100,
    )
    return deployment.bind(args.model_dump())


@serve.ingress()
class Health:
    """/v2/health/live and /ready as their own app, so a probe never waits for a request slot of
    the model deployment (slow clients or a burst can take all of those). Ready means the
    controller counts at least one RUNNING replica of `app`'s Classifier; the answer is
    refreshed in the background at most every `cache_s`, so a probe never waits on it."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = HealthArgs.model_validate(args)
        self._ready = False
        self._checked = 0.0
        self._refresh: asyncio.Task | None = None

    def _status(self) -> bool:
        app = serve.status().applications.get(self.args.app)
        if app is None or "Classifier" not in app.deployments:
            return False
        states = app.deployments["Classifier"].replica_states
        return any(n > 0 for state, n in states.items() if state == "RUNNING")

    async def _update(self) -> None:
        try:
            self._ready = await asyncio.to_thread(self._status)
        except Exception:  # the controller is briefly unreachable: not ready
            self._ready = False
        self._checked = time.monotonic()

    async def ready_now(self) -> bool:
        if self._checked == 0.0:
            await self._update()
        elif time.monotonic() - self._checked > self.args.cache_s and (
            self._refresh is None or self._refresh.done()
        ):
            self._refresh = asyncio.create_task(self._update())
        return self._ready

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(title="modresnet health", openapi_url=None, docs_url=None, redoc_url=None)
        add_security_headers(app)
        health.add_routes(app, self.ready_now)
        return app


def build_health(args: HealthArgs | dict[str, Any]) -> serve.Application:
    """`serve run serve.app:build_health app=modresnet` at route prefix /v2/health."""
    if isinstance(args, dict):
        args = HealthArgs.model_validate(args)
    deployment: Any = serve.deployment(Health)
    return deployment.options(
        name="Health", num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}
    ).bind(args.model_dump())
