"""Canary promotion on the live endpoint: `modresnet models promote NAME VERSION`.

The candidate passes the registry's gate, then is deployed beside the version the app serves
(one rolling update: every new replica holds both, each with its own backend and batcher) at
the first share of the traffic. From then on only the traffic table moves: each `interval` the
window of the serving metrics since the last decision is judged (watch.py), and a good one
raises the share by `step`, up to the last share below 100%. Once the steps are done and
`watch` seconds of good windows passed, `champion` moves to the candidate and the app is
rolled over to it alone; a bad window, too little traffic for too long, an error or Ctrl-C
rolls back instead: share 0 at once (the replicas read it within half a second), then the
champion alone again. Either way no request fails: shares change inside the replicas, and a
redeploy is Serve's rolling update.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from modresnet.errors import UserError, one_line
from modresnet.registry import (
    CANDIDATE,
    CHAMPION,
    GATE_TOLERANCE,
    ModelRef,
    Registry,
    Version,
    is_ref,
)
from serve.args import APP_NAME, ModelArgs, ServeArgs, registered
from serve.canary import watch as readings
from serve.canary.settings import CanarySettings

Outcome = Literal["promoted", "rolled_back"]
NOTE = "canary"  # the version tag that records a canary's outcome
PATIENCE_INTERVALS = 3  # undecided this many intervals (or `watch`, if longer): roll back


class PromoteError(UserError):
    """A promotion that cannot start: bad flags, no running app, nothing to compare with."""


class NoAppError(PromoteError):
    """No app of that name runs on this Ray, or modresnet did not deploy it."""


@dataclass(frozen=True)
class PromotionResult:
    outcome: Outcome
    champion: Version
    reason: str
    steps: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """A checked promotion: the shares (fractions) to climb and how to judge each window."""

    shares: tuple[float, ...]
    interval: float
    watch: float
    margins: readings.Margins
    fail_rate: float

    @property
    def patience(self) -> float:
        return max(self.watch, PATIENCE_INTERVALS * self.interval)


def plan(s: CanarySettings) -> Plan:
    """The shares canary, canary+step, ... below 100% (100% is the promotion itself)."""
    shares = []
    pct = s.canary
    while pct < 100:
        shares.append(round(pct / 100, 6))
        pct += s.step
    return Plan(
        tuple(shares),
        s.interval,
        s.watch,
        readings.Margins(s.error_margin, s.latency_margin, s.min_requests),
        s.fail_rate,
    )


# --------------------------------------------------------------------------- the running app


@dataclass
class Live:
    """The running app a promotion acts on, and how to put a version in it."""

    registry: Registry
    app: str
    route_prefix: str
    table: Any
    primary: ServeArgs  # what the app serves, resolved, without a canary
    info: Callable[[str], None]

    @property
    def champion_label(self) -> str:
        return self.primary.version

    def model(self, v: Version, fail_rate: float = 0.0) -> ModelArgs:
        """`v` as a replica loads it: fetched from the registry, with its label and lineage."""
        return ModelArgs(
            checkpoint=str(self.registry.fetch(v)), fail_rate=fail_rate, **registered(v)
        )

    def share(self, share: float, phase: str, candidate: str, reason: str = "") -> None:
        import ray

        state = {
            "phase": phase,
            "candidate": candidate,
            "champion": self.champion_label,
            "since": time.time(),
            "reason": reason,
        }
        ray.get(self.table.set_share.remote(self.app, share, state), timeout=30)

    def alone(self, model: ModelArgs) -> ServeArgs:
        """The app's settings serving `model` alone."""
        update = {"checkpoint": model.checkpoint, "version": model.version}
        return self.primary.model_copy(update={**update, "lineage": model.lineage})

    def deploy(self, args: ServeArgs) -> None:
        from serve.launch import deploy

        deploy(args, name=self.app, route_prefix=self.route_prefix)

    def urls(self) -> list[str]:
        import ray

        return readings.endpoints(ray.nodes())


def connect_ray(address: str | None) -> None:
    """Join the Ray the app runs on (`--address`, else RAY_ADDRESS, else the local `ray
    start` one); never start one: an embedded Ray would serve no app."""
    from jobs.runtime import connect

    connect(address or "auto")


