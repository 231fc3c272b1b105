"""`modresnet jobs ...` (run train | tune | serve on a Ray cluster through the Jobs API,
jobs/submit.py) and `modresnet cluster ...` (a real multi-node Ray on this machine,
jobs/cluster.py). Both are imported only when their command runs."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from modresnet.cli_common import console, err_console, user_errors
from modresnet.errors import UserError

jobs_app = typer.Typer(
    no_args_is_help=True, help="Run train | tune | serve on a Ray cluster through the Jobs API."
)
cluster_app = typer.Typer(
    no_args_is_help=True, help="A real multi-node Ray cluster on this machine (token auth on)."
)

JobsAddress = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Jobs API http://HEAD:8265 (else $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, "
        "or the `modresnet cluster up` cluster).",
    ),
]
JobId = Annotated[str, typer.Argument(help="Submission id (see `modresnet jobs list`).")]
InsecureToken = Annotated[
    bool,
    typer.Option(
        "--insecure-token",
        help="Send the cluster token over plain http to a non-loopback address "
        "(only on a network you trust; prefer https or an SSH tunnel).",
    ),
]


def _exit_for(status: str) -> None:
    from jobs.submit import EXIT_CODES

    code = EXIT_CODES.get(status, 1)
    if code:
        raise typer.Exit(code)


def _check_passthrough(ctx: typer.Context, command: str, args: list[str]) -> None:
    """Parse the pass-through args with the local command's own options, so a typo fails here
    in a second instead of on the cluster."""
    cmd = getattr(ctx.find_root().command, "commands", {}).get(command)
    if cmd is None:
        raise UserError(f"this modresnet has no `{command}` command to submit")
    try:
        cmd.make_context(command, list(args), resilient_parsing=False)
    except Exception as err:  # click's UsageError, or typer's vendored copy of it
        if not any(c.__name__ == "UsageError" for c in type(err).__mro__):
            raise
        raise UserError(f"{command}: {err}") from None  # its message, as click formats it


@jobs_app.command(
    "submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
@user_errors
def jobs_submit(
    ctx: typer.Context,
    command: Annotated[
        str, typer.Argument(help="train | tune | serve; every further option goes to it.")
    ],
    address: JobsAddress = None,
    submission_id: Annotated[str | None, typer.Option(help="Job id (default: generated).")] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="Extra NAME=VALUE for the job (no secrets); repeatable."),
    ] = None,
    entrypoint_num_cpus: Annotated[
        float | None,
        typer.Option(help="CPUs reserved for the driver (lets it run on a worker node)."),
    ] = None,
    insecure_token: InsecureToken = False,
) -> None:
    """Submit `modresnet COMMAND [OPTIONS]` as a Ray job; the last output line is its id.

    Example: modresnet jobs submit train --preset debug --epochs 2 --address http://127.0.0.1:8265
    (put `--` before COMMAND if it has an option also called --address or --env).
    """
    from jobs import submit as jobs_submit_mod

    if command not in jobs_submit_mod.COMMANDS:
        raise UserError(
            f"unknown command {command!r}: choose one of {', '.join(jobs_submit_mod.COMMANDS)}"
        )
    args = list(ctx.args)
    _check_passthrough(ctx, command, args)
    extra_env = jobs_submit_mod.parse_env(env)
    addr = jobs_submit_mod.resolve_address(address)
    job_id = jobs_submit_mod.submit(
        command,
        args,
        address=addr,
        submission_id=submission_id,
        env=extra_env,
        entrypoint_num_cpus=entrypoint_num_cpus,
        insecure_token=insecure_token,
    )
    err_console.print(
        f"submitted `modresnet {command}` to {addr}; follow it with: "
        f"modresnet jobs logs {job_id} --follow",
        highlight=False,
        soft_wrap=True,
    )
    print(job_id, flush=True)


@jobs_app.command("list")
@user_errors
def jobs_list(address: JobsAddress = None, insecure_token: InsecureToken = False) -> None:
    """Jobs on the cluster, oldest first."""
    from jobs import submit as jobs_submit_mod

    table = Table()
    for col in ("submission id", "status", "started", "entrypoint"):
        table.add_column(col)
    for job in jobs_submit_mod.list_jobs(address, insecure_token):
        started = (
            datetime.fromtimestamp(job.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if job.start_time
            else "-"
        )
        table.add_row(
            job.submission_id or job.job_id or "-", str(job.status), started, job.entrypoint
        )
    console.print(table)


@jobs_app.command("status")
@user_errors
def jobs_status(
    job_id: JobId, address: JobsAddress = None, insecure_token: InsecureToken = False
) -> None:
    """Print a job's status. Exit 0: PENDING/RUNNING/SUCCEEDED, 1: FAILED/STOPPED."""
    from jobs import submit as jobs_submit_mod

    info = jobs_submit_mod.job_info(job_id, address, insecure_token)
    status = str(info.status)
    line = f"{job_id}: {status}"
    if info.message:
        line += f"  ({info.message})"
    if info.driver_exit_code is not None:
        line += f"  driver exit code {info.driver_exit_code}"
    print(line)
    _exit_for(status)


@jobs_app.command("logs")
@user_errors
def jobs_logs(
    job_id: JobId,
    address: JobsAddress = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream until the job ends.")
    ] = False,
    insecure_token: InsecureToken = False,
) -> None:
    """Print a job's logs. Exit code as for `jobs status` (after --follow: the final status)."""
    from jobs import submit as jobs_submit_mod

    status = jobs_submit_mod.logs(job_id, address, follow=follow, insecure_token=insecure_token)
    if follow:
        err_console.print(f"job {job_id}: {status}", highlight=False)
    _exit_for(status)


@jobs_app.command("stop")
@user_errors
def jobs_stop(
    job_id: JobId, address: JobsAddress = None, insecure_token: InsecureToken = False
) -> None:
    """Stop a job and wait until it is stopped. Exit 0 once it is no longer running."""
    from jobs import submit as jobs_submit_mod

    status = jobs_submit_mod.stop(job_id, address, insecure_token=insecure_token)
    print(f"{job_id}: {status}")
    if status not in jobs_submit_mod.TERMINAL:
        raise typer.Exit(1)


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
    from jobs import cluster as local_cluster

    state = local_cluster.up(
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
    from jobs import cluster as local_cluster

    info = local_cluster.status()
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
    from jobs import cluster as local_cluster

    local_cluster.down(log=lambda line: err_console.print(line, highlight=False))
