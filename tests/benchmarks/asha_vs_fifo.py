"""ASHA versus no early stopping (FIFO) on the same space and sample count.

Runs two `modresnet tune` searches through jobs.tune (same seed, so the same sampled
points): one with ASHA, one with ASHA's grace period set to --max-epochs, which never
stops a trial (every trial trains all epochs, as FIFO would). Prints the total epochs
trained (compute), wall time and best validation accuracy of each and their ratios; the
last line is one JSON object. Not part of pytest:

    MODRESNET_DATA=../shared/data .venv/bin/python tests/benchmarks/asha_vs_fifo.py \\
        --samples 8 --max-epochs 4 --subset 1000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from jobs import tune as tuning
from jobs.search_space import parse_space
from jobs.tune_job import SearchSettings, new_job
from modresnet import config as configs

SPACE = {
    "optim.name": "adam",
    "optim.lr": {"loguniform": [1.0e-5, 1.0e-2]},
    "schedule.name": "constant",
    "augment.flip": {"choice": [0.0, 0.5]},
    "train.label_smoothing": {"uniform": [0.0, 0.2]},
}


def run(label: str, base, space, args, storage: Path, grace: int) -> dict:
    settings = SearchSettings(
        samples=args.samples,
        max_epochs=args.max_epochs,
        grace_period=grace,
        reduction_factor=args.reduction_factor,
        concurrent=args.concurrent,
        search_seed=args.seed,
    )
    job = new_job(base, space, settings, storage, label)
    start = time.perf_counter()
    outcome = tuning.run_search(job, tuning.TuneOptions(wandb=False), info=lambda line: None)
    seconds = time.perf_counter() - start
    return {
        "epochs": sum(r.epochs for r in outcome.rows),
        "best_val_acc": max(r.best_val_acc for r in outcome.rows),
        "test_acc": outcome.test["test_acc"] if outcome.test else None,
        "stopped_early": sum(r.stopped_early for r in outcome.rows),
        "trials": len(outcome.rows),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-epochs", type=int, default=4)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=int, default=2)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--subset", type=int, default=1000)
    p.add_argument(
        "--val-subset", type=int, default=1000, help="a bigger split ranks trials less noisily"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    base = configs.resolve(
        "debug",
        overrides={
            "data.subset": args.subset,
            "data.val_subset": args.val_subset,
            "data.test_subset": 1000,
            "train.batch_size": 32,
            "train.epochs": args.max_epochs,
        },
    )
    space = parse_space(SPACE, base, "asha_vs_fifo")
    storage = args.storage or Path(tempfile.mkdtemp(prefix="asha-vs-fifo-"))
    asha = run("asha", base, space, args, storage, args.grace_period)
    fifo = run("fifo", base, space, args, storage, args.max_epochs)
    for label, r in (("ASHA", asha), ("FIFO (no early stop)", fifo)):
        print(
            f"{label:22s} epochs trained {r['epochs']:3d}  "
            f"best val acc {100 * r['best_val_acc']:.1f}%  "
            f"stopped early {r['stopped_early']}/{r['trials']}  {r['seconds']:.0f}s"
        )
    ratio = {
        "epochs": asha["epochs"] / fifo["epochs"],
        "best_val_acc": asha["best_val_acc"] / fifo["best_val_acc"],
        "seconds": asha["seconds"] / fifo["seconds"],
    }
    print(
        f"ASHA/FIFO: compute {ratio['epochs']:.2f}x, best val acc {ratio['best_val_acc']:.2f}x, "
        f"wall {ratio['seconds']:.2f}x"
    )
    print(
        json.dumps(
            {
                "samples": args.samples,
                "max_epochs": args.max_epochs,
                "grace_period": args.grace_period,
                "reduction_factor": args.reduction_factor,
                "subset": args.subset,
                "val_subset": args.val_subset,
                "asha": asha,
                "fifo": fifo,
                "ratio": ratio,
                "storage": str(storage),
            }
        )
    )


if __name__ == "__main__":
    main()
