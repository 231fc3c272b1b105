"""Start (or update in place) the Serve apps from a plain process: `modresnet serve`, the demo,
the end-to-end tests. `start` brings up Serve's HTTP proxy, `deploy` the model app and its
health app; `serve_app` is the whole of `modresnet serve` around them.

Ray is imported here only, never by `modresnet` at import time; connecting to it follows the
one rule of jobs/runtime.py (`connect`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import serve

from jobs.cluster import prometheus
from jobs.runtime import connect, resolve_address
from modresnet.checkpoint import load_model
from modresnet.errors import UserError
from serve.app import build_app, build_health
from serve.args import APP_NAME, HealthArgs, HttpOptions, ServeArgs
from serve.client import wait_ready
from serve.environment import INGRESS, serve_env
from serve.gpus import check_gpus


def start(http: HttpOptions) -> None:
    """Start Serve's HTTP proxy on http.host:port (a no-op for the port if Serve is already up)."""
    serve.start(http_options=http.model_dump())


def deploy(args: ServeArgs, name: str = APP_NAME, route_prefix: str = "/") -> Any:
    """Deploy, or roll an existing app of that name over to new args in place; with it, its
    health app `{name}-health` at `{route_prefix}/v2/health` (longest prefix wins in Serve).
    The args go to the traffic table (serve/canary/traffic.py), where a promotion finds what
    the running app serves. A health app already running for the same prefix is kept: it
    only reads the controller, so a rolling update of the model need not restart it."""
    import ray

    from serve.canary.traffic import traffic_table

    table = traffic_table()
    health = f"{name}-health"
    running = serve.status().applications.get(health)
    keep_health = (
        running is not None
        and running.status == "RUNNING"
        and ray.get(table.get_route.remote(name)) == route_prefix
    )
    handle = serve.run(build_app(args), name=name, route_prefix=route_prefix, blocking=False)
    ray.get(table.put_args.remote(name, args.model_dump(), route_prefix))
    if not keep_health:
        serve.run(
            build_health(HealthArgs(app=name)),
            name=health,
            route_prefix=route_prefix.rstrip("/") + "/v2/health",
            blocking=False,
        )
    return handle


