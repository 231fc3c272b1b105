"""`modresnet models promote NAME VERSION`: a canary on the live endpoint (serve/canary/
promote.py), or with --direct champion at once. Exit 0 when promoted, 1 when rolled back (the
system worked, and a script sees it), 2 for a user error. Ray, Serve and MLflow are imported
when the command runs, so `modresnet --help` stays fast."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from modresnet.cli_common import say, user_errors
from modresnet.registry.commands import RegistryUri, Storage
from modresnet.registry.gate import GATE_TOLERANCE
from serve.args import APP_NAME


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@user_errors
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to promote.")],
    canary: Annotated[
        float, typer.Option(help="First share of the requests the candidate answers, in %.")
    ] = 10,
    step: Annotated[
        float, typer.Option(help="Share added after each good window, in % (up to below 100).")
    ] = 30,
    interval: Annotated[
        float,
        typer.Option(
            help="Seconds per window of the serving metrics (Ray exports them every "
            "RAY_metrics_report_interval_ms, 10 s by default: use at least twice that)."
        ),
    ] = 20,
    watch: Annotated[
        float, typer.Option(help="Seconds of good windows, over all steps, before promotion.")
    ] = 60,
    error_margin: Annotated[
        float,
        typer.Option(
            help="Roll back when the candidate's 5xx rate exceeds the champion's by "
            "more than this (0.01: one point)."
        ),
    ] = 0.01,
    latency_margin: Annotated[
        float,
        typer.Option(
            help="Roll back when the candidate's p99 latency exceeds the champion's "
            "by more than this share (0.5: 50%)."
        ),
    ] = 0.5,
    min_requests: Annotated[
        int, typer.Option(help="A window with fewer requests for either version decides nothing.")
    ] = 20,
    tolerance: Annotated[
        float,
        typer.Option(
            help="Gate: how far below the champion's test accuracy the candidate may "
            "be (0.005: half a point)."
        ),
    ] = GATE_TOLERANCE,
    app: Annotated[str, typer.Option(help="The running Serve app.")] = APP_NAME,
    address: Annotated[
        str | None,
        typer.Option(help="The Ray cluster the app runs on (default: RAY_ADDRESS, else auto)."),
    ] = None,
    registry: RegistryUri = None,
    storage: Storage = None,
    fail_rate: Annotated[
        float,
        typer.Option(help="Rehearse a rollback: this share of the canary's batches fail (500)."),
    ] = 0.0,
    direct: Annotated[
        bool, typer.Option("--direct", help="No canary: champion at once, the app rolled over.")
    ] = False,
) -> None:
    """Serve VERSION beside the champion on a share of the live traffic, raise the share while
    its error rate and p99 latency hold, then make it champion; roll back on its own when not."""
    from modresnet.registry import open_registry
    from serve.canary.promote import plan, promote_direct
    from serve.canary.promote import promote as run_canary

    if not direct:  # a bad flag fails before anything is opened
        plan(canary, step, interval, watch, error_margin, latency_margin, min_requests, fail_rate)
    reg = open_registry(registry, storage)
    if direct:
        promote_direct(reg, name, version, app, address, say, tolerance=tolerance)
        return
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _stop) if main else None  # a stop rolls back, as Ctrl-C
    try:
        result = run_canary(
            reg,
            name,
            version,
            app=app,
            address=address,
            canary=canary,
            step=step,
            interval=interval,
            watch=watch,
            error_margin=error_margin,
            latency_margin=latency_margin,
            min_requests=min_requests,
            tolerance=tolerance,
            fail_rate=fail_rate,
            info=say,
        )
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)
    if result.outcome != "promoted":
        raise typer.Exit(1)
