"""`modresnet cluster up|status|down`: start the cluster (holding the cluster lock), report
its nodes through the dashboard's State API, stop exactly its processes. The package's
docstring says what a cluster owns and how `down` proves a process ours."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.client import http
from jobs.cluster import prometheus
from jobs.cluster.procs import boot_id, kill, own_processes
from jobs.cluster.start import (
    child_env,
    free_ports,
    node_temp_dir,
    ray_start,
    record_leader,
    wait_started,
)
from jobs.cluster.state import (
    TEMP_PREFIX,
    TEMP_ROOT,
    ClusterError,
    ClusterState,
    load_state,
    modresnet_home,
    read_token,
    save_state,
    state_dir,
    state_file,
    token_file,
)
from modresnet.files import hold_lock

# ------------------------------------------------------------------------------------------
# helpers


def alive_nodes(state: ClusterState, token: str | None, timeout: float = 5.0) -> list[dict]:
    """Alive nodes as the dashboard's State API sees them."""
    status, body = http.get(
        f"{state.jobs_address}/api/v0/nodes?limit=1000&detail=1", token, timeout=timeout
    )
    if status != 200:
        raise ClusterError(f"dashboard answered {status} for /api/v0/nodes")
    result = json.loads(body)["data"]["result"]["result"]
    return [n for n in result if n.get("state") == "ALIVE"]


# ------------------------------------------------------------------------------------------
# up / status / down


@contextmanager
def _cluster_lock() -> Iterator[None]:
    """`up` and `down` of one MODRESNET_HOME run one at a time."""
    sdir = state_dir()
    sdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    busy = ClusterError(
        f"another `modresnet cluster up|down` is running for {modresnet_home()} (it holds "
        f"{sdir / 'lock'}); wait for it to finish, then try again"
    )
    with hold_lock(sdir / "lock", busy=busy):
        yield


def up(
    workers: int = 2,
    cpus_per_node: float = 1,
    head_cpus: float = 0,
    object_store_mb: int = 256,
    timeout_s: float = 240,
    log: Callable[[str], None] = print,
) -> ClusterState:
    """Start the cluster, holding the cluster lock (see `_up`)."""
    with _cluster_lock():
        return _up(workers, cpus_per_node, head_cpus, object_store_mb, timeout_s, log)


def _up(
    workers: int,
    cpus_per_node: float,
    head_cpus: float,
    object_store_mb: int,
    timeout_s: float,
    log: Callable[[str], None],
) -> ClusterState:
    if workers < 0:
        raise ClusterError("--workers must be >= 0")
    if cpus_per_node <= 0:
        raise ClusterError("--cpus-per-node must be > 0")
    if head_cpus < 0:
        raise ClusterError("--head-cpus must be >= 0")
    if object_store_mb < 80:
        raise ClusterError("--object-store-mb must be at least 80 (Ray's minimum is 75 MiB)")
    existing = load_state()
    if existing is not None:
        if own_processes(existing):
            raise ClusterError(
                f"a cluster from {modresnet_home()} is already running at "
                f"{existing.jobs_address}; `modresnet cluster down` first, or set "
                f"MODRESNET_HOME to start another"
            )
        _cleanup_files(existing)  # stale state from a crashed cluster

    sdir = state_dir()
    sdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(sdir, 0o700)
    (sdir / "logs").mkdir(exist_ok=True)
    token_path = token_file()
    token_path.unlink(missing_ok=True)
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    temp_dir = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=TEMP_ROOT)

    node_ip = "127.0.0.1"
    gcs, dash, client, dash_metrics, monitor_metrics, *node_ports = free_ports(
        5 + 6 * (workers + 1)
    )
    state = ClusterState(
        home=str(modresnet_home()),
        temp_dir=temp_dir,
        token_path=str(token_path),
        node_ip=node_ip,
        gcs_port=gcs,
        dashboard_port=dash,
        client_port=client,
        workers=workers,
        cpus_per_node=cpus_per_node,
        head_cpus=head_cpus,
        started_at=time.time(),
        boot_id=boot_id(),
        metrics_ports=[node_ports[6 * i + 2] for i in range(workers + 1)],
    )
    save_state(state)  # saved first, so `down` can clean up even a half-started cluster
    env = child_env(token_path)
    # the head's two Prometheus servers default to fixed ports (44227, 44217): a second cluster
    # on this machine would fail to bind them
    env.update(DASHBOARD_METRIC_PORT=str(dash_metrics), AUTOSCALER_METRIC_PORT=str(monitor_metrics))
    token = token_path.read_text().strip()

    def node_args(i: int) -> list[str]:
        agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = node_ports[6 * i : 6 * i + 6]
        return [
            "--node-ip-address",
            node_ip,
            "--temp-dir",
            node_temp_dir(temp_dir, i),
            "--dashboard-agent-listen-port",
            str(agent),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--metrics-export-port",
            str(metrics),
            "--runtime-env-agent-port",
            str(rt_env),
            "--node-manager-port",
            str(node_mgr),
            "--object-manager-port",
            str(obj_mgr),
            "--min-worker-port",
            "0",
            "--max-worker-port",
            "0",  # OS-assigned worker ports
            "--object-store-memory",
            str(object_store_mb * 1024 * 1024),
            "--num-gpus",
            "0",
            "--disable-usage-stats",
        ]

    t0 = time.monotonic()
    try:
        head_log = sdir / "logs" / "head.log"
        log(f"starting head on {node_ip}:{gcs} (dashboard + Jobs API on {state.jobs_address})")
        head = ray_start(
            [
                "--head",
                "--port",
                str(gcs),
                "--dashboard-host",
                node_ip,
                "--dashboard-port",
                str(dash),
                "--include-dashboard",
                "true",
                "--ray-client-server-port",
                str(client),
                "--num-cpus",
                f"{head_cpus:g}",
                *node_args(0),
            ],
            env,
            head_log,
        )
        record_leader(state, head)
        wait_started(state, head, head_log, timeout_s)
        os.chmod(temp_dir, 0o700)  # Ray makes it 0777 ("shared"); only we need to enter it
        log(
            f"head up in {time.monotonic() - t0:.0f}s; starting {workers} worker raylet(s) with "
            f"{cpus_per_node:g} CPU(s) each"
        )
        # One at a time: on 2 busy cores, raylets registering at once can time out in GCS.
        for i in range(1, workers + 1):
            wlog = sdir / "logs" / f"worker-{i}.log"
            proc = ray_start(
                [
                    "--address",
                    state.gcs_address,
                    "--num-cpus",
                    f"{cpus_per_node:g}",
                    "--resources",
                    json.dumps({f"modresnet_worker_{i}": 1}),
                    *node_args(i),
                ],
                env,
                wlog,
            )
            record_leader(state, proc)
            wait_started(state, proc, wlog, max(30.0, t0 + timeout_s - time.monotonic()))
        _wait_ready(state, token, workers + 1, deadline=t0 + timeout_s)
    except BaseException:
        log("start failed; stopping what was started")
        _down(quiet=True, log=log)
        raise
    state.procs = [(p.pid, p.start) for p in own_processes(state)]
    save_state(state)
    log(
        f"cluster up in {time.monotonic() - t0:.0f}s: {workers + 1} nodes, "
        f"{len(state.procs)} processes, state in {sdir}"
    )
    targets = prometheus.write_targets(targets_file(), state.metrics_targets)
    log(prometheus.where(targets, state.metrics_targets))
    return state


