"""The console of `modresnet tune`: one compact table of the trials that updates in place.

Columns: trial, status, epoch, validation accuracy (last and best), then the sampled values
that differ between trials, most telling first, as many as fit the console (leaderboard.csv
has all of them). Ray Tune's own reporter is off (`RunConfig(verbose=0)`) unless the user
asks for it with `modresnet tune --verbose`.

`ProgressCallback` is a Ray Tune callback that the Tuner pickles with its RunConfig (a
resumed search unpickles it), so it holds no state: it forwards the driver's trial list to
the `TrialTable` that is open in this process, if any. On a terminal the table is a rich
Live display; elsewhere (a log file, CI) each trial prints one line when it ends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from jobs.tune.job import TuneJob
from jobs.tune.space import applicable, flatten

if TYPE_CHECKING:
    from rich.live import Live

# Sampled fields in the order a reader wants them; the rest follow in the space's order.
PRIORITY = (
    "optim.name",
    "optim.lr",
    "train.batch_size",
    "schedule.name",
    "optim.weight_decay",
    "train.label_smoothing",
    "optim.momentum",
    "optim.nesterov",
    "optim.betas",
)
FIXED_WIDTH = 60  # the trial/status/epoch/accuracy columns and the table's borders

_active: TrialTable | None = None


# --------------------------------------------------------------------------- values


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "/".join(fmt(v) for v in value)
    return str(value)


def short_names(keys: list[str]) -> dict[str, str]:
    """`optim.lr` -> `lr`; a field name two sections share is shown by its section
    (`optim.name` -> `optim`, `schedule.name` -> `schedule`)."""
    fields = [k.split(".", 1)[1] for k in keys]
    return {
        k: f if fields.count(f) == 1 else k.split(".", 1)[0]
        for k, f in zip(keys, fields, strict=True)
    }


def ordered(keys, order: list[str]) -> list[str]:
    """Most telling first (PRIORITY), then in the search space's order."""
    return sorted(
        set(keys),
        key=lambda k: (
            PRIORITY.index(k) if k in PRIORITY else len(PRIORITY),
            order.index(k) if k in order else len(order),
            k,
        ),
    )


def value_columns(
    rows: list[dict[str, Any]], order: list[str], width: int | None, fixed: int = FIXED_WIDTH
) -> tuple[list[str], int, dict[str, str]]:
    """The keys whose values differ between `rows`, most telling first, as many as fit in
    `width` characters besides `fixed` ones (all of them when width is None); how many
    differing keys did not fit; and the column name of each key."""
    keys = ordered((k for r in rows for k in r), order)
    varied = [k for k in keys if len({json.dumps(r.get(k), default=str) for r in rows}) > 1]
    names = short_names(ordered(list(order) + keys, order))
    if width is None:
        return varied, 0, names
    used, shown = fixed, []
    for key in varied:
        cell = max([len(names[key])] + [len(fmt(r[key])) for r in rows if key in r]) + 3
        if used + cell > width:
            break
        shown.append(key)
        used += cell
    return shown, len(varied) - len(shown), names


# --------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialState:
    trial_id: str
    status: str  # pending | running | done | stopped (ASHA) | error | paused
    epoch: int
    val_acc: float | None
    best_val_acc: float | None
    values: dict[str, Any]


def _status(ray_status: str, epoch: int, max_epochs: int) -> str:
    if ray_status == "TERMINATED":
        return "done" if epoch >= max_epochs else "stopped (ASHA)"
    return {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "ERROR": "error"}.get(
        ray_status, ray_status.lower()
    )


# --------------------------------------------------------------------------- the table


