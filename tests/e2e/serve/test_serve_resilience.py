"""The Serve app under pressure: auth, backpressure, slow clients, autoscaling, a killed
replica, a rolling update, and the web page (the shared server: conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from modresnet.images import decode_image
from modresnet.inference import Predictor

httpx = pytest.importorskip("httpx")
ray = pytest.importorskip("ray")
from helpers.serve import (  # noqa: E402
    BODY_TIMEOUT_S,
    KEY,
    KILL_FAILURE_BOUND,
    Load,
    _chromium,
    _replicas,
)
from ray import serve  # noqa: E402

from serve.args import HttpOptions, ModelArgs, ServeArgs  # noqa: E402
from serve.protocols import samples  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


# --- API key, backpressure --------------------------------------------------------------------


def test_api_key(server, images):
    base = server["url"] + "/secure"
    files = [("files", ("a.png", images[2][0], "image/png"))]
    assert httpx.post(base + "/predict", files=files).status_code == 401
    r = httpx.post(base + "/predict", files=files, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "wrong" in r.json()["error"]
    assert httpx.get(base + "/model").status_code == 401
    assert httpx.post(base + "/predict", files=files, headers=server["auth"]).status_code == 200
    assert httpx.get(base + "/v2/health/live").status_code == 200  # probes stay open
    # the key never appears in the deployment's (readable) args
    assert KEY not in str(serve.status())


def test_auth_fails_closed(server, runs):
    """Auth required + a replica without the key = a failed deployment with a clear error,
    never an open endpoint; after a deploy, an unauthenticated /predict must get 401."""
    from modresnet.errors import UserError
    from serve.launch import check_auth_enforced, serve_app

    check_auth_enforced(server["url"] + "/secure")
    with pytest.raises(UserError, match="not 401"):
        check_auth_enforced(server["url"])  # the main app has no key: the check catches it
    args = ServeArgs(
        checkpoint=str(runs[0]),
        backend="torch",
        replica_cpus=0.25,
        api_key_env="MODRESNET_TEST_ABSENT_KEY",
        api_key_required=True,
    )
    start_t = time.monotonic()
    try:
        with pytest.raises(UserError, match="export MODRESNET_TEST_ABSENT_KEY on every Ray node"):
            serve_app(
                args,
                HttpOptions(port=server["port"]),
                block=False,
                name="nokey",
                route_prefix="/nokey",
                info=lambda _: None,
            )
        print(f"failed deploy reported after {time.monotonic() - start_t:.1f}s")
        assert httpx.post(server["url"] + "/nokey/predict", content=b"{}").status_code in (404, 503)
    finally:
        if "nokey" in serve.status().applications:
            serve.delete("nokey")


def test_gpus_the_cluster_lacks_are_one_line_before_deploying(server, runs):
    """This Ray has no GPU: asking for one fails before Serve is touched, not with replicas
    pending forever."""
    from modresnet.errors import UserError
    from serve.launch import serve_app

    args = ServeArgs(checkpoint=str(runs[0]), gpus_per_replica=0.5, replica_cpus=0.25)
    with pytest.raises(UserError, match=r"needs 0.5 GPUs; this Ray cluster has 0"):
        serve_app(args, HttpOptions(port=server["port"]), block=False, name="gpu", info=print)
    assert "gpu" not in serve.status().applications


def test_backpressure_429_when_queue_full(server, images):
    files = [("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(images[2] * 2)]
    with Load(server["url"] + "/secure/predict", files, 8, headers=server["auth"]) as load:
        time.sleep(4)
    assert load.codes[200] > 0
    assert load.codes[429] > 0, load.codes
    assert set(load.codes) <= {200, 429}, load.errors[:3]


def test_burst_sheds_with_429_and_retry_after_fast(server, images):
    """30 clients, each sending 3 requests back to back (90 in all), at a replica that takes
    1 and queues 1: the excess is refused with 429 + Retry-After at once, not made to
    wait. (With 60 simultaneous clients the median 429 took ~90 ms here: Serve's Python proxy
    handles arrivals one at a time on a 2-core box shared with the client threads.)"""
    files = [("files", ("a.png", images[2][0], "image/png"))]
    url = server["url"] + "/secure/predict"
    gate = threading.Barrier(30)
    results, lock = [], threading.Lock()

    def one():
        with httpx.Client(timeout=60) as client:
            client.get(server["url"] + "/secure/v2/health/live")  # connect before the burst
            gate.wait()
            for _ in range(3):
                t = time.perf_counter()
                r = client.post(url, files=files, headers=server["auth"])
                with lock:
                    results.append(
                        (r.status_code, time.perf_counter() - t, r.headers.get("retry-after"))
                    )

    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    shed = [r for r in results if r[0] == 429]
    codes = Counter(r[0] for r in results)
    slowest_429 = max((r[1] for r in shed), default=0)
    print(
        f"burst of 30 x 3: {dict(codes)}; slowest 429 in {slowest_429 * 1000:.0f} ms; "
        f"median 429 in {sorted(r[1] for r in shed)[len(shed) // 2] * 1000 if shed else 0:.0f} ms"
    )
    assert set(codes) <= {200, 429} and codes[200] >= 1 and len(shed) >= 45, codes
    assert all(r[2] == "1" for r in shed)
    # Refused, not queued: a queued request here waits seconds. The 100 ms target is a speed
    # figure (printed above; tests/benchmarks/serve_load.py), not a pass/fail line on a
    # shared 2-core CI box, where one run had 60 of 85 refusals under 100 ms, all under 1 s.
    assert slowest_429 < 1.0, slowest_429


def test_slow_clients_do_not_starve_probes_or_others(server, images):
    """40 connections each trickling a body at 1 byte/s: readiness answers in < 1 s
    throughout, the slow bodies get 408 after BODY_TIMEOUT_S, and a normal request is served."""
    host, port = "127.0.0.1", server["port"]
    socks = []
    for _ in range(40):
        s = socket.create_connection((host, port), timeout=30)
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        socks.append(s)
    probes, normal = [], {}
    files = [("files", ("a.png", images[2][0], "image/png"))]

    def normal_request():
        t = time.perf_counter()
        r = httpx.post(server["url"] + "/predict", files=files, timeout=60)
        normal.update(status=r.status_code, s=time.perf_counter() - t)

    other = threading.Thread(target=normal_request)
    start_t = time.monotonic()
    other.start()
    try:
        while time.monotonic() - start_t < BODY_TIMEOUT_S + 3:
            for s in socks:
                try:
                    s.sendall(b" ")
                except OSError:
                    pass
            for _ in range(4):
                t = time.perf_counter()
                r = httpx.get(server["url"] + "/v2/health/ready", timeout=5)
                probes.append(time.perf_counter() - t)
                assert r.status_code == 200 and r.json() == {"ready": True}
                time.sleep(0.2)
        other.join(timeout=60)
        answers, deadline = Counter(), time.monotonic() + 40
        for s in socks:  # the ones queued behind the first slots get their turn, then 408
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                answers[s.recv(200).split(b"\r\n")[0][:12].decode(errors="replace")] += 1
            except OSError as err:
                answers[type(err).__name__] += 1
    finally:
        for s in socks:
            s.close()
    print(
        f"slow clients: {dict(answers)}; {len(probes)} probes, slowest "
        f"{max(probes) * 1000:.0f} ms; normal request {normal}"
    )
    assert max(probes) < 1.0
    assert normal.get("status") == 200, normal
    assert answers.get("HTTP/1.1 408", 0) == 40, answers
    deadline = time.monotonic() + 60  # leave one replica for the autoscaling test
    while _replicas() > 1 and time.monotonic() < deadline:
        time.sleep(0.5)


# --- batching, autoscaling, replica failure, rolling update -----------------------------------


def test_dynamic_batching_and_autoscaling(server, images):
    url = server["url"]
    files = [("files", ("a.png", images[2][0], "image/png"))]
    assert _replicas() == 1
    start_t = time.monotonic()
    with Load(url + "/predict", files, 12) as load:
        while _replicas() < 2 and time.monotonic() - start_t < 60:
            time.sleep(0.5)
        scaled_up = _replicas()
        batch_sizes: Counter = Counter()
        for _ in range(10):
            info = httpx.get(url + "/model", timeout=30).json()
            batch_sizes.update({int(k): v for k, v in info["replica"]["batch_sizes"].items()})
    print(
        f"scaled to {scaled_up} replicas in {time.monotonic() - start_t:.1f}s; "
        f"batch sizes {dict(sorted(batch_sizes.items()))}; {dict(load.codes)}"
    )
    assert load.failures == 0, load.errors[:3]
    assert scaled_up >= 2
    assert max(batch_sizes) > 1, batch_sizes
    deadline = time.monotonic() + 60
    while _replicas() > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _replicas() == 1


def test_killed_replica_recovers(server, images):
    url = server["url"]
    files = [("files", ("a.png", images[2][0], "image/png"))]
    pid = httpx.get(url + "/model").json()["replica"]["pid"]
    with Load(url + "/predict", files, 4) as load:
        time.sleep(1)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 90
        new_pid = pid
        while time.monotonic() < deadline:
            try:
                new_pid = httpx.get(url + "/model", timeout=10).json()["replica"]["pid"]
                if new_pid != pid:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        before = load.codes[200]
        time.sleep(2)
        served_after = load.codes[200] - before
    print(f"kill: {dict(load.codes)}; errors {load.errors[:3]}")
    assert new_pid != pid
    assert served_after > 0
    assert load.failures <= KILL_FAILURE_BOUND, load.errors[:5]


def test_rolling_update_without_failures(server, runs, images, tmp_path):
    """`modresnet serve NEW --address <cluster>` against the running app: no failed request;
    it prints where the metrics are and writes their Prometheus target file."""
    url = server["url"]
    new_sha = Predictor.from_path(runs[1]).loaded.sha256
    assert httpx.get(url + "/model").json()["sha256"] != new_sha
    files = [("files", ("a.png", images[2][0], "image/png"))]
    address = ray.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        "-m",
        "modresnet.cli",
        "serve",
        str(runs[1]),
        "--address",
        address,
        "--port",
        str(server["port"]),
        "--replica-cpus",
        "0.25",
        "--max-replicas",
        "3",
        "--target-ongoing-requests",
        "2",
        "--max-ongoing-requests",
        "8",
        "--max-queued-requests",
        "-1",
        "--max-body-mb",
        "1",
        "--max-batch-size",
        "16",
    ]
    with Load(url + "/predict", files, 4) as load:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "MODRESNET_HOME": str(tmp_path), "COLUMNS": "400"},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "rolling" in proc.stdout
        time.sleep(1)
    targets = tmp_path / "prometheus" / "targets" / f"modresnet-serve-{server['port']}.json"
    (group,) = json.loads(targets.read_text())  # a joined cluster: its nodes, no HAProxy port
    assert group["labels"] == {"job": "ray"} and group["targets"], group
    printed = f"metrics: Ray metrics at {', '.join(group['targets'])}; Prometheus file_sd "
    assert printed + f"targets in {targets}" in proc.stdout, proc.stdout
    print(f"rolling update: {dict(load.codes)}")
    assert load.codes[200] > 0
    assert load.failures == 0, load.errors[:5]
    for _ in range(5):
        assert httpx.get(url + "/model").json()["sha256"] == new_sha


# --- the canary split ----------------------------------------------------------------------


def _answers(client, url: str, files, n: int) -> Counter:
    return Counter(
        client.post(url, files=files).headers.get("x-model-version", "none") for _ in range(n)
    )


def _share_reads(url: str, share: float) -> None:
    """Wait until the replica reads `share` from the traffic table (its /model says so)."""
    deadline = time.monotonic() + 60
    while httpx.get(url + "/model").json()["canary"]["share"] != share:
        assert time.monotonic() < deadline, f"the replica never read the share {share}"
        time.sleep(0.2)


def test_the_canary_takes_the_share_the_traffic_table_sets_with_no_failed_request(
    server, runs, images
):
    """One replica serving two versions: the share set in the traffic table reaches it with no
    redeploy; requests split by it (told apart by X-Model-Version), and none fails meanwhile."""
    from serve.canary.traffic import traffic_table
    from serve.client import wait_ready
    from serve.launch import deploy

    url = server["url"] + "/canary"
    args = server["main"].model_copy(
        update={
            "min_replicas": 1,
            "max_replicas": 1,
            "version": "e2e/1",
            "canary": ModelArgs(checkpoint=str(runs[1]), version="e2e/2"),
            "canary_share": 0.0,
        }
    )
    table = traffic_table()
    state = {"phase": "canary", "candidate": "e2e/2", "champion": "e2e/1", "reason": ""}
    ray.get(table.set_share.remote("canary", 0.0, {**state, "since": time.time()}))
    deploy(args, name="canary", route_prefix="/canary")
    try:
        wait_ready(url, timeout=240)
        assert ray.get(table.get_args.remote("canary"))["canary"]["version"] == "e2e/2"
        files = [("files", ("a.png", images[2][0], "image/png"))]
        with Load(url + "/predict", files, concurrency=3) as load, httpx.Client(timeout=60) as c:
            assert _answers(c, url + "/predict", files, 30) == {"e2e/1": 30}
            ray.get(table.set_share.remote("canary", 1.0, {**state, "since": time.time()}))
            _share_reads(url, 1.0)
            assert _answers(c, url + "/predict", files, 30) == {"e2e/2": 30}
            ray.get(table.set_share.remote("canary", 0.3, {**state, "since": time.time()}))
            _share_reads(url, 0.3)
            seen = _answers(c, url + "/predict", files, 300)
            pinned: Counter = Counter()
            for _ in range(10):
                r = c.post(url + "/predict", files=files, headers={"X-Model-Version": "e2e/1"})
                pinned[r.headers["x-model-version"]] += 1
        assert set(seen) == {"e2e/1", "e2e/2"} and abs(seen["e2e/2"] / 300 - 0.3) <= 0.1, seen
        assert pinned == {"e2e/1": 10}, pinned
        assert load.failures == 0 and sum(load.codes.values()) > 0, load.errors[:5]
        info = httpx.get(url + "/model").json()
        assert info["canary"]["state"]["candidate"] == "e2e/2"
        assert [v["label"] for v in info["versions"]] == ["e2e/1", "e2e/2"]
    finally:
        serve.delete("canary")
        serve.delete("canary-health")


# --- the web page in headless Chromium --------------------------------------------------------


def _hold_slots(server, n):
    """`n` requests to the secure app that hold their admission slots: headers sent, the body
    of 1000 bytes not yet."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", server["port"]), timeout=30)
        s.sendall(
            b"POST /secure/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: {server['auth']['Authorization']}\r\n".encode()
            + b"Content-Length: 1000\r\n\r\n"
        )
        held.append(s)
    return held


