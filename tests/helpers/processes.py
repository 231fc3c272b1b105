"""Processes under /proc for the Ray tests (test_ray_train.py, test_storage.py): descendants,
Ray Train workers under a raylet, the embedded Ray session a killed CLI driver left behind, and
killing a driver once its run has a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, ...; [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def group_members(pgid: int, wait_s: float = 15.0) -> list[str]:
    """Command lines of the processes still in process group `pgid` after up to wait_s."""
    deadline = time.monotonic() + wait_s
    while True:
        left = [
            _cmdline(pid)
            for pid, fields in ((pid, _stat(pid)) for pid in _all_pids())
            if fields and int(fields[2]) == pgid and fields[0] != "Z"
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        parent = _ppid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def train_workers_under(raylet_pid: int) -> list[int]:
    return [p for p in descendants(raylet_pid) if "RayTrainWorker" in _cmdline(p)]


def raylet_pids(node) -> list[int]:
    return [info.process.pid for info in node.all_processes.get("raylet", [])]


def kill_ray_session_of(driver_pid: int) -> None:
    """Processes of the embedded Ray a killed CLI driver started (session_<date>_<pid>)."""
    tag = f"_{driver_pid}"
    for pid in _all_pids():
        cmd = _cmdline(pid)
        if "session_" in cmd and any(
            part.startswith("session_") and part.endswith(tag)
            for part in cmd.replace("/", " ").replace("=", " ").split()
        ):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def kill_driver_at_snapshot(
    driver: subprocess.Popen, snapshot_exists: Callable[[], bool], poll_s: float, where: str = ""
) -> None:
    """Wait (at most 240 s) until Ray's checkpoint snapshot exists, then SIGKILL the CLI driver
    (started with start_new_session=True, stdout piped as text) with its process group, and
    the embedded Ray session it started. Fails with the driver's output if it exits first;
    `where` goes into the message."""
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not snapshot_exists():
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            time.sleep(poll_s)
        assert snapshot_exists(), f"no checkpoint{where} within 240 s"
        # the whole process group at once: the driver and the Ray it started, whose workers
        # would otherwise train on (and checkpoint) until Ray noticed the driver had died
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
        kill_ray_session_of(driver.pid)
