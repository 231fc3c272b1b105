"""`modresnet cluster up|status|down`: a real multi-node Ray on this machine (lifecycle.py,
imported only when a command runs)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from modresnet.cli_common import err_console, user_errors

cluster_app = typer.Typer(
    no_args_is_help=True, help="A real multi-node Ray cluster on this machine (token auth on)."
)


@cluster_app.command("up")
@user_errors
def cluster_up(
    workers: Annotated[int, typer.Option(help="Worker raylets (nodes) besides the head.")] = 2,
    cpus_per_node: Annotated[float, typer.Option(help="Logical CPUs of each worker node.")] = 1.0,
    head_cpus: Annotated[
        float, typer.Option(help="Logical CPUs of the head (0 keeps work off it).")
    ] = 0.0,
    object_store_mb: Annotated[int, typer.Option(help="Object store per node, MiB.")] = 256,
) -> None:
    """Start head + N worker raylets on loopback with token auth; print the client's exports.

    eval "$(modresnet cluster up)" sets RAY_ADDRESS, RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH.
    """
    from jobs.cluster import lifecycle

    state = lifecycle.up(
        workers=workers,
        cpus_per_node=cpus_per_node,
        head_cpus=head_cpus,
        object_store_mb=object_store_mb,
        log=lambda line: err_console.print(line, highlight=False),
    )
    for name, value in state.exports().items():
        print(f"export {name}={value}")
    sys.stdout.flush()


@cluster_app.command("status")
@user_errors
def cluster_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The local cluster's addresses, nodes and processes. Exit 0 running, 1 not."""
    from jobs.cluster import lifecycle

    info = lifecycle.status()
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        state = "running" if info["running"] else "NOT running"
        print(
            f"{state}: Jobs API {info['jobs_address']}, "
            f"GCS {info['gcs_address']}, {info['processes']} processes"
        )
        for node in info["nodes"] or []:
            print(
                f"  {'head  ' if node['is_head'] else 'worker'} {node['node_id'][:12]}  "
                f"{node['cpus']:g} CPU"
            )
        if info.get("error"):
            print(f"  {info['error']}")
        print(f"  token: {info['token_path']}  temp dir: {info['temp_dir']}")
    if not info["running"]:
        raise typer.Exit(1)


@cluster_app.command("down")
@user_errors
def cluster_down() -> None:
    """Stop exactly the processes `cluster up` started (by pid; never `ray stop`)."""
    from jobs.cluster import lifecycle

    lifecycle.down(log=lambda line: err_console.print(line, highlight=False))
