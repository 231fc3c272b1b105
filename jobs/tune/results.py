"""What a finished search leaves behind: the leaderboard (console and CSV), the per-trial
validation curves with ASHA's stops or PBT's exploits, the best config as YAML and the
best trial exported as a core run directory, evaluated once on the test set."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jobs.ray_private import result_grid_trials
from jobs.tune.job import TuneJob
from jobs.tune.space import applicable, flatten, trial_config
from modresnet import checkpoint, files
from modresnet.config import Config
from modresnet.data import load_cifar10
from modresnet.errors import UserError
from modresnet.evaluation import finalize
from modresnet.rundir import RunDir, write_run_dir

BEST_RUN = "best-run"


@dataclass
class TrialRow:
    trial_id: str
    status: str
    config: Config
    values: dict[str, Any]
    history: list[dict]
    best_metric: float
    best_val_acc: float
    epochs: int
    stopped_early: bool
    trained: int  # epochs this trial trained (its reports; a PBT clone starts mid-way)
    exploits: list[int]  # indices into `reported` of PBT exploits
    reported: list[dict]  # the trial's own results in order (epochs may repeat after a clone)
    latest: Path | None
    best: Path | None
    path: str


@dataclass
class TuneOutcome:
    path: Path
    rows: list[TrialRow]
    interrupted: bool
    best: TrialRow | None = None
    test: dict | None = None
    files: dict[str, Path] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # trial id -> its error's last line
    trials: int = 0

    def failure(self) -> str | None:
        """One line when trials failed: how many, and the first one's error (a missing data set
        on a node, say), so that the user reads the cause rather than a trial's traceback."""
        if not self.errors:
            return None
        trial, line = next(iter(self.errors.items()))
        return f"{len(self.errors)} of {self.trials} trials failed; trial {trial}: {line}"

    @property
    def all_failed(self) -> bool:
        """No trial has a result and some failed: the search failed, resuming it cannot help."""
        return bool(self.errors) and not self.rows and not self.interrupted


def sync_wandb_dirs(grid) -> None:
    """Copy each trial's W&B files from Ray's local trial folder to the experiment folder.
    Tune syncs a trial folder when the trial ends, which is before its W&B logging actor has
    written the last records; the callback has waited for every actor by the time fit returns."""
    for trial in result_grid_trials(grid):
        src, dst = Path(trial.local_path) / "wandb", Path(trial.path) / "wandb"
        if src.is_dir() and src.resolve() != dst.resolve():
            shutil.copytree(
                src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("latest-run")
            )


def _trials(grid) -> dict[str, tuple[str, str]]:
    """(trial id, status) by trial folder. A result's own metrics can name another trial:
    one PBT cloned carries the donor's until it reports."""
    return {str(t.path): (t.trial_id, t.status) for t in result_grid_trials(grid)}


def _checkpoint_dirs(result, job: TuneJob) -> tuple[Path | None, Path | None]:
    """(latest, best) checkpoint folders of a trial, from Tune or its nested Train run."""
    latest = result.checkpoint
    best = result.get_best_checkpoint(job.metric, job.mode) if result.best_checkpoints else None
    if latest is None and result.metrics and result.metrics.get("checkpoint_path"):
        import ray.train

        train_path = Path(job.train_storage) / f"train-{result.metrics['trial_id']}"
        try:
            train_result = ray.train.Result.from_path(str(train_path))
        except Exception:  # noqa: BLE001 - no usable Train run: the trial is reported without files
            return None, None
        latest = train_result.checkpoint
        best = train_result.get_best_checkpoint(job.metric, job.mode)
    latest_path, best_path = _local_dir(latest), _local_dir(best)
    return latest_path, best_path or latest_path


def _local_dir(ckpt) -> Path | None:
    """A checkpoint's folder on this machine: downloaded first when Tune's storage is an
    object store (--storage s3://...)."""
    import pyarrow.fs as pafs

    if ckpt is None:
        return None
    if isinstance(ckpt.filesystem, pafs.LocalFileSystem):
        return Path(ckpt.path)
    import atexit
    import tempfile

    local = tempfile.mkdtemp(prefix="modresnet-tune-ckpt-")
    atexit.register(shutil.rmtree, local, True)  # a copy for this process's export only
    return Path(ckpt.to_directory(local))


def _reported(result) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or "epoch" not in df:
        return []
    return df.to_dict("records")


def _history(reported: list[dict], latest: Path | None) -> list[dict]:
    """The epochs behind the trial's latest weights (after a PBT clone: the donor's first)."""
    if latest is not None and checkpoint.has_training_state(latest):
        return checkpoint.training_history(latest)
    last: dict[int, dict] = {int(r["epoch"]): r for r in reported}
    return [last[e] for e in sorted(last)]


