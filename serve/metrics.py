"""A replica's Prometheus series, recorded through Ray's metrics pipeline (`ray.serve.metrics`),
so each carries Serve's application, deployment and replica tags and is exported by the Ray
metrics agent of its node as `ray_<name>` (the scrape configs we ship strip that prefix).

`Metrics` records nothing: the in-process app (tests, no Ray) and `--no-metrics` use it.
`RayMetrics` is what a replica records; `for_replica` picks one. Label values are bounded:
`route` comes from ROUTES (a fixed table of the app's routes, never the path a client sent),
`code` is the status code, `reason` one of REASONS, `version` the label of a version the
replica serves (or "" for a request refused before one was chosen). The tags of every series
are built once, at the replica's start, so a record costs a dict lookup and Ray's own call."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# Path (after the app's route prefix) -> the route label; any other path is "other".
ROUTES = {
    "/predict": "/predict",
    "/v2/models/modresnet/infer": "/v2/infer",
    "/v2/models/modresnet/ready": "/v2/ready",
    "/v2/models/modresnet": "/v2/metadata",
    "/model": "/model",
    "/": "/page",
    "/openapi.json": "/openapi",
}
OTHER = "other"
# Where a route records, in the request's ASGI scope, the label of the version that answers it
# (serve/service.py `choose`); the gate reads it for the response header and the series.
VERSION_SCOPE_KEY = "modresnet.version"
# The refusals modresnet_rejections_total counts, by status code.
REASONS = {
    401: "unauthorized",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    429: "overloaded",
}
# Bucket boundaries. Latency keeps 0.25 s: the p99 objective of cluster/prometheus/alerts.yml.
LATENCY_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
SHORT_S = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
IMAGES: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256]
# Ray's metrics agent drops a gauge not set again within two of its export intervals (10 s
# each by default): the replica sets its gauges again this often, for as long as it lives.
GAUGE_REFRESH_S = 5.0


def route_of(path: str) -> str:
    """The route label of a request path (relative to the app's route prefix)."""
    return ROUTES.get(path, OTHER)


class Metrics:
    """The series of one replica; this base records nothing."""

    def request(self, route: str, code: int, seconds: float, version: str = "") -> None:
        """One answered request: its route label, status code, time in the replica and the
        label of the version that answered ("": none did)."""

    def images(self, route: str, count: int, decode_s: float) -> None:
        """One /predict or v2 request's images, and the time to decode them from its body."""

    def batch(self, waits_s: list[float], model_s: float) -> None:
        """One model batch: how long each of its images waited for it, and its run time."""


class RayMetrics(Metrics):
    """The series of the metrics contract (docs/serving.md, "Metrics and alerts")."""

    def __init__(self, models: list[tuple[str, str, str]], max_replicas: int) -> None:
        """`models`: (sha256, backend, version label) of each version the replica serves."""
        from ray.serve import metrics as serve_metrics

        metrics: Any = serve_metrics  # its tag_keys are typed tuple[str], meant tuple[str, ...]

        self._requests = metrics.Counter(
            "modresnet_requests",
            description="Requests answered, by route, HTTP status code and answering version.",
            tag_keys=("route", "code", "version"),
        )
        self._duration = metrics.Histogram(
            "modresnet_request_duration_seconds",
            description="Time from the replica receiving a request to its response.",
            boundaries=LATENCY_S,
            tag_keys=("route", "version"),
        )
        self._images = metrics.Histogram(
            "modresnet_images_per_request",
            description="Images in one /predict or v2 request.",
            boundaries=IMAGES,
            tag_keys=("route",),
        )
        self._batch = metrics.Histogram(
            "modresnet_batch_size", description="Images per model batch.", boundaries=IMAGES
        )
        self._queue_wait = metrics.Histogram(
            "modresnet_queue_wait_seconds",
            description="Time an image waited for its batch to start.",
            boundaries=SHORT_S,
        )
        self._decode = metrics.Histogram(
            "modresnet_decode_seconds",
            description="Time to decode one request's images from its body.",
            boundaries=SHORT_S,
        )
        self._model = metrics.Histogram(
            "modresnet_model_seconds",
            description="Time of one model batch.",
            boundaries=SHORT_S,
        )
        self._rejections = metrics.Counter(
            "modresnet_rejections",
            description="Refused requests, by reason: " + ", ".join(REASONS.values()) + ".",
            tag_keys=("reason",),
        )
        info = metrics.Gauge(
            "modresnet_model_info",
            description="A version this replica serves (always 1): one series per version.",
            tag_keys=("sha256", "backend", "version"),
        )
        replicas_max = metrics.Gauge(
            "modresnet_replicas_max", description="The deployment's autoscaling max_replicas."
        )
        served = [{"sha256": sha, "backend": name, "version": label} for sha, name, label in models]

        def set_gauges() -> None:
            for model in served:
                info.set(1, model)
            replicas_max.set(max_replicas)

        set_gauges()
        threading.Thread(target=_every, args=(GAUGE_REFRESH_S, set_gauges), daemon=True).start()
        routes = (*ROUTES.values(), OTHER)
        labels = ("", *(label for _, _, label in models))
        self._route_tags = {r: {"route": r} for r in routes}
        self._duration_tags = {(r, v): {"route": r, "version": v} for r in routes for v in labels}
        self._reason_tags = {code: {"reason": reason} for code, reason in REASONS.items()}
        self._code_tags: dict[tuple[str, int, str], dict[str, str]] = {}

    def request(self, route: str, code: int, seconds: float, version: str = "") -> None:
        duration = self._duration_tags.get((route, version))
        if duration is None:  # not a served label: counted as no version, keeping labels bounded
            version, duration = "", self._duration_tags[(route, "")]
        tags = self._code_tags.get((route, code, version))
        if tags is None:  # at most routes x status codes x versions of them
            tags = {"route": route, "code": str(code), "version": version}
            self._code_tags[(route, code, version)] = tags
        self._requests.inc(1, tags)
        self._duration.observe(seconds, duration)
        reason = self._reason_tags.get(code)
        if reason is not None:
            self._rejections.inc(1, reason)

    def images(self, route: str, count: int, decode_s: float) -> None:
        self._images.observe(count, self._route_tags[route])
        self._decode.observe(decode_s)

    def batch(self, waits_s: list[float], model_s: float) -> None:
        self._batch.observe(len(waits_s))
        self._model.observe(model_s)
        for wait in waits_s:
            self._queue_wait.observe(wait)


def _every(seconds: float, fn: Callable[[], None]) -> None:
    while True:
        time.sleep(seconds)
        fn()


def in_replica() -> bool:
    """Whether this code runs inside a Serve replica (where Serve's tags exist)."""
    try:
        from ray.serve import context
    except ImportError:
        return False
    return context._get_internal_replica_context() is not None


def for_replica(enabled: bool, **info: Any) -> Metrics:
    """RayMetrics inside a Serve replica when `enabled`, else the Metrics that record nothing."""
    return RayMetrics(**info) if enabled and in_replica() else Metrics()
