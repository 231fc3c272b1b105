"""GPU recipe benchmark: train presets x seeds with `modresnet train --local` and report test
accuracy (mean, min, max), epochs, wall time, images/s and how busy the GPU was.

    python tests/benchmarks/gpu_recipes.py                # fast, fast15 x 3 seeds + paper x 1
    python tests/benchmarks/gpu_recipes.py --runs fast:0,1,2 --jobs 2 --set train.compile=true
    python tests/benchmarks/gpu_recipes.py --smoke               # seconds on a CPU (CI)

Each run is its own process (the CLI users run), so two can share one GPU with --jobs 2;
their logs, metrics.jsonl and test.json stay under --out. Prints a table and, last, one JSON
line. Needs only the core (torch, typer, rich, safetensors): no Ray.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RUNS = "fast:0,1,2;fast15:0,1,2;paper:0"
SMOKE_SETS = [
    "model.flavor=debug",
    "data.subset=500",
    "data.val_subset=100",
    "data.test_subset=200",
    "train.epochs=1",
    "train.batch_size=64",
    "train.ema_bn_images=128",
]


def parse_runs(spec: str) -> list[tuple[str, int]]:
    runs = []
    for part in filter(None, spec.split(";")):
        preset, _, seeds = part.partition(":")
        runs += [(preset.strip(), int(s)) for s in (seeds or "0").split(",")]
    return runs


class GpuSampler:
    """Mean GPU utilisation from nvidia-smi once a second; None where there is none."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.name: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _query(self, field: str) -> str | None:
        if shutil.which("nvidia-smi") is None:
            return None
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return (
            out.stdout.strip().splitlines()[0]
            if out.returncode == 0 and out.stdout.strip()
            else None
        )

    def start(self) -> GpuSampler:
        self.name = self._query("name")
        if self.name is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            value = self._query("utilization.gpu")
            if value is not None:
                self.samples.append(float(value))

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        busy = self.samples[2:]  # skip process start-up
        return statistics.fmean(busy) if busy else None


def train_one(preset: str, seed: int, device: str, out: Path, sets: list[str]) -> dict:
    name = f"{preset}-s{seed}"
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "modresnet.cli",
        "train",
        "--local",
        "--preset",
        preset,
        "--seed",
        str(seed),
        "--device",
        device,
        "--storage",
        str(out),
        "--name",
        name,
    ]
    for item in sets:
        cmd += ["--set", item]
    start = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    if rc != 0:
        tail = (out / f"{name}.log").read_text().strip().splitlines()[-3:]
        return {"preset": preset, "seed": seed, "error": f"exit {rc}: {' | '.join(tail)}"}
    test = json.loads((run_dir / "test.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_s = sum(m["epoch_s"] for m in history)
    return {
        "preset": preset,
        "seed": seed,
        "test_acc": test["test_acc"],
        "epochs": len(history),
        "wall_s": wall,
        "epochs_s": train_s,
        "images_per_s": statistics.fmean(m["images_per_s"] for m in history),
        "weights": history[-1].get("weights", "live"),
    }


def summarize(results: list[dict]) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for preset in dict.fromkeys(r["preset"] for r in results):
        ok = [r for r in results if r["preset"] == preset and "error" not in r]
        if not ok:
            table[preset] = {
                "runs": 0,
                "errors": [r["error"] for r in results if r["preset"] == preset],
            }
            continue
        accs = [r["test_acc"] for r in ok]
        table[preset] = {
            "runs": len(ok),
            "test_acc_mean": statistics.fmean(accs),
            "test_acc_min": min(accs),
            "test_acc_max": max(accs),
            "epochs": ok[0]["epochs"],
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in ok),
            "epochs_s_mean": statistics.fmean(r["epochs_s"] for r in ok),
            "images_per_s_mean": statistics.fmean(r["images_per_s"] for r in ok),
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", default=None, help=f"PRESET:SEED,SEED;... (default {DEFAULT_RUNS!r})"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once on the device")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-recipes")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        help="SECTION.FIELD=VALUE for every run; repeatable",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CPU, debug flavor, 500 images, 1 epoch: checks the harness",
    )
    args = parser.parse_args()
    runs = parse_runs(args.runs or ("fast:0" if args.smoke else DEFAULT_RUNS))
    device = "cpu" if args.smoke else args.device
    sets = (SMOKE_SETS if args.smoke else []) + args.sets
    args.out.mkdir(parents=True, exist_ok=True)

    sampler = GpuSampler().start() if device == "cuda" else GpuSampler()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda r: train_one(r[0], r[1], device, args.out, sets), runs))
    busy = sampler.stop()
    table = summarize(results)

    print(
        f"{'preset':<8} {'runs':>4} {'test acc mean (min-max)':>26} {'epochs':>6} "
        f"{'wall s':>7} {'img/s':>8}"
    )
    for preset, row in table.items():
        if not row["runs"]:
            print(f"{preset:<8} failed: {row['errors'][0]}")
            continue
        print(
            f"{preset:<8} {row['runs']:>4} {100 * row['test_acc_mean']:>12.2f} % "
            f"({100 * row['test_acc_min']:.2f}-{100 * row['test_acc_max']:.2f}) "
            f"{row['epochs']:>6} {row['wall_s_mean']:>7.0f} {row['images_per_s_mean']:>8.0f}"
        )
    import torch

    print(
        json.dumps(
            {
                "benchmark": "gpu_recipes",
                "device": device,
                "gpu": sampler.name,
                "torch": torch.__version__,
                "jobs": args.jobs,
                "sets": sets,
                "gpu_busy_pct": busy,
                "total_s": time.perf_counter() - start,
                "presets": table,
                "runs": results,
            }
        )
    )
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