def test_web_page_in_chromium(server, images, predictor, tmp_path):
    chromium = _chromium()
    if chromium is None:
        message = (
            "no Chromium here (/usr/bin/chromium, chromium on PATH or $MODRESNET_CHROMIUM): "
            "`make browser` installs Debian's"
        )
        if os.environ.get("MODRESNET_REQUIRE_BROWSER"):  # .ci/run installs one: never skip there
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    # Use the secure app's torch backend so the expected answer is exactly the Predictor's.
    png = tmp_path / "cifar.png"
    png.write_bytes(images[2][0])
    want = predictor.top_k(predictor.probabilities(decode_image(images[2][0])[None]), 5)[0]
    model = httpx.get(server["url"] + "/secure/model", headers=server["auth"]).json()
    (served,) = model["versions"]
    assert served["test_acc"] is not None  # the run's test.json: the page shows a figure
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            response = page.goto(server["url"] + "/secure")
            assert response is not None
            assert "script-src 'sha256-" in response.headers["content-security-policy"]
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.set_input_files("#file", str(png))
            page.wait_for_selector("#results .row", timeout=30_000)
            rows = page.locator("#results .row")
            assert rows.count() == 5
            labels = rows.locator(".label").all_inner_texts()
            widths = [float(w.rstrip("%")) for w in rows.locator(".pct").all_inner_texts()]
            assert labels == [w.label for w in want]
            np.testing.assert_allclose(widths, [100 * w.probability for w in want], atol=0.051)
            assert page.locator("#error").inner_text() == ""
            # the served version, its accuracy and weights, as /model has them
            page.wait_for_selector("#versions .version", timeout=30_000)
            cards = page.locator("#versions .version")
            assert cards.count() == 1
            assert cards.locator(".vlabel").inner_text() == served["label"]
            assert cards.locator(".sha").inner_text() == served["sha256"][:12]
            assert cards.locator(".sha").get_attribute("title") == served["sha256"]
            accuracy = f"{100 * served['test_acc']:.2f}%"
            assert cards.locator(".test").inner_text().startswith(accuracy)
            assert "100.00% of requests" in cards.locator(".share").inner_text()
            assert page.locator("#canary").is_hidden()
            # a click on a bundled test image classifies it
            sample = samples.load()[3]
            want = predictor.top_k(predictor.probabilities(decode_image(sample["png"])[None]), 5)[0]
            page.click(f".sample[data-index='{sample['index']}']")
            page.wait_for_selector(
                "#answer:has-text('true class'), #error:not(:empty)", timeout=30_000
            )
            assert page.locator("#error").inner_text() == ""
            labels = page.locator("#results .row .label").all_inner_texts()
            assert labels == [w.label for w in want]
            answer = page.locator("#answer").inner_text()
            assert answer == f"Answered by {served['label']}; the true class: {sample['label']}"
            assert page.locator("#error").inner_text() == ""
            # every strip image drew from the page itself, against a replica admitting 1 + 1
            drawn = page.eval_on_selector_all(
                ".sample img", "imgs => imgs.map(i => i.complete && i.naturalWidth)"
            )
            assert drawn == [32] * samples.COUNT, drawn
            # a click while the replica is full waits as Retry-After says, then is answered
            held = _hold_slots(server, 2)
            try:
                deadline = time.monotonic() + 30
                while (
                    httpx.get(server["url"] + "/secure/model", headers=server["auth"]).status_code
                    != 429
                ):
                    assert time.monotonic() < deadline, "the held requests never filled the replica"
                    time.sleep(0.1)
                page.click(".sample[data-index='5']")
                page.wait_for_selector("#answer:has-text('busy')", timeout=10_000)
            finally:
                for s in held:  # the rest of each body: an invalid one, answered 400 at once
                    s.sendall(b" " * 1000)
                    s.close()
            page.wait_for_selector("#answer:has-text('Answered by')", timeout=30_000)
            assert page.locator("#error").inner_text() == ""
            assert page.locator("#results .row").count() == 5
            # the page ran under its Content-Security-Policy, and kept the key nowhere
            assert not [m for m in console if "Content Security Policy" in m], console
            assert page.evaluate("sessionStorage.length + localStorage.length") == 0
        finally:
            browser.close()
