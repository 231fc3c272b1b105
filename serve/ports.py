"""Picking the port Serve's HTTP proxy binds."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port that Ray's own processes will not take before Serve binds it: below
    the kernel's ephemeral range (where Ray's GCS, raylets and gRPC servers take theirs) and
    above Ray's worker ports (10002-19999). A port from bind(0) is ephemeral, and a Ray that
    starts between choosing it and Serve binding it can take it first ("Failed to bind")."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for port in random.sample(range(20000, low), min(200, max(low - 20000, 0))):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no range above Ray's worker ports: any free port
        s.bind((host, 0))
        return int(s.getsockname()[1])
