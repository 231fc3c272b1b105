"""The replicas' series through a real Prometheus (Debian's, started here on loopback), scraping
the Ray metrics agent and HAProxy from the target file the server's launcher wrote, with the
scrape job of cluster/prometheus/prometheus.yml: after traffic that gets 200s, 400s, 401s (the
`secure` app has auth on) and 429s (its queue holds one), PromQL through Prometheus's HTTP API
returns the request rate by status code, a p99 from the latency histogram, the 429 count, the
model each replica serves, and the Serve series the alert rules read."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers.prometheus import find_binary, prometheus_server

httpx = pytest.importorskip("httpx")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[3]
RATE_BY_CODE = "sum by (code) (rate(modresnet_requests_total[1m]))"
P99 = "histogram_quantile(0.99, sum by (le) (rate(modresnet_request_duration_seconds_bucket[1m])))"
OVERLOADED = 'sum(modresnet_rejections_total{reason="overloaded"})'


def shipped_scrape_job(targets_dir: Path) -> dict:
    """The scrape job of cluster/prometheus/prometheus.yml, reading `targets_dir`."""
    config = yaml.safe_load((REPO / "cluster" / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    return {
        **job,
        "file_sd_configs": [{"files": [str(targets_dir / "*.json")], "refresh_interval": "1s"}],
    }


def traffic(server, images, stop: threading.Event) -> None:
    """Every half second: a good and a bad /predict, an unauthenticated one at `secure`, and a
    burst of 8 at `secure`, which runs one and queues one."""
    url, auth = server["url"], server["auth"]
    good = [("files", ("a.png", images[2][0], "image/png"))]
    bad = [("files", ("bad.png", b"not an image", "image/png"))]

    def secure_burst() -> None:
        with httpx.Client(timeout=60) as client:
            client.post(url + "/secure/predict", files=good, headers=auth)

    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            client.post(url + "/predict", files=good)
            client.post(url + "/predict", files=bad)
            client.post(url + "/secure/predict", files=good)
            burst = [threading.Thread(target=secure_burst) for _ in range(8)]
            for t in burst:
                t.start()
            for t in burst:
                t.join(timeout=60)
            stop.wait(0.5)


def test_prometheus_scrapes_the_replicas_series(server, images, runs, tmp_path):
    find_binary("prometheus")
    from modresnet.checkpoint import load_model

    served = httpx.get(server["url"] + "/model").json()["sha256"]  # after any rollover
    sha = load_model(runs[0]).sha256  # what `secure` serves
    targets = yaml.safe_load(server["targets"].read_text())  # JSON is YAML
    assert {g["labels"]["job"] for g in targets} == {"ray", "haproxy"}, targets
    started = time.monotonic()
    stop = threading.Event()
    load = threading.Thread(target=traffic, args=(server, images, stop), daemon=True)
    with prometheus_server(
        tmp_path / "prometheus", [shipped_scrape_job(server["targets"].parent)]
    ) as prom:
        load.start()
        try:
            deadline = time.monotonic() + 150
            while True:
                rates = {
                    r["metric"]["code"]: float(r["value"][1]) for r in prom.query(RATE_BY_CODE)
                }
                p99 = prom.query(P99)
                overloaded = prom.query(OVERLOADED)
                info = {
                    (r["metric"]["application"], r["metric"]["sha256"], r["metric"]["backend"])
                    for r in prom.query("modresnet_model_info == 1")
                    if r["metric"]["version"] == "sha-" + r["metric"]["sha256"][:12]
                }
                ready = (
                    all(rates.get(code, 0) > 0 for code in ("200", "400", "401", "429"))
                    and p99
                    and math.isfinite(float(p99[0]["value"][1]))
                    and overloaded
                    and float(overloaded[0]["value"][1]) > 0
                    and {("modresnet", served, "onnx"), ("secure", sha, "torch")} <= info
                )
                if ready or time.monotonic() > deadline:
                    break
                time.sleep(1)
        finally:
            stop.set()
            load.join(timeout=120)
        print(
            f"prometheus saw every series after {time.monotonic() - started:.0f} s: rates "
            f"{rates}, p99 {p99[0]['value'][1] if p99 else None} s, 429s "
            f"{overloaded[0]['value'][1] if overloaded else None}"
        )
        assert all(rates.get(code, 0) > 0 for code in ("200", "400", "401", "429")), rates
        assert p99 and math.isfinite(float(p99[0]["value"][1])), p99
        assert overloaded and float(overloaded[0]["value"][1]) > 0, overloaded
        assert {("modresnet", served, "onnx"), ("secure", sha, "torch")} <= info, info
        # bounded labels: routes from the app's table, codes, reasons from the contract
        routes = {r["metric"]["route"] for r in prom.query("modresnet_requests_total")}
        assert routes <= {
            "/predict",
            "/v2/infer",
            "/v2/ready",
            "/v2/metadata",
            "/model",
            "/page",
            "/openapi",
            "other",
        }, routes
        # the version label: the answering version's; none (Prometheus drops "") on a refusal
        answered = {
            (r["metric"]["application"], r["metric"]["code"], r["metric"].get("version", ""))
            for r in prom.query('modresnet_requests_total{route="/predict"}')
        }
        label = "sha-" + served[:12]
        assert {("modresnet", "200", label), ("secure", "401", "")} <= answered, answered
        assert {v for _, _, v in answered} <= {label, "sha-" + sha[:12], ""}, answered
        reasons = {r["metric"]["reason"] for r in prom.query("modresnet_rejections_total")}
        assert {"unauthorized", "overloaded"} <= reasons, reasons
        by_app = {
            r["metric"]["application"]: r["metric"]
            for r in prom.query('modresnet_requests_total{route="/predict",code="401"}')
        }
        assert set(by_app) == {"secure"}, by_app  # the route prefix /secure is not in the label
        assert {"deployment", "replica"} <= set(by_app["secure"]), by_app
        for series in (
            "modresnet_batch_size_count",
            "modresnet_queue_wait_seconds_count",
            "modresnet_decode_seconds_count",
            "modresnet_model_seconds_count",
            "modresnet_images_per_request_count",
            "modresnet_replicas_max",
        ):
            assert prom.query(series), f"no {series}"
        # what the alert rules read of Serve's own series
        for series in (
            "ray_serve_deployment_replica_healthy",
            "ray_serve_autoscaling_target_replicas",
        ):
            assert prom.query(f'{series}{{deployment="Classifier"}}'), f"no {series}"
        assert prom.query('up{job="haproxy"} == 1'), "HAProxy's Prometheus listener not scraped"
