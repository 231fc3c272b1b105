"""serve/canary/watch.py over metrics exports written in the shape a Ray 2.60 node's metrics
agent serves them (its labels, `# TYPE` lines, `_total` and `_bucket` series, one series per
replica): parsing, scraping real loopback endpoints (one down), windows across replicas that
start and stop, p99 from the buckets as Prometheus computes it, and the verdict's three answers;
and the promotion's plan (serve/canary/promote.py): the shares it climbs, and a bad flag as one
line naming it."""

from __future__ import annotations

import pytest
from helpers.recorder import Recorder

from serve.canary.promote import plan
from serve.canary.settings import CanaryFlagError, CanarySettings
from serve.canary.watch import (
    BUCKETS,
    REQUESTS,
    Margins,
    ScrapeError,
    Stats,
    delta,
    endpoints,
    parse,
    quantile,
    scrape,
    stats,
    verdict,
)
from serve.metrics import LATENCY_S

RAY_TAGS = (
    'Component="core_worker",NodeAddress="192.0.2.2",SessionName="session_2026_1",'
    'Version="2.60.0",WorkerId="{worker}",application="{app}",deployment="Classifier",'
    'otel_scope_name="ray._private.telemetry.open_telemetry_metric_recorder",'
    'otel_scope_schema_url="",otel_scope_version="",replica="{replica}"'
)


def export(replicas: list[dict]) -> str:
    """A node's export: for each replica {version, replica, codes: {code: n}, latencies: [s]}
    its request counters and latency histogram (route /predict), plus a /model request that
    must not count."""
    counters = [
        "# HELP ray_modresnet_requests_total x",
        "# TYPE ray_modresnet_requests_total counter",
    ]
    hist = [
        "# HELP ray_modresnet_request_duration_seconds y",
        "# TYPE ray_modresnet_request_duration_seconds histogram",
    ]
    for r in replicas:
        tags = RAY_TAGS.format(
            worker=r["replica"] * 4, app=r.get("app", "modresnet"), replica=r["replica"]
        )
        version = r["version"]
        for code, n in r["codes"].items():
            counters.append(
                f'{REQUESTS}{{{tags},code="{code}",route="/predict",version="{version}"}} {n}.0'
            )
        counters.append(
            f'{REQUESTS}{{{tags},code="200",route="/model",version="{r["version"]}"}} 7.0'
        )
        lat = r["latencies"]
        for le in [*LATENCY_S, float("inf")]:
            n = sum(1 for s in lat if s <= le)
            bound = "+Inf" if le == float("inf") else repr(le)
            hist.append(
                f'{BUCKETS}{{{tags},le="{bound}",route="/predict",version="{r["version"]}"}} {n}.0'
            )
        hist.append(
            f'ray_modresnet_request_duration_seconds_count{{{tags},route="/predict",'
            f'version="{r["version"]}"}} {len(lat)}.0'
        )
    return "\n".join(hist + counters) + "\n"


def test_parse_keeps_only_the_request_counters_and_latency_buckets():
    text = export([{"version": "m/1", "replica": "a", "codes": {"200": 3}, "latencies": [0.02]}])
    snap = parse(text + "# TYPE ray_other gauge\nray_other 1.0\n")
    names = {name for name, _ in snap}
    assert names == {REQUESTS, BUCKETS}
    assert len([k for k in snap if k[0] == BUCKETS]) == len(LATENCY_S) + 1


def test_stats_sum_replicas_of_one_version_and_count_only_5xx_as_errors():
    text = export(
        [
            {"version": "m/1", "replica": "a", "codes": {"200": 30, "500": 2}, "latencies": [0.02]},
            {"version": "m/1", "replica": "b", "codes": {"200": 8, "400": 5}, "latencies": [0.02]},
            {"version": "m/2", "replica": "c", "codes": {"200": 4, "503": 1}, "latencies": [0.02]},
            {
                "version": "m/1",
                "replica": "d",
                "app": "other",
                "codes": {"500": 9},
                "latencies": [],
            },
        ]
    )
    snap = parse(text)
    one, two = stats(snap, "modresnet", "m/1"), stats(snap, "modresnet", "m/2")
    assert (one.requests, one.errors) == (45, 2)  # the 400s are requests, not errors
    assert (two.requests, two.errors) == (5, 1)
    assert stats(snap, "modresnet", "m/9") == Stats(0, 0, None)


def test_a_window_counts_new_replicas_from_zero_and_drops_stopped_ones():
    before = parse(
        export(
            [
                {"version": "m/1", "replica": "a", "codes": {"200": 100}, "latencies": [0.02] * 5},
                {"version": "m/1", "replica": "b", "codes": {"200": 50}, "latencies": [0.02] * 5},
            ]
        )
    )
    after = parse(
        export(
            [
                {"version": "m/1", "replica": "a", "codes": {"200": 130}, "latencies": [0.02] * 8},
                {"version": "m/2", "replica": "c", "codes": {"200": 12}, "latencies": [0.3] * 12},
            ]
        )
    )
    window = delta(before, after)
    assert stats(window, "modresnet", "m/1").requests == 30
    assert stats(window, "modresnet", "m/2").requests == 12
    assert stats(window, "modresnet", "m/2").p99 == pytest.approx(0.25 + 0.25 * 0.99)


