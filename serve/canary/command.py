"""`modresnet models promote NAME VERSION`: a canary on the live endpoint (serve/canary/
promote.py), or with --direct champion at once. Exit 0 when promoted, 1 when rolled back (the
system worked, and a script sees it), 2 for a user error. Ray, Serve and MLflow are imported
when the command runs, so `modresnet --help` stays fast."""

from __future__ import annotations

import signal
import threading
from typing import Annotated, Any

import typer

from modresnet.cli_common import say, user_errors
from modresnet.cli_config import setting_flags, with_flags
from modresnet.registry.commands import RegistryUri, Storage
from modresnet.registry.gate import GATE_TOLERANCE
from serve.args import APP_NAME
from serve.canary.settings import CanarySettings


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@user_errors
@with_flags(setting_flags(CanarySettings, {}), into="given", after="version")
def promote(
    given: dict[str, Any],
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version to promote.")],
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
    direct: Annotated[
        bool, typer.Option("--direct", help="No canary: champion at once, the app rolled over.")
    ] = False,
) -> None:
    """Serve VERSION beside the champion on a share of the live traffic, raise the share while
    its error rate and p99 latency hold, then make it champion; roll back on its own when not."""
    from modresnet.registry import open_registry
    from serve.canary.promote import promote as run_canary
    from serve.canary.promote import promote_direct

    settings = CanarySettings(**given)  # a bad flag fails before anything is opened
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
            settings=settings,
            tolerance=tolerance,
            info=say,
        )
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)
    if result.outcome != "promoted":
        raise typer.Exit(1)
