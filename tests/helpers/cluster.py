"""Helpers of the cluster tests (test_cluster*.py, test_runtime.py, test_ray_train.py): the
CLI as a subprocess, HTTP with a token (jobs/client/http.py: never through a redirect), offline
W&B history, a free loopback port, a cluster state file without a cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jobs.client import http as token_http

REPO = Path(__file__).resolve().parents[2]
CLIENT_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
GONE = "/tmp/mrray-gone0000"  # a temp dir name `up` could have made, long removed


def cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "modresnet.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def http(url: str, token: str | None = None) -> tuple[int, bytes]:
    return token_http.get(url, token, timeout=10)


def wandb_history(wandb_dir: Path) -> list[dict]:
    """Every history record of the W&B runs under `wandb_dir`, read back from the offline
    .wandb logs with W&B's own reader (`wandb leet inspect --json`), in file order."""
    runs = sorted(wandb_dir.glob("offline-run-*"))
    assert runs, f"no offline W&B run in {wandb_dir}"
    out = []
    for run in runs:
        read = subprocess.run(
            [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert read.returncode == 0, read.stderr
        out += [
            json.loads(line)["history"]["item"]
            for line in read.stdout.splitlines()
            if '"type":"history"' in line
        ]
    return out


def fake_state(home: Path, temp_dir: str = GONE, **fields) -> Path:
    """A state.json of `modresnet cluster up` in `home` (no process behind it); `fields`
    override ClusterState's, e.g. gcs_port or procs."""
    from dataclasses import asdict

    from jobs.cluster.state import ClusterState

    (home / "cluster").mkdir(parents=True, exist_ok=True)
    values = {
        "home": str(home),
        "temp_dir": temp_dir,
        "token_path": str(home / "cluster" / "auth_token"),
        "node_ip": "127.0.0.1",
        "gcs_port": 1,
        "dashboard_port": 2,
        "client_port": 3,
        "workers": 0,
        "cpus_per_node": 1,
        "head_cpus": 0,
    }
    path = home / "cluster" / "state.json"
    path.write_text(json.dumps(asdict(ClusterState(**{**values, **fields}))))
    return path