def test_a_counter_that_went_down_counts_from_its_reset():
    one = {"version": "m/1", "replica": "a", "latencies": []}
    window = delta(
        parse(export([{**one, "codes": {"200": 90}}])),
        parse(export([{**one, "codes": {"200": 4}}])),
    )
    assert stats(window, "modresnet", "m/1").requests == 4


def test_quantile_interpolates_within_the_bucket_as_prometheus_does():
    # 100 observations: 50 <= 0.01, 90 <= 0.1, all <= 1: p99 is 90% into (0.1, 1]
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 0.9)
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.99, {0.01: 0.0, float("inf"): 0.0}) is None
    # beyond the last finite bound: that bound
    assert quantile(0.99, {0.01: 10.0, 1.0: 10.0, float("inf"): 20.0}) == 1.0


def test_p99_of_real_latencies_lands_in_their_bucket():
    lat = [0.004] * 95 + [0.07] * 5
    snap = parse(
        export([{"version": "m/1", "replica": "a", "codes": {"200": 100}, "latencies": lat}])
    )
    p99 = stats(snap, "modresnet", "m/1").p99
    assert p99 is not None and 0.05 < p99 <= 0.1


MARGINS = Margins(error=0.01, latency=0.5, min_requests=20)


def test_too_few_requests_decide_nothing_and_say_how_many():
    v = verdict(Stats(200, 0, 0.02), Stats(19, 19, 9.0), MARGINS)
    assert v.ok is None
    assert "fewer than 20" in v.reason and "candidate 19" in v.reason


def test_an_error_rate_over_the_margin_fails_naming_both_rates():
    v = verdict(Stats(200, 1, 0.02), Stats(40, 2, 0.02), MARGINS)  # 0.5% vs 5%
    assert v.ok is False
    assert "5.0%" in v.reason and "0.5%" in v.reason


def test_an_error_rate_within_the_margin_passes():
    assert verdict(Stats(200, 2, 0.02), Stats(100, 1, 0.02), MARGINS).ok is True


def test_a_p99_slower_than_the_margin_fails_and_within_it_passes():
    slow = verdict(Stats(200, 0, 0.020), Stats(50, 0, 0.031), MARGINS)
    assert slow.ok is False
    assert "31 ms" in slow.reason and "20 ms" in slow.reason
    assert verdict(Stats(200, 0, 0.020), Stats(50, 0, 0.029), MARGINS).ok is True


def test_endpoints_are_the_alive_nodes_metrics_ports():
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 60001},
        {"Alive": False, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 60002},
    ]
    assert endpoints(nodes) == ["http://10.0.0.1:60001/metrics"]


def test_scrape_merges_the_nodes_and_names_the_one_that_did_not_answer():
    a = {"version": "m/1", "replica": "a", "codes": {"200": 3}, "latencies": [0.02]}
    b = {"version": "m/1", "replica": "b", "codes": {"200": 4}, "latencies": [0.02]}
    nodes = [
        Recorder("127.0.0.1", lambda path, r=r: (200, {}, export([r]).encode())) for r in (a, b)
    ]
    down = Recorder("127.0.0.1", lambda path: (200, {}, b""))
    down.close()  # nobody listens there any more
    try:
        urls = [n.url + "/metrics" for n in nodes] + [down.url + "/metrics"]
        snap, missing = scrape(urls, timeout=2)
        assert stats(snap, "modresnet", "m/1").requests == 7
        assert missing == [down.url + "/metrics"]
        with pytest.raises(ScrapeError, match="no Ray node's metrics export answered"):
            scrape([down.url + "/metrics"], timeout=2)
    finally:
        for n in nodes:
            n.close()


def _plan(**kw):
    args = dict(
        canary=10,
        step=30,
        interval=20,
        watch=60,
        error_margin=0.01,
        latency_margin=0.5,
        min_requests=20,
        fail_rate=0.0,
    )
    return plan(CanarySettings(**{**args, **kw}))


def test_the_shares_climb_by_step_and_stop_below_100_percent():
    assert _plan().shares == (0.1, 0.4, 0.7)
    assert _plan(canary=20, step=30).shares == (0.2, 0.5, 0.8)
    assert _plan(canary=50, step=100).shares == (0.5,)
    assert _plan(interval=4, watch=12).patience == 12  # undecided this long: roll back


@pytest.mark.parametrize(
    ("flag", "kw"),
    [
        ("--canary 100", {"canary": 100}),
        ("--step 0", {"step": 0}),
        ("--interval 0", {"interval": 0}),
        ("--error-margin 1", {"error_margin": 1}),
        ("--min-requests 0", {"min_requests": 0}),
        ("--fail-rate 2", {"fail_rate": 2}),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(flag, kw):
    with pytest.raises(CanaryFlagError) as err:
        _plan(**kw)
    assert str(err.value).startswith(flag.split()[0] + ":") and "\n" not in str(err.value)
