"""Which processes a local cluster owns, read straight from /proc (Linux), and stopping
exactly those: by pid, each one proven ours (pid + start time, session, temp dir, descent)
and re-checked right before it is signalled, never by name."""

from __future__ import annotations

import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.cluster_state import ClusterState


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    start: int  # clock ticks since boot; (pid, start) identifies a process across pid reuse
    cmdline: str


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    state = fields[0]
    if state in ("Z", "X"):
        return None
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        sid=int(fields[3]),
        start=int(fields[19]),
        cmdline=raw.replace(b"\0", b" ").decode(errors="replace").strip(),
    )


def processes() -> list[Proc]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = read_proc(int(entry))
            if proc is not None:
                out.append(proc)
    return out


def boot_id() -> str:
    """This boot's id: after a reboot every recorded pid, session id and start time may name
    another process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def alive(pid: int, start: int | None = None) -> bool:
    proc = read_proc(pid)
    return proc is not None and (start is None or proc.start == start)


def own_processes(state: ClusterState) -> list[Proc]:
    """Every live process this cluster started, each one proven ours before it counts:

    - a recorded (pid, start time) that still matches, in the boot that recorded it;
    - a member of one of our sessions, only while that session is provably still ours: its
      leader (pid = session id) alive with its recorded start time, or a member that is a
      recorded process (the kernel never reuses a session id while a member lives);
    - a command line naming this cluster's own temp dir (random, made by `up`);
    - a descendant of any of these.
    After a reboot (another boot id) none of them can be alive: nothing is ours."""
    if state.boot_id and state.boot_id != boot_id():
        return []
    procs = processes()
    me = os.getpid()
    recorded = {(pid, start) for pid, start in state.procs}
    verified = [p for p in procs if (p.pid, p.start) in recorded]
    leaders = {(pid, start) for pid, start in state.leaders}
    sessions = {p.sid for p in verified} | {p.pid for p in procs if (p.pid, p.start) in leaders}
    sessions &= set(state.sessions)
    marker = re.compile(re.escape(state.temp_dir.rstrip("/")) + r"(/|\s|$)")
    ours = {
        p.pid
        for p in procs
        if p.pid != me
        and ((p.pid, p.start) in recorded or p.sid in sessions or marker.search(p.cmdline))
    }
    children: dict[int, list[int]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p.pid)
    stack = list(ours)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in ours and child != me:
                ours.add(child)
                stack.append(child)
    return [p for p in procs if p.pid in ours]


def kill(procs: list[Proc], grace_s: float = 8.0) -> int:
    """SIGTERM, wait up to grace_s, SIGKILL what is left. Returns how many were signalled."""
    targets = [(p.pid, p.start) for p in procs]
    for pid, start in targets:
        if not alive(pid, start):  # gone since it was listed; its pid may be another's now
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(pid, start) for pid, start in targets):
        time.sleep(0.2)
    for pid, start in targets:
        if alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(pid, start) for pid, start in targets):
        time.sleep(0.1)
    return len(targets)