def serve_app(
    args: ServeArgs,
    http: HttpOptions | None = None,
    address: str | None = None,
    block: bool = True,
    info: Callable[[str], None] = print,
    name: str = APP_NAME,
    route_prefix: str = "/",
    ingress: str = INGRESS[0],
    prometheus_targets: Path | None = None,
) -> str:
    """Deploy `args`; with an existing app of the same name the replicas roll over to the new
    checkpoint with no downtime. Blocks until Ctrl-C/SIGTERM when this process owns Ray.
    `ingress` (serve/environment.py `serve_env`) applies to a Ray this call starts; a cluster
    keeps the ingress it was started with. Once serving, the Prometheus targets of the Ray it
    runs on go to `prometheus_targets` (default: a file per HTTP port in
    jobs/cluster/prometheus.py `targets_dir`), removed again when this process stops its Ray."""
    http = http or HttpOptions()
    default_targets = prometheus.targets_dir() / f"modresnet-serve-{http.port}.json"
    targets = Path(prometheus_targets or default_targets).expanduser()

    loaded = load_model(args.checkpoint)  # refuse a bad checkpoint before touching Serve
    sha = loaded.sha256
    if args.backend == "int8":
        from serve.quantize import int8_paths

        if not int8_paths(loaded)[0].exists():
            raise UserError(
                f"--backend int8: {args.checkpoint} has no int8 model yet; make it "
                f"once with `python -m serve.quantize {args.checkpoint}`, or use "
                f"--backend onnx"
            )
    import ray

    if not ray.is_initialized() and resolve_address(address) is None:
        os.environ.update(serve_env(ingress))  # before Ray starts: its processes inherit it
    owns = connect(address) == "embedded"  # else Serve outlives this process
    check_gpus(args, ray.cluster_resources())
    serving = owns and block
    if serving:
        # From here on a stop shuts Serve down, even mid-deploy: Ray's own SIGTERM handler
        # aborts the process, which can leave a just-reloaded HAProxy holding the port.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _interrupt)
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
    url = f"http://{host}:{http.port}" + route_prefix.rstrip("/")
    try:
        start(http)
        rolling = name in serve.status().applications
        info(("rolling the running app over to " if rolling else "deploying ") + args.checkpoint)
        try:
            deploy(args, name=name, route_prefix=route_prefix)
        except RuntimeError as err:  # DEPLOY_FAILED: the replicas' constructor error inside
            err = RuntimeError(f"{err}\n{_failure_detail(name)}")
            if "api_key_required" in str(err):
                raise UserError(
                    f"deployment failed, no replica could read the API key: "
                    f"export {args.api_key_env} on every Ray node before `ray "
                    f"start`, then run this again. (Serve said: "
                    f"{_last_line(err, 'api_key_required')})"
                ) from None
            raise UserError(f"deployment failed: {_last_line(err)}") from None
        wait_ready(url, timeout=300, headers=_headers(args), sha256=sha)
        if args.api_key_required:
            check_auth_enforced(url)
            info("auth: on (an unauthenticated /predict gets 401)")
        info(f"serving {sha[:12]} ({args.backend}) at {url}  (OpenAPI: {url}/openapi.json)")
        try:
            info(write_targets(targets, haproxy=owns and ingress == "haproxy"))
        except OSError as err:  # serving goes on; only the scrape targets are missing
            info(
                f"metrics: cannot write the Prometheus targets to {targets} ({err.strerror}); "
                "pass --prometheus-targets PATH to put them elsewhere"
            )
        if serving:
            info("press Ctrl-C to stop")
            threading.Event().wait()
    except KeyboardInterrupt:
        if not serving:
            raise
        info("shutting down: draining in-flight requests")
    finally:
        if serving:
            serve.shutdown()
            ray.shutdown()
            targets.unlink(missing_ok=True)
    return url


def write_targets(path: Path, haproxy: bool) -> str:
    """Write the Prometheus target file of the Ray this process is connected to: each node's
    metrics export port, and with `haproxy` (the HAProxy ingress of a Ray this process started:
    its port is in this environment, serve/environment.py) HAProxy's Prometheus listener on
    each node. Returns the line saying where they are."""
    import ray

    nodes = ray.nodes()
    ray_targets = prometheus.node_targets(nodes)
    port = os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT")
    hosts = sorted({n["NodeManagerAddress"] for n in nodes if n.get("Alive")})
    haproxy_targets = [f"{host}:{port}" for host in hosts] if haproxy and port else []
    written = prometheus.write_targets(path, ray_targets, haproxy_targets)
    return prometheus.where(written, ray_targets, haproxy_targets)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_auth_enforced(url: str) -> None:
    """Fail unless an unauthenticated POST /predict is refused with 401."""
    import httpx

    r = httpx.post(
        url.rstrip("/") + "/predict",
        content=b"{}",
        timeout=30,
        headers={"content-type": "application/json"},
    )
    if r.status_code != 401:
        raise UserError(
            f"auth was required but an unauthenticated POST {url}/predict got HTTP "
            f"{r.status_code}, not 401: a replica is serving without the key. Run "
            f"`serve shutdown` and check the key's env var on every node."
        )


def _failure_detail(name: str) -> str:
    """What the controller recorded about a failed app (the replica constructor's error)."""
    try:
        app = serve.status().applications.get(name)
    except Exception as err:  # noqa: BLE001 - only a better message is at stake
        return f"(no status: {err!r})"
    if app is None:
        return ""
    return "\n".join([app.message or ""] + [d.message or "" for d in app.deployments.values()])


def _last_line(err: Exception, containing: str = "") -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    picked = [ln for ln in lines if containing in ln] or lines or [repr(err)]
    return picked[-1][:500]


def _headers(args: ServeArgs) -> dict[str, str]:
    key = os.environ.get(args.api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}