def live_app(
    registry: Registry,
    name: str,
    app: str,
    route_prefix: str | None,
    info: Callable[[str], None],
) -> Live:
    """The app `app` as its last deploy left it (the traffic table), refusing one that does
    not run or does not serve a registered version of `name`."""
    import ray
    from ray import serve

    from serve.canary.traffic import traffic_table

    start = f"start it with `modresnet serve models:/{name}@champion --address ...` first"
    status = serve.status().applications.get(app)
    if status is None or status.status != "RUNNING":
        state = "does not run" if status is None else f"is {status.status}"
        raise NoAppError(f"the Serve app {app!r} {state} on this Ray; {start}")
    table = traffic_table()
    stored = ray.get(table.get_args.remote(app), timeout=30)
    if stored is None:
        raise NoAppError(f"the Serve app {app!r} was not deployed by modresnet; {start}")
    args = ServeArgs.model_validate(stored)
    route_prefix = route_prefix or ray.get(table.get_route.remote(app), timeout=30) or "/"
    if args.canary is not None:
        info(f"replacing the canary {args.canary.version or args.canary.checkpoint} left running")
    primary = args.model_copy(update={"canary": None, "canary_share": 0.0})
    if is_ref(primary.checkpoint):  # deployed by reference: what it names now
        v = registry.get(primary.checkpoint)
        fetched = {"checkpoint": str(registry.fetch(v)), **registered(v)}
        primary = primary.model_copy(update=fetched)
    if not primary.version.startswith(f"{name}/"):
        served = primary.version or primary.checkpoint
        raise PromoteError(
            f"the Serve app {app!r} serves {served}, not a registered version of {name}; {start}"
        )
    return Live(registry, app, route_prefix, table, primary, info)


# --------------------------------------------------------------------------- promotion


def promote(
    registry: Registry,
    name: str,
    version: str,
    *,
    app: str = APP_NAME,
    address: str | None = None,
    settings: CanarySettings | None = None,
    tolerance: float = GATE_TOLERANCE,
    route_prefix: str | None = None,
    info: Callable[[str], None] = print,
) -> PromotionResult:
    """Serve `version` beside the champion in the running app, climb the shares while the
    metrics hold, then promote it, or roll back on their first bad window."""
    p = plan(settings or CanarySettings())
    candidate = registry.get(ModelRef(name, version=version))
    champion = registry.gate(name, version, tolerance)
    if champion is None:
        raise PromoteError(
            f"{name} has no champion to compare {candidate.label} with; make it champion "
            f"directly with `modresnet models promote {name} {version} --direct`"
        )
    if champion.version == candidate.version:
        raise PromoteError(f"{candidate.label} is already the champion of {name}")
    info(f"gate: {_scored(candidate)} vs champion {_scored(champion)}: passes")
    connect_ray(address)
    live = live_app(registry, name, app, route_prefix, info)
    registry.set_alias(name, version, CANDIDATE, tolerance=tolerance, reason="canary promotion")
    steps: list[dict[str, Any]] = []
    try:
        outcome, reason = _canary(live, candidate, p, steps)
    except KeyboardInterrupt:
        outcome, reason = "rolled_back", "interrupted (Ctrl-C)"
    except BaseException as err:
        _roll_back_after(live, candidate, err)
        raise
    with _shielded():
        if outcome == "promoted":
            _promote(live, candidate, reason)
        else:
            _roll_back(live, candidate, reason)
    now = registry.get(ModelRef(name, alias=CHAMPION))
    info(f"{outcome.replace('_', ' ')}: {reason}; champion is {now.label}")
    return PromotionResult(outcome, now, reason, steps)


def _canary(
    live: Live, candidate: Version, p: Plan, steps: list[dict[str, Any]]
) -> tuple[Outcome, str]:
    """Deploy the canary, then judge a window every interval; the outcome and why. An
    undecided window (too few requests) grows into the next one."""
    champ, cand = live.champion_label, candidate.label
    level = 0
    live.share(p.shares[0], "canary", cand)  # before the deploy: new replicas read it first
    live.info(
        f"deploying {cand} beside {champ} at {_pct(p.shares[0])} of the traffic (then "
        f"{', '.join(_pct(s) for s in p.shares[1:]) or 'no more steps'}); a window every "
        f"{p.interval:g} s, promotion after {p.watch:g} s of good ones"
    )
    canary_args = live.model(candidate, p.fail_rate)
    live.deploy(
        live.primary.model_copy(update={"canary": canary_args, "canary_share": p.shares[0]})
    )
    base, _ = readings.scrape(live.urls())
    started = base_at = time.monotonic()
    base_wall = time.time()
    good, ticks = 0.0, 0
    while True:
        ticks += 1
        time.sleep(max(0.0, started + ticks * p.interval - time.monotonic()))
        snap, missing = readings.scrape(live.urls())
        now = time.monotonic()
        window = readings.delta(base, snap)
        a, b = readings.stats(window, live.app, champ), readings.stats(window, live.app, cand)
        verdict = readings.verdict(a, b, p.margins)
        if missing and verdict.ok is not False:
            verdict = readings.Verdict(None, f"waiting: no metrics from {', '.join(missing)}")
        share = p.shares[level]
        steps.append(
            {
                "share": share,
                "start": base_wall,
                "end": time.time(),
                "champion": asdict(a),
                "candidate": asdict(b),
                "ok": verdict.ok,
                "reason": verdict.reason,
            }
        )
        judged = good + (now - base_at if verdict.ok else 0.0)
        live.info(
            f"{now - started:4.0f} s  canary {_pct(share):>4}  {champ}: {a.line()} | {cand}: "
            f"{b.line()}  {verdict.reason} ({judged:.0f}/{p.watch:g} s good)"
        )
        if verdict.ok is False:
            return "rolled_back", verdict.reason
        if verdict.ok is None:
            if now - base_at > p.patience:
                return "rolled_back", (
                    f"not enough traffic to judge it in {now - base_at:.0f} s "
                    f"({verdict.reason.removeprefix('waiting: ')}); send traffic, lower "
                    f"--min-requests or raise --canary"
                )
            continue
        good, base, base_at, base_wall = judged, snap, now, time.time()
        if level + 1 < len(p.shares):
            level += 1
            live.share(p.shares[level], "canary", cand)
        elif good >= p.watch:
            return "promoted", f"{good:.0f} s of good windows up to {_pct(share)} of the traffic"


