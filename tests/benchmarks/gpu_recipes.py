"""GPU recipe benchmark, sized to one 15-minute GPU lease: stage the data, time today's
`fast` run and a solo speed run, then train presets x seeds concurrently for accuracy.

    python tests/benchmarks/gpu_recipes.py --split-data runs/gpu-data     # here: 3 parts
    python tests/benchmarks/gpu_recipes.py --stage runs/gpu-data/part1    # there, one call
    python tests/benchmarks/gpu_recipes.py --stage runs/gpu-data/part2    # each (<64 MiB)
    python tests/benchmarks/gpu_recipes.py --stage runs/gpu-data/part3 --phase speed
    python tests/benchmarks/gpu_recipes.py --phase accuracy
    python tests/benchmarks/gpu_recipes.py --dry-run    # the whole path on a CPU, tiny (CI)

Phases: `speed` runs the baseline (the `fast` preset as it is: batch 256, eager) and then
the speed run (`fast` with --speed-set, default compile + drop_last + ema_every 5), each
alone on the GPU; `accuracy` runs --runs with --jobs at once. Concurrent runs time-slice the
GPU, so only the solo runs give images/s and MFU (2.52 GFLOPs per image, forward and
backward, over the GPU's dense bf16 peak). `--stage` copies carried parts into
--data-root (a carried path is removed on the next call that does not carry it), checks
the md5 sums, and says which files are still missing. Every phase adds its runs to
--out/results.jsonl and prints the table and one JSON line of everything there. Each run is
its own `modresnet train --local` process: no Ray.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BATCHES = "cifar-10-batches-py"
MD5 = {  # the official release's (/work/shared/data/README.md)
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
PARTS = {  # ~59 MiB each: one part and the working tree fit one call's 64 MiB
    "part1": ("data_batch_1", "data_batch_2"),
    "part2": ("data_batch_3", "data_batch_4"),
    "part3": ("data_batch_5", "test_batch", "batches.meta"),
}
GFLOPS_PER_IMAGE = 2.52  # forward + backward of the 2,777,674-parameter model
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}
BASELINE = ("fast", 0)
SPEED_SETS = ["train.compile=true", "train.drop_last=true", "train.ema_every=5"]
ACCURACY_RUNS = "fast:0,1,2;fast15:0,1,2"
DRY_SETS = [
    "model.flavor=debug",
    "data.subset=256",
    "data.val_subset=100",
    "data.test_subset=200",
    "train.epochs=1",
    "train.batch_size=64",
    "train.ema_bn_images=128",
]
# Seconds per run, from the H100 figures (22k images/s training; epoch-end work, start-up):
# a fast run took 89-100 s; the paper preset 241 s.
TRAIN_IMAGES_PER_S = {"paper": 10_600.0}
EPOCH_END_S, STARTUP_S, COMPILE_S = 1.0, 10.0, 60.0


def parse_runs(spec: str) -> list[tuple[str, int]]:
    runs = []
    for part in filter(None, spec.split(";")):
        preset, _, seeds = part.partition(":")
        runs += [(preset.strip(), int(s)) for s in (seeds or "0").split(",")]
    return runs


# --------------------------------------------------------------------------- data


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_data(source: Path, out: Path) -> list[Path]:
    """The data set as three folders to carry on three calls (each under 64 MiB)."""
    folders = []
    for part, names in PARTS.items():
        folder = out / part
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(source / BATCHES / name, folder / name)
        folders.append(folder)
    return folders


def stage(parts: list[Path], root: Path) -> list[str]:
    """Copy the carried parts' files into root/cifar-10-batches-py, check each one's md5;
    the names still missing."""
    target = root / BATCHES
    target.mkdir(parents=True, exist_ok=True)
    for part in parts:
        for name in sorted(set(MD5) & {p.name for p in part.iterdir()}):
            shutil.copyfile(part / name, target / name)
            if md5(target / name) != MD5[name]:
                (target / name).unlink()
                raise SystemExit(f"--stage: {part / name} is damaged (md5); carry it again")
    return [name for name in MD5 if not (target / name).exists()]


# --------------------------------------------------------------------------- runs


def train_one(
    phase: str, preset: str, seed: int, device: str, out: Path, sets: list[str], data: Path
) -> dict:
    name = f"{phase}-{preset}-s{seed}"
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "modresnet.cli", "train", "--local", "--preset", preset]
    cmd += ["--seed", str(seed), "--device", device, "--storage", str(out), "--name", name]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "MODRESNET_DATA": str(data)}
    start = time.perf_counter()
    with (out / f"{name}.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.perf_counter() - start
    row = {"phase": phase, "preset": preset, "seed": seed, "sets": sets}
    if rc != 0:
        tail = (out / f"{name}.log").read_text().strip().splitlines()[-3:]
        return {**row, "error": f"exit {rc}: {' | '.join(tail)}"}
    test = json.loads((run_dir / "test.json").read_text())
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [m["images_per_s"] for m in history]
    epochs_s = sum(m["epoch_s"] for m in history)
    train_s = sum(m["train_s"] for m in history)
    return {
        **row,
        "test_acc": test["test_acc"],
        "epochs": len(history),
        "wall_s": wall,
        "train_s": train_s,
        "epoch_end_pct": 100 * (epochs_s - train_s) / wall,
        "images_per_s": statistics.median(rates[1:] or rates),  # after compile/warm-up
        "weights": history[-1].get("weights", "live"),
    }


def estimate_s(runs: list[tuple[str, int]], jobs: int, sets: list[str], solo: bool) -> float:
    """Seconds the runs take on a GPU like the H100 above: their training seconds add up
    (they share one GPU), their epoch-end and start-up work overlaps `jobs` at a time."""
    epochs = {"fast": 30, "fast15": 15, "paper": 50, "demo": 5, "debug": 1}
    gpu = other = 0.0
    for preset, _ in runs:
        n = epochs.get(preset, 30)
        gpu += n * 45_000 / TRAIN_IMAGES_PER_S.get(preset, 22_000.0)
        other += n * EPOCH_END_S + STARTUP_S + (COMPILE_S if "train.compile=true" in sets else 0)
    return gpu + other / (1 if solo else max(1, jobs))


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def mfu(images_per_s: float, gpu: str | None) -> float | None:
    peak = next((p for k, p in PEAK_BF16_TFLOPS.items() if gpu and k in gpu), None)
    return images_per_s * GFLOPS_PER_IMAGE * 1e9 / (peak * 1e12) if peak else None


def summarize(results: list[dict], gpu: str | None) -> dict[str, dict]:
    """One row per phase and preset: accuracy mean/std/min/max; images/s and MFU of solo runs."""
    table: dict[str, dict] = {}
    for phase, preset in dict.fromkeys((r["phase"], r["preset"]) for r in results):
        mine = [r for r in results if (r["phase"], r["preset"]) == (phase, preset)]
        ok = [r for r in mine if "error" not in r]
        key = f"{phase}:{preset}"
        if not ok:
            table[key] = {"runs": 0, "errors": [r["error"] for r in mine]}
            continue
        accs = [r["test_acc"] for r in ok]
        row = {
            "runs": len(ok),
            "test_acc_mean": statistics.fmean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "test_acc_min": min(accs),
            "test_acc_max": max(accs),
            "epochs": ok[0]["epochs"],
            "wall_s_mean": statistics.fmean(r["wall_s"] for r in ok),
            "epoch_end_pct": statistics.fmean(r["epoch_end_pct"] for r in ok),
        }
        if phase != "accuracy":  # alone on the GPU: its speed means something
            rate = statistics.fmean(r["images_per_s"] for r in ok)
            row |= {"images_per_s": rate, "mfu": mfu(rate, gpu)}
        table[key] = row
    if "baseline:fast" in table and "speed:fast" in table:
        base, fast = table["baseline:fast"], table["speed:fast"]
        if base.get("images_per_s") and fast.get("images_per_s"):
            fast["speedup"] = fast["images_per_s"] / base["images_per_s"]
    return table


def report(table: dict[str, dict], meta: dict) -> None:
    print(
        f"{'phase:preset':<18} {'runs':>4} {'test acc mean +- std (min-max)':>32} {'epochs':>6} "
        f"{'wall s':>7} {'end %':>6} {'img/s':>8} {'MFU':>6}"
    )
    for key, row in table.items():
        if not row["runs"]:
            print(f"{key:<18} failed: {row['errors'][0]}")
            continue
        rate = f"{row['images_per_s']:>8.0f}" if "images_per_s" in row else f"{'-':>8}"
        util = f"{100 * row['mfu']:>5.1f}%" if row.get("mfu") else f"{'-':>6}"
        print(
            f"{key:<18} {row['runs']:>4} {100 * row['test_acc_mean']:>10.2f} +- "
            f"{100 * row['test_acc_std']:.2f} % ({100 * row['test_acc_min']:.2f}-"
            f"{100 * row['test_acc_max']:.2f}) {row['epochs']:>6} {row['wall_s_mean']:>7.0f} "
            f"{row['epoch_end_pct']:>6.1f} {rate} {util}"
        )
    print(json.dumps({"benchmark": "gpu_recipes", **meta, "presets": table}))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phase", choices=("speed", "accuracy", "all", "none"), default=None)
    parser.add_argument("--runs", default=ACCURACY_RUNS, help="accuracy: PRESET:SEED,SEED;...")
    parser.add_argument("--jobs", type=int, default=3, help="accuracy: trainings at once")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-recipes")
    parser.add_argument("--data-root", type=Path, default=Path("/root/cifar"))
    parser.add_argument("--stage", type=Path, nargs="*", default=[], help="carried data parts")
    parser.add_argument("--split-data", type=Path, help="write the three parts here and stop")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="speed and accuracy runs"
    )
    parser.add_argument("--speed-set", dest="speed_sets", action="append", default=None)
    parser.add_argument("--budget-s", type=float, default=600.0, help="refuse a longer phase")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, debug flavor, 256 images, 1 epoch"
    )
    args = parser.parse_args()
    if args.split_data:
        source = Path(os.environ.get("MODRESNET_DATA", "/work/shared/data"))
        for folder in split_data(source, args.split_data):
            print(f"carry {folder} ({sum(f.stat().st_size for f in folder.iterdir()) >> 20} MiB)")
        return 0
    missing = stage(args.stage, args.data_root) if args.stage else None
    if missing:
        print(f"staged under {args.data_root}; still missing: {', '.join(missing)}")
    phase = args.phase or ("none" if missing else "all")
    if phase != "none" and missing:
        raise SystemExit(f"--phase {phase}: {args.data_root} lacks {', '.join(missing)}")

    device = "cpu" if args.dry_run else args.device
    base_sets = DRY_SETS if args.dry_run else []
    speed_sets = args.speed_sets if args.speed_sets is not None else SPEED_SETS
    if args.dry_run:  # compiling on a CPU takes minutes
        speed_sets = [s for s in speed_sets if not s.startswith("train.compile")]
    runs = parse_runs(args.runs if not args.dry_run else "fast:0,1")
    args.out.mkdir(parents=True, exist_ok=True)
    data = (
        args.data_root
        if (args.data_root / BATCHES).exists()
        else Path(os.environ.get("MODRESNET_DATA", args.data_root))
    )
    results_file = args.out / "results.jsonl"
    gpu = gpu_name() if device == "cuda" else None
    start = time.perf_counter()

    def record(rows: list[dict]) -> None:
        with results_file.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")

    def check_budget(name: str, seconds: float) -> None:
        print(f"{name}: about {seconds:.0f} s on one H100-class GPU", flush=True)
        if not args.dry_run and seconds > args.budget_s:
            raise SystemExit(
                f"--phase {name}: about {seconds:.0f} s, over --budget-s {args.budget_s:g}; "
                f"fewer --runs, or run it in parts"
            )

    if phase in ("speed", "all"):
        sets = args.sets + speed_sets
        check_budget(
            "speed",
            estimate_s([BASELINE], 1, [], True) + estimate_s([BASELINE], 1, sets, True),
        )
        preset, seed = BASELINE
        record([train_one("baseline", preset, seed, device, args.out, base_sets, data)])
        record([train_one("speed", preset, seed, device, args.out, base_sets + sets, data)])
    if phase in ("accuracy", "all"):
        check_budget("accuracy", estimate_s(runs, args.jobs, args.sets, False))
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            record(
                list(
                    pool.map(
                        lambda r: train_one(
                            "accuracy", r[0], r[1], device, args.out, base_sets + args.sets, data
                        ),
                        runs,
                    )
                )
            )
    if not results_file.exists():
        return 0
    import torch

    results = [json.loads(line) for line in results_file.read_text().splitlines()]
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "gpu": gpu,
        "torch": torch.__version__,
        "jobs": args.jobs,
        "phase_s": time.perf_counter() - start,
    }
    report(summarize(results, gpu), {**meta, "runs": results})
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
