"""Debian's Prometheus in the tests: its binaries (or a skip naming the make target that installs
them), and a real Prometheus server on a free loopback port, queried through its HTTP API."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.ports import free_port


def find_binary(name: str, candidates: tuple[str, ...] | None = None) -> str:
    """Debian's `name` (promtool, prometheus), else skip naming the make target that installs
    it; .ci/run installs it and sets MODRESNET_REQUIRE_PROMETHEUS, so there a missing one fails
    instead."""
    candidates = candidates or (f"/usr/bin/{name}",)
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    message = (
        f"no {name} here ({', '.join(candidates)}): `make prometheus` installs Debian's "
        "prometheus package, which has it"
    )
    if os.environ.get("MODRESNET_REQUIRE_PROMETHEUS"):
        pytest.fail(message)
    pytest.skip(message)


def find_promtool(candidates: tuple[str, ...] = ("/usr/bin/promtool",)) -> str:
    return find_binary("promtool", candidates)


class Prometheus:
    """A running Prometheus: `query(promql)` returns the result vector of an instant query."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        import httpx

        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])


@contextmanager
def prometheus_server(
    folder: Path, scrape_configs: list[dict[str, Any]], interval_s: float = 1.0
) -> Iterator[Prometheus]:
    """Debian's prometheus on 127.0.0.1 (a free port, storage in `folder`) scraping
    `scrape_configs` every `interval_s`; stopped after the block."""
    binary = find_binary("prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": "1s"},
        "scrape_configs": scrape_configs,
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (folder / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready within 60 s"
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
