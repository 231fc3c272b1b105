"""The lr rule for many data-parallel workers, measured on a CPU: validation accuracy of the
same recipe on 1 worker against 2 and 4 (gloo DDP through the engine, as a Ray Train
worker runs it, without Ray's start-up), under train.lr_scaling linear and sqrt. Not part
of the pytest run.

    .venv/bin/python tests/benchmarks/lr_scaling.py --subset 4000 --epochs 4

Every worker trains train.batch_size images a step, so N workers take N times the global
batch in 1/N of the steps; optim.lr is the lr of one worker. One torch thread per worker.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from modresnet import config as configs  # noqa: E402


def _worker(rank: int, world: int, cfg: dict, init: str, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from modresnet.assembly import assemble

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        config = configs.from_dict(cfg)
        assembled = assemble(
            config, torch.device("cpu"), cpus=1, wrap=lambda m: DistributedDataParallel(m)
        )
        state = assembled.fit(lambda record, state: None)
        if rank == 0:
            Path(out).write_text(json.dumps(state.history))
    finally:
        dist.destroy_process_group()


def train(config: configs.Config, world: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        init, out = f"file://{tmp}/rendezvous", f"{tmp}/history.json"
        mp.spawn(_worker, args=(world, config.to_dict(), init, out), nprocs=world, join=True)
        history: list[dict] = json.loads(Path(out).read_text())
    return history


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=int, default=4000)
    parser.add_argument("--val-subset", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="per worker")
    parser.add_argument("--lr", type=float, default=0.05, help="one worker's lr")
    parser.add_argument("--workers", default="2,4")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    base = configs.resolve(
        "fast",
        overrides={
            "model.flavor": "debug",
            "data.subset": args.subset,
            "data.val_subset": args.val_subset,
            "train.epochs": args.epochs,
            "train.batch_size": args.batch_size,
            "optim.lr": args.lr,
            "train.ema_decay": 0.0,
            "augment.cutout": 0,
        },
    )
    runs: list[dict] = []
    plan = [(1, "none")] + [
        (int(w), rule) for w in args.workers.split(",") for rule in ("linear", "sqrt")
    ]
    for seed in map(int, args.seeds.split(",")):
        for world, rule in plan:
            cfg = base.with_overrides({"train.lr_scaling": rule, "train.seed": seed})
            history = train(cfg, world)
            runs.append(
                {
                    "workers": world,
                    "rule": rule,
                    "seed": seed,
                    "lr": args.lr * {"linear": world, "sqrt": world**0.5, "none": 1}[rule],
                    "global_batch": world * args.batch_size,
                    "val_acc": history[-1]["val_acc"],
                }
            )
            r = runs[-1]
            print(
                f"{world} worker(s) {rule:<6} lr {r['lr']:.3f} batch {r['global_batch']:>4}: "
                f"val acc {100 * r['val_acc']:.1f} %",
                flush=True,
            )
    summary = {
        f"{w}x{rule}": statistics.fmean(
            r["val_acc"] for r in runs if (r["workers"], r["rule"]) == (w, rule)
        )
        for w, rule in plan
    }
    print(
        json.dumps(
            {"benchmark": "lr_scaling", "args": vars(args), "mean_val_acc": summary, "runs": runs}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
