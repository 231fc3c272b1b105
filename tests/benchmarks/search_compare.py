"""Searches compared on the same space and budget, over several search seeds: FIFO (random
points, every trial to the max), ASHA (random + early stopping), Optuna's TPE + ASHA, and
PBT (random points, exploit and explore every few epochs).

Every search draws --samples points and trains a trial --max-epochs at most (the budget
FIFO spends in full). Each runs through jobs.tune.driver on one Ray started here, one search
after another, the methods interleaved per seed so the machine's load drifts over all of them.
Prints, per method, mean ± standard deviation over the seeds (and the range) of the best
validation accuracy, the test accuracy of the exported best trial, the epochs trained (the
compute) and the wall time; the slot utilisation (busy trial slots / slots, sampled each
second from Ray's free CPUs, after the first minute and until the last trial reported);
and whether an early-stopping method came within --target-gap points of FIFO's mean best
validation accuracy at <= --target-compute of its epochs. The last line is one JSON object.
Not part of pytest:

    MODRESNET_DATA=../shared/data .venv/bin/python tests/benchmarks/search_compare.py \\
        --samples 8 --max-epochs 6 --seeds 0 1 2

A method is NAME[:ARGS]: fifo, asha:GRACE:REDUCTION, optuna:GRACE:REDUCTION (TPE + ASHA),
pbt:INTERVAL (epochs between exploits).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout, not another one the venv may have installed

from jobs.runtime import connect  # noqa: E402
from jobs.tune import driver  # noqa: E402
from jobs.tune.job import SearchSettings, new_job  # noqa: E402
from jobs.tune.space import parse_space  # noqa: E402
from modresnet import config as configs  # noqa: E402

SPACE = {
    "optim.name": "adam",
    "optim.lr": {"loguniform": [1.0e-5, 1.0e-2]},
    "optim.weight_decay": {"loguniform": [1.0e-6, 1.0e-3]},
    "schedule.name": "constant",
    "augment.flip": {"choice": [0.0, 0.5]},
    "train.label_smoothing": {"uniform": [0.0, 0.2]},
}


def settings(method: str, args, seed: int) -> SearchSettings:
    name, *rest = method.split(":")
    numbers = [int(v) for v in rest]
    common = {
        "samples": args.samples,
        "max_epochs": args.max_epochs,
        "concurrent": args.concurrent,
        "search_seed": seed,
    }
    if name == "fifo":
        return SearchSettings(scheduler="fifo", **common)
    if name in ("asha", "optuna"):
        grace, reduction = numbers or (1, 3)
        return SearchSettings(
            search="optuna" if name == "optuna" else "random",
            scheduler="asha",
            grace_period=grace,
            reduction_factor=reduction,
            **common,
        )
    if name == "pbt":
        return SearchSettings(scheduler="pbt", grace_period=(numbers or [2])[0], **common)
    raise SystemExit(f"unknown method {method!r}: use fifo, asha:G:R, optuna:G:R, pbt:I")


class SlotSampler:
    """Busy fraction of the cluster's CPUs (trial slots), sampled every second."""

    def __init__(self) -> None:
        import ray

        self.total = ray.cluster_resources()["CPU"]
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import ray

        while not self.stop.wait(1.0):
            free = ray.available_resources().get("CPU", 0.0)
            self.samples.append((time.time(), (self.total - free) / self.total))

    def __enter__(self) -> SlotSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def utilisation(self, start: float, end: float) -> float | None:
        busy = [b for t, b in self.samples if start <= t <= end]
        return sum(busy) / len(busy) if busy else None


def run(method: str, seed: int, base, space, args, storage: Path) -> dict:
    job = new_job(base, space, settings(method, args, seed), storage, f"{method}-s{seed}")
    start = time.time()
    with SlotSampler() as slots:
        outcome = driver.run_search(job, driver.TuneOptions(wandb=False), info=lambda line: None)
    seconds = time.time() - start
    last = max(r["timestamp"] for row in outcome.rows for r in row.reported)
    return {
        "method": method,
        "seed": seed,
        "best_val_acc": max(r.best_val_acc for r in outcome.rows),
        "test_acc": outcome.test["test_acc"] if outcome.test else None,
        "epochs": sum(r.trained for r in outcome.rows),
        "seconds": round(seconds, 1),
        "stopped_early": sum(r.stopped_early for r in outcome.rows),
        "exploits": sum(len(r.exploits) for r in outcome.rows),
        "slot_utilisation": slots.utilisation(start + 60, last),
    }


def spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def fmt_pct(value: Any) -> str:
    """A utilisation as a percentage; '-' for a search shorter than the first minute."""
    if isinstance(value, dict):
        value = value["mean"]
    return "-" if value is None else f"{100 * value:.0f}%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["fifo", "asha:1:3", "optuna:1:3", "pbt:2"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--concurrent", type=int, default=2, help="trial slots (one CPU each)")
    p.add_argument("--subset", type=int, default=1000)
    p.add_argument("--val-subset", type=int, default=1000, help="bigger: rungs rank less noisily")
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--target-gap", type=float, default=1.0, help="points below FIFO's best val")
    p.add_argument("--target-compute", type=float, default=0.40, help="fraction of FIFO's epochs")
    p.add_argument("--storage", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    base = configs.resolve(
        "debug",
        overrides={
            "data.subset": args.subset,
            "data.val_subset": args.val_subset,
            "data.test_subset": args.test_subset,
            "train.batch_size": 32,
            "train.epochs": args.max_epochs,
        },
    )
    space = parse_space(SPACE, base, "search_compare")
    storage = args.storage or Path(tempfile.mkdtemp(prefix="search-compare-"))
    import ray

    connect(num_cpus=args.concurrent, log_file=storage / "ray.log")
    runs: list[dict] = []
    try:
        for seed in args.seeds:
            for method in args.methods:
                runs.append(run(method, seed, base, space, args, storage))
                r = runs[-1]
                print(
                    f"seed {seed} {method:11s} best val {100 * r['best_val_acc']:5.1f}%  "
                    f"test {100 * (r['test_acc'] or 0):5.1f}%  epochs {r['epochs']:3d}  "
                    f"{r['seconds']:5.0f}s  slots {fmt_pct(r['slot_utilisation'])}",
                    flush=True,
                )
    finally:
        ray.shutdown()
    keys = ("best_val_acc", "test_acc", "epochs", "seconds", "slot_utilisation")
    summary: dict[str, dict[str, Any]] = {
        m: {k: spread([r[k] for r in runs if r["method"] == m and r[k] is not None]) for k in keys}
        for m in args.methods
    }
    fifo = summary.get("fifo")
    print(f"\n{len(args.seeds)} seeds, mean ± std (min..max):")
    for m, s in summary.items():
        acc = s["best_val_acc"]
        line = (
            f"{m:11s} best val {100 * acc['mean']:.1f} ± {100 * acc['std']:.1f}% "
            f"({100 * acc['min']:.1f}..{100 * acc['max']:.1f})  "
            f"test {100 * s['test_acc']['mean']:.1f} ± {100 * s['test_acc']['std']:.1f}%  "
            f"epochs {s['epochs']['mean']:.0f} ± {s['epochs']['std']:.0f}  "
            f"wall {s['seconds']['mean']:.0f} ± {s['seconds']['std']:.0f}s  "
            f"slots {fmt_pct(s['slot_utilisation'])}"
        )
        if fifo is not None and m != "fifo":
            gap = 100 * (fifo["best_val_acc"]["mean"] - acc["mean"])
            compute = s["epochs"]["mean"] / fifo["epochs"]["mean"]
            met = gap <= args.target_gap and compute <= args.target_compute
            s["vs_fifo"] = {"gap_points": gap, "compute": compute, "target_met": met}
            line += f"  | vs FIFO: {gap:+.1f} points, {compute:.2f}x compute, target {met}"
        print(line)
    print(
        json.dumps(
            {
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "storage": str(storage),
                "runs": runs,
                "summary": summary,
            }
        )
    )


if __name__ == "__main__":
    main()
