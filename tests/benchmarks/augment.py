"""Augmentation throughput: the paper's per-image torchvision/PIL pipeline (as in its
notebook) against modresnet's batched pipeline, on the same 10,000 real CIFAR-10 training
images, one CPU thread. Prints a table and, last, one JSON line with key `ratio`.

    .venv/bin/python tests/benchmarks/augment.py [--images 10000] [--batch 128] [--passes 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from PIL import Image
from torchvision import transforms

from modresnet.augment import augment
from modresnet.config import DataConfig, paper
from modresnet.data import load_cifar10


def paper_pipeline() -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1),
            transforms.RandomRotation(20),
            transforms.RandomAffine(degrees=0, translate=(0.1, 0.1)),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=128, help="the paper's training batch")
    parser.add_argument("--passes", type=int, default=7, help="passes over the images for ours")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = load_cifar10(DataConfig()).train.x[: args.images]
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]
    pipeline = paper_pipeline()
    start = time.perf_counter()
    for img in pil:
        pipeline(img)
    baseline = len(pil) / (time.perf_counter() - start)

    cfg, mean, std = paper().augment, (0.5,) * 3, (0.5,) * 3
    g = torch.Generator().manual_seed(0)
    passes = []  # one pass takes ~0.15 s, so take the median of several
    for _ in range(args.passes):
        start = time.perf_counter()
        for i in range(0, len(x), args.batch):
            augment(x[i : i + args.batch], cfg, g, mean, std)
        passes.append(len(x) / (time.perf_counter() - start))
    ours = statistics.median(passes)
    print(f"{'pipeline':<34}{'images/s':>12}")
    print(f"{'paper (torchvision PIL, per image)':<34}{baseline:>12,.0f}")
    print(f"{'modresnet (batched, on device)':<34}{ours:>12,.0f}")
    print(
        json.dumps(
            {
                "benchmark": "augment",
                "images": len(x),
                "threads": 1,
                "batch": args.batch,
                "passes": args.passes,
                "baseline_images_per_s": round(baseline, 1),
                "modresnet_images_per_s": round(ours, 1),
                "ratio": round(ours / baseline, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