def _promote(live: Live, candidate: Version, reason: str) -> None:
    """Every request to the candidate, champion moved, then the candidate alone."""
    reg, name = live.registry, candidate.name
    live.share(1.0, "promoted", candidate.label, reason)
    reg.set_alias(name, candidate.version, CHAMPION, reason=f"canary promotion: {reason}")
    reg.delete_alias(name, CANDIDATE, reason="promoted to champion")
    reg.note(name, candidate.version, NOTE, f"promoted {_now()}: {reason}")
    live.info(f"rolling {live.app} over to {candidate.label} alone")
    live.deploy(live.alone(live.model(candidate)))


def _roll_back(live: Live, candidate: Version, reason: str) -> None:
    """Share 0 at once, then the champion alone; the candidate alias goes, the reason stays."""
    live.share(0.0, "rolled_back", candidate.label, reason)
    live.info(
        f"rolling back: no new request goes to {candidate.label}; redeploying "
        f"{live.champion_label} alone"
    )
    live.deploy(live.primary)
    reg, name = live.registry, candidate.name
    reg.delete_alias(name, CANDIDATE, reason=f"canary rolled back: {reason}")
    reg.note(name, candidate.version, NOTE, f"rolled back {_now()}: {reason}")


def _roll_back_after(live: Live, candidate: Version, err: BaseException) -> None:
    """The rollback after the promotion itself failed; if that fails too, one line saying
    what may be left and how to clear it."""
    try:
        with _shielded():
            _roll_back(live, candidate, f"the promotion failed: {one_line(err)}")
    except Exception as second:  # noqa: BLE001 - reported with the first error
        raise PromoteError(
            f"the promotion failed ({one_line(err)}) and so did its rollback "
            f"({one_line(second)}): {live.app} may still send a share to {candidate.label}; "
            f"serve the champion alone with `modresnet serve models:/{candidate.name}@champion "
            f"--address ...`"
        ) from err


def promote_direct(
    registry: Registry,
    name: str,
    version: str,
    app: str = APP_NAME,
    address: str | None = None,
    info: Callable[[str], None] = print,
    *,
    tolerance: float = GATE_TOLERANCE,
    route_prefix: str | None = None,
) -> PromotionResult:
    """No canary: the gate, `champion` to `version`, then the running app (if one runs)
    rolled over to it alone."""
    from jobs.runtime import RayConnectError

    candidate = registry.get(ModelRef(name, version=version))
    champion = registry.gate(name, version, tolerance)
    if champion is not None:
        info(f"gate: {_scored(candidate)} vs champion {_scored(champion)}: passes")
    live, why = None, ""
    try:
        connect_ray(address)
        live = live_app(registry, name, app, route_prefix, info)
    except (RayConnectError, NoAppError) as err:
        if address:
            raise
        why = f"; nothing rolled over ({err})"
    now = registry.set_alias(name, version, CHAMPION, reason="direct promotion")
    if CANDIDATE in now.aliases:
        registry.delete_alias(name, CANDIDATE, reason="direct promotion")
    if live is not None:
        info(f"rolling {app} over from {live.champion_label} to {now.label}")
        with _shielded():
            live.deploy(live.alone(live.model(now)))
    info(f"promoted: champion is {now.label}{why}")
    return PromotionResult("promoted", now, "direct promotion" + why)


# --------------------------------------------------------------------------- helpers


@contextmanager
def _shielded() -> Iterator[None]:
    """Ctrl-C is ignored for the block (in the main thread): a rollback or the final
    redeploy runs to its end instead of leaving the app between two states."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _scored(v: Version) -> str:
    acc = "no test accuracy" if v.test_acc is None else f"test acc {100 * v.test_acc:.2f}%"
    return f"{v.label} ({acc} on {v.test_n} images)"


def _pct(share: float) -> str:
    return f"{100 * share:g}%"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
