"""Ray Train overhead: steady-state images/s of Ray Train (1 worker) against the in-process
engine on the same data and settings, and 2 workers against 1. Not part of the pytest run.

    .venv/bin/python tests/benchmarks/ray_overhead.py --subset 2000 --epochs 4

Steady state = median `images_per_s` of the epochs after the first (the engine times the
training steps of each epoch; with N workers it is the global rate, all ranks' images over
rank 0's seconds). Startup is reported apart: for Ray, from the `train_ray` call to the
first epoch record minus that epoch's own seconds (controller, worker group, gloo, data
load, model build); `ray.init` is timed on its own. Every path uses 1 torch thread per
worker so the 1-worker comparison is like for like. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)

from modresnet import config as configs  # noqa: E402


def steady(records: list[dict]) -> float:
    rates = [r["images_per_s"] for r in records[1:]] or [records[0]["images_per_s"]]
    return statistics.median(rates)


def run_local(cfg: configs.Config, root: Path) -> dict:
    from modresnet.local import train_local

    records, stamps = [], []
    start = time.perf_counter()
    train_local(
        cfg,
        root / "local",
        on_epoch_done=lambda r: (records.append(r), stamps.append(time.perf_counter())),
    )
    first = stamps[0] - start - records[0]["epoch_s"]
    return {
        "images_per_s": steady(records),
        "startup_s": first,
        "total_s": time.perf_counter() - start,
        "epochs": [round(r["images_per_s"], 1) for r in records],
    }


def run_ray(cfg: configs.Config, root: Path, workers: int) -> dict:
    from jobs.train.driver import RayOptions, train_ray

    records, stamps = [], []
    start = time.perf_counter()
    train_ray(
        cfg,
        root / f"ray{workers}",
        RayOptions(workers=workers, cpus_per_worker=1, wandb=False),
        on_epoch_done=lambda r: (records.append(r), stamps.append(time.perf_counter())),
        info=lambda _: None,
    )
    first = stamps[0] - start - records[0]["epoch_s"]
    return {
        "images_per_s": steady(records),
        "startup_s": first,
        "total_s": time.perf_counter() - start,
        "epochs": [round(r["images_per_s"], 1) for r in records],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="debug")
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data-dir", default=os.environ.get("MODRESNET_DATA"))
    args = ap.parse_args()
    cfg = configs.resolve(
        args.preset,
        overrides={
            "data.data_dir": args.data_dir,
            "data.subset": args.subset,
            "data.val_subset": 200,
            "data.test_subset": 200,
            "train.epochs": args.epochs,
            "train.batch_size": args.batch_size,
            "train.threads": 1,
            "train.device": "cpu",
            "train.lr_scaling": "none",
        },
    )

    import ray

    with tempfile.TemporaryDirectory(prefix="modresnet-bench-") as tmp:
        root = Path(tmp)
        local = run_local(cfg, root)
        print(
            f"in-process engine   {local['images_per_s']:8.1f} img/s  startup "
            f"{local['startup_s']:.1f}s  per-epoch {local['epochs']}",
            flush=True,
        )
        t0 = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            log_to_driver=False,
        )
        init_s = time.perf_counter() - t0
        print(f"ray.init            {init_s:.1f}s", flush=True)
        try:
            one = run_ray(cfg, root, 1)
            print(
                f"Ray Train 1 worker  {one['images_per_s']:8.1f} img/s  startup "
                f"{one['startup_s']:.1f}s  per-epoch {one['epochs']}",
                flush=True,
            )
            two = run_ray(cfg, root, 2)
            print(
                f"Ray Train 2 workers {two['images_per_s']:8.1f} img/s  startup "
                f"{two['startup_s']:.1f}s  per-epoch {two['epochs']}",
                flush=True,
            )
        finally:
            ray.shutdown()
    ratio_1 = one["images_per_s"] / local["images_per_s"]
    ratio_2 = two["images_per_s"] / one["images_per_s"]
    print(
        f"Ray 1 worker / in-process = {ratio_1:.3f}   2 workers / 1 worker = {ratio_2:.3f}   "
        f"(cpus: {os.cpu_count()}, load avg {os.getloadavg()[0]:.1f})"
    )
    print(
        json.dumps(
            {
                "preset": args.preset,
                "subset": args.subset,
                "epochs": args.epochs,
                "batch_size_per_worker": args.batch_size,
                "threads_per_worker": 1,
                "cpus": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "in_process_images_per_s": round(local["images_per_s"], 1),
                "ray_1_worker_images_per_s": round(one["images_per_s"], 1),
                "ray_2_workers_images_per_s": round(two["images_per_s"], 1),
                "ray1_over_in_process": round(ratio_1, 3),
                "ray2_over_ray1": round(ratio_2, 3),
                "startup_s": {
                    "in_process": round(local["startup_s"], 1),
                    "ray_init": round(init_s, 1),
                    "ray_1_worker": round(one["startup_s"], 1),
                    "ray_2_workers": round(two["startup_s"], 1),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
