"""`modresnet jobs ...`: run train | tune | serve | pipeline on a Ray cluster through the Jobs API
(submit.py, imported only when a command runs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from modresnet.cli_common import console, err_console, user_errors
from modresnet.errors import UserError

jobs_app = typer.Typer(
    no_args_is_help=True,
    help="Run train | tune | serve | pipeline on a Ray cluster through the Jobs API.",
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
    from jobs.client.submit import EXIT_CODES

    code = EXIT_CODES.get(status, 1)
    if code:
        raise typer.Exit(code)


def _check_passthrough(ctx: typer.Context, command: str, args: list[str]) -> None:
    """Parse the pass-through args with the local command's own options, so a typo fails here
    in a second instead of on the cluster; for a command group (`pipeline run ...`), down to
    the subcommand's own options."""
    cmd = getattr(ctx.find_root().command, "commands", {}).get(command)
    if cmd is None:
        raise UserError(f"this modresnet has no `{command}` command to submit")
    name, rest, parent, where = command, list(args), None, command
    try:
        while True:
            parsed = cmd.make_context(name, rest, parent=parent, resilient_parsing=False)
            if not hasattr(cmd, "resolve_command"):
                return
            rest = [*parsed._protected_args, *parsed.args]
            if not rest:
                return  # the group's own help, as it answers locally
            sub_name, sub, rest = cmd.resolve_command(parsed, rest)
            name, cmd, parent = sub_name or name, sub, parsed
            where = f"{where} {name}"
    except Exception as err:  # click's UsageError, or typer's vendored copy of it
        if not any(c.__name__ == "UsageError" for c in type(err).__mro__):
            raise
        raise UserError(f"{where}: {err}") from None  # its message, as click formats it


@jobs_app.command(
    "submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
@user_errors
def jobs_submit(
    ctx: typer.Context,
    command: Annotated[
        str,
        typer.Argument(help="train | tune | serve | pipeline; every further option goes to it."),
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
    from jobs.client import submit as jobs_submit_mod

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
    from jobs.client import submit as jobs_submit_mod

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
    from jobs.client import submit as jobs_submit_mod

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
    from jobs.client import submit as jobs_submit_mod

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
    from jobs.client import submit as jobs_submit_mod

    status = jobs_submit_mod.stop(job_id, address, insecure_token=insecure_token)
    print(f"{job_id}: {status}")
    if status not in jobs_submit_mod.TERMINAL:
        raise typer.Exit(1)