def _last_line(err: BaseException) -> str:
    """The raised exception's own line: the last of a Ray error's text (its traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(err).__name__


def collect(grid, job: TuneJob) -> tuple[list[TrialRow], bool, dict[str, str]]:
    """The trials' rows (best first), whether the search was interrupted, and the error line
    of each trial that failed."""
    base, space = job.base, job.search_space()
    trials = _trials(grid)
    rows, interrupted, errors = [], False, {}
    for result in grid:
        metrics = result.metrics or {}
        trial_id, status = trials.get(
            str(result.path),
            (
                metrics.get("trial_id") or Path(result.path).name,
                "ERROR" if result.error else "TERMINATED",
            ),
        )
        if status not in ("TERMINATED", "ERROR"):
            interrupted = True
        if result.error is not None:
            errors[trial_id] = _last_line(result.error)
        if not metrics or result.config is None:  # interrupted before it started
            continue
        sampled = {k: v for k, v in result.config.items()}
        config = trial_config(base, sampled)
        latest, best = _checkpoint_dirs(result, job)
        reported = _reported(result)
        history = _history(reported, latest)
        if not history:
            continue
        pick = max if job.mode == "max" else min
        epochs = int(history[-1]["epoch"])
        rows.append(
            TrialRow(
                trial_id=trial_id,
                status=status,
                config=config,
                values=applicable(
                    {k: v for k, v in flatten(sampled).items() if k in space.params},
                    base.optim.name,
                ),
                history=history,
                best_metric=pick(h[job.metric] for h in history),
                best_val_acc=max(h["val_acc"] for h in history),
                epochs=epochs,
                stopped_early=status == "TERMINATED" and epochs < job.max_epochs,
                trained=len(reported) or len(history),
                exploits=[i for i, r in enumerate(reported) if r.get("pbt_exploit") == 1],
                reported=reported,
                latest=latest,
                best=best,
                path=result.path,
            )
        )
    reverse = job.mode == "max"
    rows.sort(key=lambda r: r.best_metric, reverse=reverse)
    return rows, interrupted, errors


def write_leaderboard(rows: list[TrialRow], job: TuneJob, path: Path) -> Path:
    keys = sorted({k for r in rows for k in r.values})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        extra = [f"best_{job.metric}"] if job.metric != "val_acc" else []
        writer.writerow(
            [
                "rank",
                "trial",
                *keys,
                "best_val_acc",
                "last_val_acc",
                *extra,
                "epochs",
                "epochs_trained",
                "pbt_exploits",
                "stopped_early",
                "status",
            ]
        )
        for i, r in enumerate(rows, 1):
            writer.writerow(
                [
                    i,
                    r.trial_id,
                    *[  # blank: the trial's optimizer does not use it (momentum for adam)
                        json.dumps(r.values[k])
                        if isinstance(r.values.get(k), list)
                        else r.values.get(k, "")
                        for k in keys
                    ],
                    f"{r.best_val_acc:.4f}",
                    f"{r.history[-1]['val_acc']:.4f}",
                    *([f"{r.best_metric:.4f}"] if extra else []),
                    r.epochs,
                    r.trained,
                    len(r.exploits),
                    r.stopped_early,
                    r.status,
                ]
            )
    return path


def leaderboard_table(
    rows: list[TrialRow], job: TuneJob, limit: int = 20, width: int | None = None
):
    """Best first; one column per sampled value that differs between trials, most telling
    first, as many as fit in `width` characters (leaderboard.csv has every value)."""
    from rich.table import Table

    from jobs.tune.progress import fmt, value_columns

    values = [r.values for r in rows]
    order = list(job.space)
    keys, hidden, names = value_columns(values, order, width, fixed=62)
    stopped = sum(r.stopped_early for r in rows)
    table = Table(
        title=f"Leaderboard: {len(rows)} trials by {job.metric}, {stopped} stopped early by "
        f"{job.scheduler.upper()}",
        caption=f"+{hidden} more sampled values in leaderboard.csv" if hidden else None,
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("trial", no_wrap=True)
    table.add_column("best val acc", justify="right", no_wrap=True)
    table.add_column("epochs", justify="right", no_wrap=True)
    table.add_column("ended", no_wrap=True)
    for key in keys:
        table.add_column(names[key], justify="right", no_wrap=True)
    for i, (r, v) in enumerate(zip(rows[:limit], values[:limit], strict=True), 1):
        ended = (
            "error"
            if r.status == "ERROR"
            else f"stopped ({job.scheduler.upper()})"
            if r.stopped_early
            else f"ran to the max{f', {len(r.exploits)} clones' if r.exploits else ''}"
        )
        table.add_row(
            str(i),
            r.trial_id,
            f"{100 * r.best_val_acc:.1f}%",
            f"{r.epochs}/{job.max_epochs}",
            ended,
            *[fmt(v[k]) if k in v else "-" for k in keys],
        )
    return table


def plot_trials(rows: list[TrialRow], job: TuneJob, path: Path) -> Path:
    """Validation accuracy per trial: ASHA's rungs and stops, or PBT's exploits (a trial's
    own results in order; after a clone it goes on from the donor's epoch and accuracy)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from modresnet import plots  # noqa: F401  (selects the Agg backend)

    fig, ax = plt.subplots(figsize=(9, 5))
    rung = job.grace_period
    while job.scheduler == "asha" and rung < job.max_epochs:
        ax.axvline(rung, color="grey", ls=":", lw=1)
        rung *= job.reduction_factor
    for i, r in enumerate(rows):
        points = r.reported if job.scheduler == "pbt" and r.reported else r.history
        epochs = [h["epoch"] for h in points]
        accs = [100 * h["val_acc"] for h in points]
        best = i == 0
        ax.plot(
            epochs,
            accs,
            "o-",
            lw=2.5 if best else 1,
            ms=3,
            label=f"{r.trial_id}{' (best)' if best else ''}",
            zorder=3 if best else 2,
        )
        if r.stopped_early:
            ax.plot(epochs[-1], accs[-1], "x", color="red", ms=10, mew=2, zorder=4)
        for j in r.exploits if points is r.reported else []:
            ax.plot(epochs[j], accs[j], "^", color="purple", ms=9, zorder=4)
    if job.scheduler == "pbt":
        ax.plot([], [], "^", color="purple", ms=9, label="PBT exploit (cloned a better trial)")
    else:
        ax.plot([], [], "x", color="red", ms=10, mew=2, label=f"stopped by {job.scheduler.upper()}")
    where = {
        "asha": "dotted: ASHA rungs, ",
        "pbt": f"PBT exploits every {job.grace_period}, ",
        "fifo": "",
    }
    ax.set(
        xlabel="epoch",
        ylabel="validation accuracy (%)",
        title=f"Validation accuracy per trial ({where[job.scheduler]}max {job.max_epochs} epochs)",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(rows) > 12 else 1, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def export_best(row: TrialRow, exp: Path) -> tuple[RunDir, dict]:
    """The best trial as a core run directory, and its test accuracy (evaluated once)."""
    if row.best is None or row.latest is None:
        raise UserError(f"best trial {row.trial_id} left no checkpoint to export")
    with files.atomic_dir(exp / BEST_RUN) as tmp:
        staged = RunDir(tmp)
        write_run_dir(staged, row.config, row.latest, row.best)
        data = load_cifar10(row.config.data)
        test = finalize(staged, data.test, data.classes, torch.device("cpu"))
    return RunDir(exp / BEST_RUN), test


def summarize(grid, job: TuneJob, info: Callable[[str], None] = print) -> TuneOutcome:
    exp = job.experiment
    rows, interrupted, errors = collect(grid, job)
    outcome = TuneOutcome(exp, rows, interrupted, errors=errors, trials=len(grid))
    if not rows:
        return outcome
    outcome.files["leaderboard"] = write_leaderboard(rows, job, exp / "leaderboard.csv")
    outcome.files["plot"] = plot_trials(rows, job, exp / "trials.png")
    if interrupted:
        return outcome
    best = rows[0]
    outcome.best = best
    (exp / "best_config.yaml").write_text(best.config.to_yaml())
    outcome.files["best_config"] = exp / "best_config.yaml"
    summary = {
        "best_trial": best.trial_id,
        f"best_{job.metric}": best.best_metric,
        "best_val_acc": best.best_val_acc,
        "trials": len(rows),
        "stopped_early": sum(r.stopped_early for r in rows),
        "epochs_trained": sum(r.trained for r in rows),
        "pbt_exploits": sum(len(r.exploits) for r in rows),
        "search": job.search,
        "scheduler": job.scheduler,
        "best_config": best.values,
    }
    if job.test_best:
        run, test = export_best(best, exp)
        outcome.test = test
        outcome.files["best_run"] = run.path
        summary.update(test_acc=test["test_acc"], test_n=test["n"], best_run=str(run.path))
    (exp / "summary.json").write_text(json.dumps(summary, indent=2))
    outcome.files["summary"] = exp / "summary.json"
    return outcome
