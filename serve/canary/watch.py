"""What the canary reads of the serving metrics, and the verdict it draws from them.

The replicas' series (serve/metrics.py) reach Prometheus through each Ray node's metrics agent,
which exports them as `ray_modresnet_...` at the node's MetricsExportPort; `scrape` reads those
endpoints directly, so a promotion needs no Prometheus server. Everything else here is a pure
function over snapshots: a window is the difference of two snapshots, `stats` sums one
version's inference requests, 5xx answers and latency histogram in it, `verdict` compares the
candidate's with the champion's.

The agent exports what a replica recorded every RAY_metrics_report_interval_ms (10 s by
default, 1 s at the least): a window shorter than twice that may hold no new export at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modresnet.errors import UserError

PREFIX = "ray_"
REQUESTS = f"{PREFIX}modresnet_requests_total"
BUCKETS = f"{PREFIX}modresnet_request_duration_seconds_bucket"
# The routes that run the model: the only ones whose errors and latency judge a version.
INFERENCE_ROUTES = frozenset({"/predict", "/v2/infer"})

Labels = tuple[tuple[str, str], ...]
Snapshot = dict[tuple[str, Labels], float]


class ScrapeError(UserError):
    """No Ray node's metrics export could be read."""


@dataclass(frozen=True)
class Stats:
    """One version's inference traffic in a window."""

    requests: int
    errors: int
    p99: float | None  # seconds; None without a single observation

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def line(self) -> str:
        p99 = f"{1000 * self.p99:.0f} ms" if self.p99 is not None else "-"
        return f"{self.requests} req, {100 * self.error_rate:.1f}% 5xx, p99 {p99}"


@dataclass(frozen=True)
class Margins:
    """How much worse than the champion the candidate may be: `error` is an absolute
    difference of 5xx rates (0.01: one point), `latency` a relative p99 increase (0.5: half as
    slow again); a window with fewer than `min_requests` of either version decides nothing."""

    error: float = 0.01
    latency: float = 0.5
    min_requests: int = 20


@dataclass(frozen=True)
class Verdict:
    ok: bool | None  # None: not enough requests to judge yet
    reason: str


def parse(text: str) -> Snapshot:
    """The request counters and latency buckets of one metrics export (Prometheus text)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = (REQUESTS, BUCKETS)
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                snapshot[key] = float(sample.value)
    return snapshot


def endpoints(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """The metrics export URL of each alive node of `ray.nodes()`."""
    return [
        f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
        for n in nodes
        if n.get("Alive") and n.get("MetricsExportPort")
    ]


def scrape(urls: Iterable[str], timeout: float = 5.0) -> tuple[Snapshot, list[str]]:
    """One snapshot of every node's export, and the URLs that did not answer (their series
    are missing from it). Raises ScrapeError when none answered."""
    import httpx

    urls = list(urls)
    snapshot: Snapshot = {}
    missing = []
    with httpx.Client(timeout=timeout) as client:
        for url in urls:
            try:
                r = client.get(url)
                r.raise_for_status()
            except httpx.HTTPError:
                missing.append(url)
                continue
            snapshot.update(parse(r.text))
    if urls and len(missing) == len(urls):
        raise ScrapeError(
            f"no Ray node's metrics export answered ({', '.join(missing)}): check that the "
            "Ray metrics agent runs (ray start without --include-dashboard=false)"
        )
    return snapshot, missing


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    """What was counted between two snapshots. A series new in `after` (a replica that
    started) counts from zero, one that went down (a restarted process) from its reset; one
    gone from `after` (a replica that stopped) is left out."""
    window: Snapshot = {}
    for key, value in after.items():
        old = before.get(key, 0.0)
        window[key] = value - old if value >= old else value
    return window


def _matches(labels: Labels, app: str, version: str) -> bool:
    tags = dict(labels)
    return (
        tags.get("application") == app
        and tags.get("version") == version
        and tags.get("route") in INFERENCE_ROUTES
    )


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram {upper bound: count}, interpolated within
    its bucket as Prometheus's histogram_quantile does (past the last finite bound: that
    bound)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def stats(window: Snapshot, app: str, version: str) -> Stats:
    """`version`'s inference requests in `app` over a window: all of them, the 5xx among
    them, and their p99 latency."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for (name, labels), value in window.items():
        if not _matches(labels, app, version):
            continue
        if name == REQUESTS:
            requests += value
            if dict(labels).get("code", "").startswith("5"):
                errors += value
        else:
            le = float(dict(labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    return Stats(round(requests), round(errors), quantile(0.99, buckets))


def verdict(champion: Stats, candidate: Stats, margins: Margins) -> Verdict:
    """Whether the candidate is no worse than the champion by more than the margins."""
    if min(champion.requests, candidate.requests) < margins.min_requests:
        return Verdict(
            None,
            f"waiting: fewer than {margins.min_requests} requests per version "
            f"(champion {champion.requests}, candidate {candidate.requests})",
        )
    worse = candidate.error_rate - champion.error_rate
    if worse > margins.error:
        return Verdict(
            False,
            f"candidate 5xx rate {100 * candidate.error_rate:.1f}% vs champion "
            f"{100 * champion.error_rate:.1f}%: more than {100 * margins.error:g} points worse",
        )
    if candidate.p99 is not None and champion.p99 is not None and champion.p99 > 0:
        slower = candidate.p99 / champion.p99 - 1
        if slower > margins.latency:
            return Verdict(
                False,
                f"candidate p99 {1000 * candidate.p99:.0f} ms vs champion "
                f"{1000 * champion.p99:.0f} ms: {100 * slower:.0f}% slower, more than "
                f"{100 * margins.latency:g}%",
            )
    return Verdict(True, "ok")
