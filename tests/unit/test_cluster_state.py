"""`modresnet cluster down` signals only processes proven ours, removes only a temp dir `up`
made, and `up`/`down` take a lock (no cluster needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers.cluster import CLIENT_VARS, cli, fake_state

# ------------------------------------------------------------------------------------------
# `down` signals only processes proven ours; `up`/`down` take a lock (no cluster needed)


def test_down_leaves_alone_a_recorded_pid_now_used_by_another_process(tmp_path):
    from jobs.cluster.procs import boot_id, own_processes, read_proc
    from jobs.cluster.state import ClusterState

    # an unrelated process that got a pid (and, as a session leader, a session id) the
    # cluster once recorded for its `ray start`, which had started at another time
    other = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        pid, start = other.pid, read_proc(other.pid).start
        home = tmp_path / "home"
        path = fake_state(
            home,
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
        path = fake_state(
            home,
            sessions=[pid],
            procs=[[pid, start]],
            leaders=[[pid, start]],
            boot_id="another-boot",
        )
        assert own_processes(ClusterState(**json.loads(path.read_text()))) == []
        # ...while in this boot the same record is ours (the check above is what excluded it)
        path = fake_state(
            home,
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
    from jobs.cluster.lifecycle import _cluster_lock

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


@pytest.fixture()
def ray_temp_dir():
    """A temp dir as `up` makes it (/tmp/mrray-XXXXXXXX), with the log a user may be reading."""
    from jobs.cluster.state import TEMP_PREFIX, TEMP_ROOT

    temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=TEMP_ROOT))
    (temp_dir / "session_latest" / "logs").mkdir(parents=True)
    (temp_dir / "session_latest" / "logs" / "raylet.out").write_text("raylet log\n")
    yield temp_dir
    shutil.rmtree(temp_dir, ignore_errors=True)


def _as_nobody(*cmd: str, **kwargs) -> subprocess.Popen:
    if os.geteuid() != 0:
        pytest.skip("starting a process of another user (setpriv --reuid) needs root")
    from jobs.cluster.procs import read_proc

    proc = subprocess.Popen(
        ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", *cmd],
        stderr=subprocess.DEVNULL,
        **kwargs,
    )
    # setpriv runs as root until it drops to nobody and execs the command: a test that reads
    # the process before then sees root's `setpriv ...`, not another user's process
    deadline = time.monotonic() + 10
    while (seen := read_proc(proc.pid)) is None or 0 in seen.uids:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"setpriv never became nobody running {cmd[0]}")
        time.sleep(0.01)
    return proc


def test_down_signals_no_process_by_its_command_line_nor_any_of_another_user(
    tmp_path, ray_temp_dir
):
    from jobs.cluster.procs import boot_id, own_processes, read_proc
    from jobs.cluster.state import ClusterState

    log = ray_temp_dir / "session_latest" / "logs" / "raylet.out"
    # ours, naming the temp dir: a user following the raylet's log in another terminal
    reader = subprocess.Popen(["tail", "-f", str(log)], stdout=subprocess.DEVNULL)
    # another user's, naming it too, and recorded as the cluster's own `ray start` and process
    # (what a pid reused by another user looks like, start time and all)
    foreign = _as_nobody("tail", "-F", str(log), start_new_session=True)
    try:
        start = read_proc(foreign.pid).start
        path = fake_state(
            tmp_path / "home",
            temp_dir=str(ray_temp_dir),
            sessions=[foreign.pid],
            leaders=[(foreign.pid, start)],
            procs=[(foreign.pid, start)],
            boot_id=boot_id(),
        )
        # what `up` checks before refusing to start: neither counts as a running cluster
        assert own_processes(ClusterState(**json.loads(path.read_text()))) == []
        env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
        down = cli("cluster", "down", env={**env, "MODRESNET_HOME": str(tmp_path / "home")})
        assert down.returncode == 0, down.stderr
        assert "stopped 0 processes" in down.stderr
        assert reader.poll() is None and foreign.poll() is None  # both never signalled
        assert not ray_temp_dir.exists() and not path.exists()  # the cluster's files are gone
    finally:
        for p in (reader, foreign):
            p.kill()
            p.wait()


def test_down_removes_nothing_a_state_file_names_unless_up_made_it(
    tmp_path, ray_temp_dir, monkeypatch
):
    from jobs.cluster import lifecycle
    from jobs.cluster.state import TEMP_ROOT, ClusterError

    home = tmp_path / "home"
    monkeypatch.setenv("MODRESNET_HOME", str(home))
    canary = tmp_path / "precious"
    canary.mkdir()
    (canary / "notes.txt").write_text("keep me")
    link = Path(tempfile.mktemp(prefix="mrray-", dir=TEMP_ROOT))
    link.symlink_to(canary)
    cases = {
        str(canary): "is not /tmp/mrray-XXXXXXXX",
        f"{TEMP_ROOT}/mrray-../{canary.relative_to('/')}": "is not /tmp/mrray-XXXXXXXX",
        f"{ray_temp_dir}/..": "is not /tmp/mrray-XXXXXXXX",
        str(link): "is not a folder",
    }
    theirs = Path(tempfile.mkdtemp(prefix="mrray-", dir=TEMP_ROOT))
    if os.geteuid() == 0:  # chown needs root: a folder of another user, named as ours
        os.chown(theirs, 65534, 65534)
        cases[str(theirs)] = "is owned by uid 65534"
    try:
        for temp_dir, message in cases.items():
            path = fake_state(home, temp_dir=temp_dir)
            with pytest.raises(ClusterError, match=message) as err:
                lifecycle.down(quiet=True)
            assert str(path) in str(err.value) and "\n" not in str(err.value)
            assert path.exists()
        # through the CLI: exit 2, one line naming the state file
        env = {k: v for k, v in os.environ.items() if k not in CLIENT_VARS}
        down = cli("cluster", "down", env=env)
        assert down.returncode == 2, down.stdout + down.stderr
        assert down.stderr.strip().count("\n") == 0 and str(path) in down.stderr
        assert (canary / "notes.txt").read_text() == "keep me"
        assert theirs.is_dir() and link.is_symlink() and ray_temp_dir.is_dir()

        # a state file whose fields have the wrong types: the same one line, nothing touched
        path.write_text(json.dumps({**json.loads(path.read_text()), "procs": [["1", 2]]}))
        with pytest.raises(ClusterError, match=r"state\.json is not a cluster state \(procs"):
            lifecycle.down(quiet=True)
    finally:
        link.unlink()
        shutil.rmtree(theirs)