class TrialTable:
    """The open progress display of this process (a context manager around `tuner.fit()`)."""

    def __init__(self, job: TuneJob, console=None, enabled: bool = True) -> None:
        self.tuned = job.search_space().tuned_keys()
        self.names = short_names(ordered(self.tuned, self.tuned))
        self.base_optimizer = job.base.optim.name
        self.max_epochs = job.max_epochs
        self.samples = job.samples
        self.metric = job.metric
        self.label = f"{job.search} + {job.scheduler.upper()}"
        self.enabled = enabled
        self.console = console
        self.live: Live | None = None
        self.best: dict[str, float] = {}
        self.announced: set[str] = set()
        self.last: tuple | None = None

    def __enter__(self) -> TrialTable:
        global _active
        if not self.enabled:
            return self
        if self.console is None:
            from rich.console import Console

            self.console = Console()
        if self.console.is_terminal:
            from rich.live import Live

            live = Live(self.render([]), console=self.console, refresh_per_second=4, transient=True)
            live.start()
            self.live = live
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if _active is self:
            _active = None
        if self.live is not None:
            self.live.stop()
            self.live = None

    # called from ProgressCallback, on Tune's driver thread
    def update(self, trials: list) -> None:
        states = [self._state(t) for t in trials]
        key = tuple((s.trial_id, s.status, s.epoch, s.val_acc) for s in states)
        if key == self.last:
            return
        self.last = key
        if self.live is not None:
            self.live.update(self.render(states))
            return
        for s in states:  # not a terminal: one line per trial when it ends
            if s.status in ("done", "stopped (ASHA)", "error") and s.trial_id not in self.announced:
                self.announced.add(s.trial_id)
                self.console.print(self._line(s), highlight=False, soft_wrap=True)

    def _state(self, trial) -> TrialState:
        result = trial.last_result or {}
        epoch = int(result.get("epoch") or 0)
        val = result.get("val_acc")
        try:  # Tune's running max, restored with the trial on --resume
            seen = trial.metric_analysis["val_acc"]["max"]
        except (AttributeError, KeyError, TypeError):
            seen = None
        for v in (val, seen):
            if v is not None:
                self.best[trial.trial_id] = max(v, self.best.get(trial.trial_id, v))
        values = {k: v for k, v in flatten(trial.config).items() if k in self.tuned}
        return TrialState(
            trial.trial_id,
            _status(trial.status, epoch, self.max_epochs),
            epoch,
            val,
            self.best.get(trial.trial_id),
            applicable(values, self.base_optimizer),
        )

    def _line(self, s: TrialState) -> str:
        acc = f"best val {100 * s.best_val_acc:.1f}%" if s.best_val_acc is not None else "no result"
        values = "  ".join(
            f"{self.names.get(k, k)}={fmt(s.values[k])}" for k in PRIORITY[:4] if k in s.values
        )
        return (
            f"trial {s.trial_id} {s.status}: epoch {s.epoch}/{self.max_epochs}, {acc}"
            f"{'  (' + values + ')' if values else ''}"
        )

    def render(self, states: list[TrialState]):
        from rich.table import Table

        width = self.console.width if self.console is not None else None
        keys, hidden, names = value_columns([s.values for s in states], self.tuned, width)
        finished = sum(s.status in ("done", "stopped (ASHA)", "error") for s in states)
        title = (
            f"Ray Tune ({self.label}): {finished}/{self.samples} trials finished, "
            f"max {self.max_epochs} epochs"
        )
        caption = (
            f"+{hidden} more sampled values: leaderboard.csv at the end, or --verbose"
            if hidden
            else None
        )
        table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
        table.add_column("trial", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("epoch", justify="right", no_wrap=True)
        table.add_column("val acc", justify="right", no_wrap=True)
        table.add_column("best", justify="right", no_wrap=True)
        for key in keys:
            table.add_column(names[key], justify="right", no_wrap=True)
        for s in states:
            table.add_row(
                s.trial_id,
                s.status,
                f"{s.epoch}/{self.max_epochs}",
                f"{100 * s.val_acc:.1f}%" if s.val_acc is not None else "-",
                f"{100 * s.best_val_acc:.1f}%" if s.best_val_acc is not None else "-",
                *[fmt(s.values[k]) if k in s.values else "-" for k in keys],
            )
        return table


class ProgressCallback(Callback):
    """Forwards Tune's trial list to this process's open TrialTable (see the module doc)."""

    def _publish(self, trials) -> None:
        if _active is not None and trials is not None:
            _active.update(list(trials))

    def on_step_end(self, iteration, trials, **info):
        self._publish(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._publish(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._publish(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._publish(trials)

    def on_experiment_end(self, trials, **info):
        self._publish(trials)
