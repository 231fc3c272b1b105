"""The traffic table of the Serve apps: one detached named Ray actor holding, per app, the
ServeArgs it was last deployed with and the live share of requests its canary answers.

`deploy` (serve/launch.py) puts the args, so a promotion knows what the running app serves;
the promotion driver sets the share; each replica serving a canary reads it every
`POLL_S` in the background (serve/service.py), so a share change reaches every replica within
that, with no redeploy and no request failing. The actor holds no CPU and outlives the
process that created it (Serve's own controller outlives it the same way)."""

from __future__ import annotations

from typing import Any

import ray

NAME = "modresnet-traffic"
NAMESPACE = "modresnet"
POLL_S = 0.5
PHASES = ("canary", "promoted", "rolled_back")


class TrafficTable:
    """Per app name: its deploy args and route prefix, and (share, state) of its canary."""

    def __init__(self) -> None:
        self._args: dict[str, dict[str, Any]] = {}
        self._routes: dict[str, str] = {}
        self._shares: dict[str, tuple[float, dict[str, Any]]] = {}

    def put_args(self, app: str, args: dict[str, Any], route_prefix: str = "/") -> None:
        self._args[app] = args
        self._routes[app] = route_prefix

    def get_args(self, app: str) -> dict[str, Any] | None:
        return self._args.get(app)

    def get_route(self, app: str) -> str | None:
        """The route prefix `app` was last deployed at (None: not deployed through here)."""
        return self._routes.get(app)

    def set_share(self, app: str, share: float, state: dict[str, Any]) -> None:
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in 0..1; got {share}")
        self._shares[app] = (float(share), dict(state))

    def get_share(self, app: str) -> tuple[float | None, dict[str, Any]]:
        """(share, state), or (None, {}) when no promotion has set one for `app`."""
        return self._shares.get(app, (None, {}))


def traffic_table(create: bool = True) -> Any:
    """The handle of the table on the Ray this process is connected to (created if `create`
    and missing). Without `create`, a missing table raises ValueError."""
    if not create:
        return ray.get_actor(NAME, namespace=NAMESPACE)
    actor: Any = ray.remote(TrafficTable)
    return actor.options(
        name=NAME, namespace=NAMESPACE, lifetime="detached", num_cpus=0, get_if_exists=True
    ).remote()
