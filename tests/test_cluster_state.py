"""`modresnet cluster down` signals only processes proven ours, and `up`/`down` take a lock
(no cluster needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cluster_helpers import CLIENT_VARS, cli

# ------------------------------------------------------------------------------------------
# `down` signals only processes proven ours; `up`/`down` take a lock (no cluster needed)


def _fake_state(home: Path, tmp: Path, **fields) -> Path:
    from dataclasses import asdict

    from jobs.cluster_state import ClusterState

    (home / "cluster").mkdir(parents=True, exist_ok=True)
    state = ClusterState(
        home=str(home),
        temp_dir=str(tmp / "mrray-gone"),
        token_path=str(home / "cluster" / "auth_token"),
        node_ip="127.0.0.1",
        gcs_port=1,
        dashboard_port=2,
        client_port=3,
        workers=0,
        cpus_per_node=1,
        head_cpus=0,
        **fields,
    )
    path = home / "cluster" / "state.json"
    path.write_text(json.dumps(asdict(state)))
    return path


def test_down_leaves_alone_a_recorded_pid_now_used_by_another_process(tmp_path):
    from jobs.cluster_procs import boot_id, own_processes, read_proc
    from jobs.cluster_state import ClusterState

    # an unrelated process that got a pid (and, as a session leader, a session id) the
    # cluster once recorded for its `ray start`, which had started at another time
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        pid, start = other.pid, read_proc(other.pid).start
        home = tmp_path / "home"
        path = _fake_state(
            home,
            tmp_path,
            sessions=[pid],
            procs=[[pid, start - 7]],
            leaders=[[pid, start - 7]],
            boot_id=boot_id(),
        )
        assert own_processes(ClusterState(**json.loads(path.read_text()))) == []
        env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
        down = cli("cluster", "down", env={**env, "MODRESNET_HOME": str(home)})
        assert down.returncode == 0, down.stderr
        assert "stopped 0 processes" in down.stderr
        assert other.poll() is None  # still running: never signalled

        # the very (pid, start) recorded, but in another boot: not ours either
        path = _fake_state(
            home,
            tmp_path,
            sessions=[pid],
            procs=[[pid, start]],
            leaders=[[pid, start]],
            boot_id="another-boot",
        )
        assert own_processes(ClusterState(**json.loads(path.read_text()))) == []
        # ...while in this boot the same record is ours (the check above is what excluded it)
        path = _fake_state(
            home,
            tmp_path,
            sessions=[pid],
            procs=[[pid, start]],
            leaders=[[pid, start]],
            boot_id=boot_id(),
        )
        assert [p.pid for p in own_processes(ClusterState(**json.loads(path.read_text())))] == [pid]
    finally:
        other.kill()
        other.wait()


def test_cluster_up_and_down_wait_for_each_other(tmp_path, monkeypatch):
    from jobs.cluster import _cluster_lock

    home = tmp_path / "home"
    monkeypatch.setenv("MODRESNET_HOME", str(home))
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
    with _cluster_lock():  # an `up` or `down` in progress
        runs = [cli("cluster", cmd, env=env) for cmd in ("up", "down")]
    for r in runs:
        assert r.returncode == 2, r.stdout + r.stderr
        assert "another `modresnet cluster up|down` is running" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (home / "cluster" / "state.json").exists()  # the refused `up` started nothing
