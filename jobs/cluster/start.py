"""Starting a local cluster's processes: free ports, the environment each `ray start` gets,
each node's own temp dir, and waiting for the daemonizing `ray start`s to finish while
recording every process each one left behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from jobs.cluster.procs import processes, read_proc, with_descendants
from jobs.cluster.state import ClusterError, ClusterState, save_state
from jobs.runtime import RAY_ENV


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct free TCP ports (all held open while choosing, then released)."""
    with ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < n:
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port not in ports:
                ports.append(port)
        return ports


def ray_executable() -> str:
    candidate = Path(sys.executable).parent / "ray"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise ClusterError("cannot find the `ray` executable next to this Python or on PATH")
    return found


def child_env(token_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(var, None)
    # The job entrypoint runs in a shell with the raylet's PATH: put this venv's bin first so
    # `python -m modresnet.cli ...` finds this interpreter and its packages.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    for name, value in RAY_ENV.items():
        env.setdefault(name, value)
    return env


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def node_temp_dir(temp_dir: str, i: int) -> str:
    """Node i's own Ray temp dir: the head uses the cluster's, worker i a `w<i>` folder in it.

    Never one folder for all nodes: each node's runtime-env agent unpacks a job's working_dir
    into <temp dir>/<session>/runtime_resources/working_dir_files/ and, on its first use on
    that node, deletes and unpacks it again (`overwrite=True`). With a shared temp dir a worker
    node starting a job's Train workers deleted the folder that was the job driver's working
    directory on the head, so the driver's later os.getcwd() (wandb.init) raised
    FileNotFoundError and the finished job ended FAILED."""
    return temp_dir if i == 0 else os.path.join(temp_dir, f"w{i}")


def ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [ray_executable(), "start", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_started(state: ClusterState, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Wait for a `ray start` to exit, then record (pid, start time) of every process it left.

    It is waited for without being reaped (WNOWAIT): while it is a zombie its pid, which is its
    session's id, cannot be reused, so every process in that session is one it started."""
    deadline = time.monotonic() + timeout_s
    while not os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
        if time.monotonic() > deadline:
            raise ClusterError(
                f"`ray start` did not finish within {timeout_s:.0f}s; see {log}:\n{tail(log)}"
            )
        time.sleep(0.2)
    procs = processes()
    left = with_descendants([p for p in procs if p.sid == proc.pid], procs)
    state.procs += [(p.pid, p.start) for p in left if (p.pid, p.start) not in state.procs]
    save_state(state)
    rc = proc.wait()
    if rc != 0:
        raise ClusterError(f"`ray start` failed (exit {rc}); see {log}:\n{tail(log)}")


def record_leader(state: ClusterState, proc: subprocess.Popen) -> None:
    """Record a `ray start` (a session leader: its pid is the session id) with its start time."""
    state.sessions.append(proc.pid)
    me = read_proc(proc.pid)
    if me is not None:
        state.leaders.append((proc.pid, me.start))
    save_state(state)
