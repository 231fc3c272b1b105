"""Training throughput on this CPU: modresnet's engine (data as uint8 tensors, batched
augmentation, channels_last) against a plain loop in the paper's style (torchvision
CIFAR10 + PIL transforms through a DataLoader), same model, batch, optimizer and images.
Prints both images/s and, last, one JSON line with key `ratio`.

    .venv/bin/python tests/benchmarks/train_step.py [--steps 6] [--flavor paper]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from augment import paper_pipeline
from torch.utils.data import DataLoader, Subset
from torchvision import datasets

from modresnet import config as configs
from modresnet import engine
from modresnet.data import Split, load_cifar10, resolve_root
from modresnet.model import FLAVORS, build_model


def paper_loop(steps: int, batch: int, flavor: str, workers: int) -> float:
    data = datasets.CIFAR10(
        str(resolve_root(None)), train=True, download=False, transform=paper_pipeline()
    )
    loader = DataLoader(
        Subset(data, range(steps * batch + batch)),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
    )
    torch.manual_seed(0)
    model = build_model(FLAVORS[flavor])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    model.train()
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 1:  # first step warms up
            seen, start = 0, time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        if i == steps:
            break
    return seen / (time.perf_counter() - start)


def engine_loop(steps: int, batch: int, flavor: str) -> float:
    cfg = configs.resolve("paper", overrides={"model.flavor": flavor, "train.batch_size": batch})
    data = load_cifar10(cfg.data).train
    train = Split(data.x[: (steps + 1) * batch], data.y[: (steps + 1) * batch])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    state = engine.build_state(cfg, model, len(train))
    marks = []
    engine.train_one_epoch(
        state,
        train,
        cfg,
        torch.device("cpu"),
        on_batch=lambda step, n, loss: marks.append(time.perf_counter()),
    )
    return steps * batch / (marks[-1] - marks[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--flavor", default="paper", choices=list(FLAVORS))
    parser.add_argument("--loader-workers", type=int, default=2)
    args = parser.parse_args()
    baseline = paper_loop(args.steps, args.batch, args.flavor, args.loader_workers)
    ours = engine_loop(args.steps, args.batch, args.flavor)
    print(
        f"paper-style loop (DataLoader + PIL, {args.loader_workers} workers): "
        f"{baseline:,.1f} images/s"
    )
    print(f"modresnet engine:                          {ours:,.1f} images/s")
    print(
        json.dumps(
            {
                "benchmark": "train_step",
                "flavor": args.flavor,
                "batch": args.batch,
                "steps": args.steps,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "baseline_images_per_s": round(baseline, 1),
                "modresnet_images_per_s": round(ours, 1),
                "ratio": round(ours / baseline, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
