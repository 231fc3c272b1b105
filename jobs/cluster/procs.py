"""Which processes a local cluster owns, read straight from /proc (Linux), and stopping
exactly those: by pid, each one proven ours by what `up` recorded (pid + start time, a session
it started) or by descent from such a process, run by our own uid, and re-checked right before
it is signalled. Never by name or command line: anyone can start a process whose command line
names the cluster's temp dir (a `tail -f` of its logs)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.cluster.state import ClusterState


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    start: int  # clock ticks since boot; (pid, start) identifies a process across pid reuse
    uids: tuple[int, ...]  # real, effective, saved, filesystem
    cmdline: str

    @property
    def mine(self) -> bool:
        """Run by our uid alone: a process of another user is never signalled."""
        return set(self.uids) == {os.geteuid()}


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        sid=int(fields[3]),
        start=int(fields[19]),
        uids=tuple(int(u) for u in uids),
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


def with_descendants(roots: list[Proc], procs: list[Proc]) -> list[Proc]:
    """`roots` and every process below them by /proc parent links (a child starts after its
    parent), ours by uid only; never this process."""
    me = os.getpid()
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    ours = {p.pid: p for p in roots if p.mine and p.pid != me}
    stack = list(ours.values())
    while stack:
        parent = stack.pop()
        for child in children.get(parent.pid, []):
            if child.pid in ours or child.pid == me or not child.mine:
                continue
            if child.start >= parent.start:
                ours[child.pid] = child
                stack.append(child)
    return sorted(ours.values(), key=lambda p: p.pid)


def own_processes(state: ClusterState) -> list[Proc]:
    """Every live process this cluster started, each one proven ours before it counts:

    - a recorded (pid, start time) that still matches, in the boot that recorded it;
    - a member of one of our sessions, only while that session is provably still ours: its
      leader (pid = session id) alive with its recorded start time, or a member that is a
      recorded process (the kernel never reuses a session id while a member lives);
    - a descendant of any of these;
    and run by our own uid. After a reboot (another boot id) nothing recorded is ours."""
    if state.boot_id and state.boot_id != boot_id():
        return []
    procs = processes()
    recorded = {(pid, start) for pid, start in state.procs}
    leaders = {(pid, start) for pid, start in state.leaders}
    sessions = {p.sid for p in procs if (p.pid, p.start) in recorded}
    sessions |= {p.pid for p in procs if (p.pid, p.start) in leaders}
    sessions &= set(state.sessions)
    roots = [p for p in procs if (p.pid, p.start) in recorded or p.sid in sessions]
    return with_descendants(roots, procs)


def _signal(pid: int, start: int, sig: signal.Signals) -> None:
    """Signal pid only while it is still the process listed (same start time, our uid)."""
    proc = read_proc(pid)
    if proc is None or proc.start != start or not proc.mine:
        return  # gone since it was listed; its pid may be another's now
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # exited, or changed its uid, in between: either way not ours to signal


def kill(procs: list[Proc], grace_s: float = 8.0) -> int:
    """SIGTERM, wait up to grace_s, SIGKILL what is left. Returns how many were signalled."""
    targets = [(p.pid, p.start) for p in procs if p.mine]
    for pid, start in targets:
        _signal(pid, start, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(pid, start) for pid, start in targets):
        time.sleep(0.2)
    for pid, start in targets:
        _signal(pid, start, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(pid, start) for pid, start in targets):
        time.sleep(0.1)
    return len(targets)