def targets_file() -> Path:
    """The cluster's Prometheus target file (jobs/cluster/prometheus.py), removed by `down`."""
    return prometheus.targets_dir() / "modresnet-cluster.json"


def _wait_ready(state: ClusterState, token: str, nodes: int, deadline: float) -> None:
    """Until the Jobs API answers with the token and every node is alive."""
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, _ = http.get(f"{state.jobs_address}/api/jobs/", token, timeout=3.0)
            if status == 200:
                n = len(alive_nodes(state, token))
                if n >= nodes:
                    return
                last = f"{n}/{nodes} nodes alive"
            else:
                last = f"Jobs API answered {status}"
        except (OSError, ClusterError, ValueError, KeyError) as err:
            last = str(err)
        time.sleep(1)
    raise ClusterError(f"cluster not ready in time ({last}); logs in {state_dir() / 'logs'}")


def status(timeout: float = 5.0) -> dict[str, Any]:
    state = load_state()
    if state is None:
        raise ClusterError(
            f"no cluster in {modresnet_home()}; start one with `modresnet cluster up`"
        )
    procs = own_processes(state)
    info = {
        "home": state.home,
        "jobs_address": state.jobs_address,
        "gcs_address": state.gcs_address,
        "token_path": state.token_path,
        "temp_dir": state.temp_dir,
        "processes": len(procs),
        "nodes": None,
        "running": False,
    }
    if procs:
        try:
            nodes = alive_nodes(state, read_token(), timeout=timeout)
            info["nodes"] = [
                {
                    "node_id": n.get("node_id"),
                    "is_head": n.get("is_head_node"),
                    "cpus": n.get("resources_total", {}).get("CPU", 0),
                }
                for n in nodes
            ]
            info["running"] = True
        except (OSError, ClusterError, ValueError, KeyError) as err:
            info["error"] = f"dashboard not answering: {err}"
    return info


def _cleanup_files(state: ClusterState) -> None:
    """Remove what `up` made: the temp dir load_state proved ours (rmtree refuses a symlink
    swapped in since), the token and the state file, never a path read from state.json alone."""
    if os.environ.get("MODRESNET_KEEP_RAY_TEMP") != "1":  # keep Ray's logs for debugging
        shutil.rmtree(state.temp_dir, ignore_errors=True)
    token_file().unlink(missing_ok=True)
    targets_file().unlink(missing_ok=True)
    state_file().unlink(missing_ok=True)


def down(quiet: bool = False, log: Callable[[str], None] = print) -> int:
    """Stop exactly this cluster's processes, by pid, holding the cluster lock."""
    with _cluster_lock():
        return _down(quiet, log)


def _down(quiet: bool, log: Callable[[str], None]) -> int:
    """Stop exactly this cluster's processes, by pid. Returns how many were stopped."""
    state = load_state()
    if state is None:
        if quiet:
            return 0
        raise ClusterError(f"no cluster in {modresnet_home()} (nothing to stop)")
    n = 0
    for _ in range(3):  # a dying raylet may still spawn a worker or two: sweep again
        procs = own_processes(state)
        if not procs:
            break
        n += kill(procs)
    left = own_processes(state)
    if left:
        raise ClusterError(f"could not stop pids {[p.pid for p in left]}")
    _cleanup_files(state)
    if not quiet:
        log(f"stopped {n} processes of the cluster in {modresnet_home()}")
    return n
