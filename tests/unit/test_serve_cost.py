"""What big v2 JSON bodies may cost a replica: eight maximum-size ones at once, against the
app each replica builds served by uvicorn in its own process (tests/benchmarks/v2_cost.py),
while a readiness probe on the same process keeps answering within 1 s, and with the
process's peak RSS growth bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")

REPO = Path(__file__).resolve().parents[2]
# Eight bodies at the limit are held while they wait for the one JSON thread (8 x 6.1 MiB at
# max_images 64), plus one parse (~15 MiB): measured +50-76 MiB. Eight refused from their
# Content-Length are never read.
HELD_MIB = 128
REFUSED_MIB = 16


@pytest.fixture(scope="module")
def cost() -> dict:
    out = subprocess.run(
        [sys.executable, "tests/benchmarks/v2_cost.py", "--repeat", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    print(out.stdout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_limits_refuse_what_max_images_cannot_need(cost):
    single = cost["single"]
    assert single["legal"]["status"] == [200]
    assert single["late_400"]["status"] == [400]
    for name in ("values_413", "size_413", "over_cap"):
        assert single[name]["status"] == [413], (name, single[name])
    assert single["legal"]["bytes"] == cost["json_limit_bytes"]


@pytest.mark.parametrize(
    "run,status,mib",
    [
        ("concurrent_legal", 200, HELD_MIB),
        ("concurrent_values_413", 413, HELD_MIB),
        ("concurrent_size_413", 413, REFUSED_MIB),
    ],
)
def test_eight_at_once_keep_the_probe_answering_and_rss_bounded(cost, run, status, mib):
    row = cost[run]
    assert row["status"] == [status] and row["requests"] == 8, row
    assert row["probes"] >= 1 and row["probe_max_s"] < 1.0, row
    assert row["peak_mib"] < mib, row
