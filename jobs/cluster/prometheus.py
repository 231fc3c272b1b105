"""Where Prometheus finds a cluster's metrics: a file_sd target file, as `modresnet cluster up`
and `modresnet serve` write it, of each Ray node's metrics export port (job `ray`) and, where
Serve's HAProxy ingress runs, HAProxy's own Prometheus listener (job `haproxy`). Prometheus
rereads such a file when it changes (docs/serving.md, "Metrics and alerts")."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs.cluster.state import modresnet_home
from modresnet.files import atomic_write_text


def targets_dir() -> Path:
    """$MODRESNET_HOME/prometheus/targets (default ~/.modresnet/...): one file per writer."""
    return modresnet_home() / "prometheus" / "targets"


def node_targets(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """HOST:PORT of the metrics export port of each alive node of `ray.nodes()`."""
    return sorted(
        {
            f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}"
            for n in nodes
            if n.get("Alive") and n.get("MetricsExportPort")
        }
    )


def target_groups(ray: Sequence[str], haproxy: Sequence[str] = ()) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = [{"targets": list(ray), "labels": {"job": "ray"}}]
    if haproxy:
        groups.append({"targets": list(haproxy), "labels": {"job": "haproxy"}})
    return groups


def write_targets(path: Path, ray: Sequence[str], haproxy: Sequence[str] = ()) -> Path:
    """Write the target file at `path` (atomically: Prometheus never reads half of one)."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(target_groups(ray, haproxy), indent=1) + "\n")
    return path


def where(path: Path, ray: Sequence[str], haproxy: Sequence[str] = ()) -> str:
    """One line saying where the metrics are, for the command's output."""
    places = [f"Ray metrics at {', '.join(ray)}"]
    if haproxy:
        places.append(f"HAProxy's at {', '.join(f'http://{t}/metrics' for t in haproxy)}")
    return f"metrics: {'; '.join(places)}; Prometheus file_sd targets in {path}"
