"""Host reads per training step, the engine against the loop it replaced.

On a GPU every read of a device value on the host (`float(loss)` for a progress bar, the
`if n_averaged == 0` inside torch's AveragedModel) waits for all queued kernels, so a
per-step read keeps the GPU idle while Python prepares the next step. Here both loops run
the `fast` recipe (SGD-Nesterov, one-cycle, label smoothing, EMA 0.999) on the same images:

- baseline: the engine's step as it was, `float(loss)` per step and AveragedModel's EMA;
- engine: `engine.train_one_epoch` as it is (loss handed on as a tensor, WeightEMA).

Reads are counted with a TorchFunctionMode (the calls that sync on CUDA); throughput is
timed without it, interleaved, best of --repeats. On a CPU a read costs nothing, so the
images/s are close; the count is what carries to the GPU.

    .venv/bin/python tests/benchmarks/host_syncs.py [--steps 20] [--flavor debug]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.overrides import TorchFunctionMode

from modresnet import config as configs
from modresnet import engine, optim
from modresnet.augment import augment
from modresnet.data import Split, load_cifar10
from modresnet.model import FLAVORS, build_model

SYNCING = {
    torch.Tensor.item,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.tolist,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
}


class CountReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCING:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def baseline_epoch(cfg: configs.Config, train: Split) -> None:
    torch.manual_seed(0)
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    ema = AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True
    )
    opt = optim.build_optimizer(cfg, model, 1)
    g = torch.Generator().manual_seed(0)
    model.train()
    for i in range(0, len(train), cfg.train.batch_size):
        x = augment(
            train.x[i : i + cfg.train.batch_size], cfg.augment, g, cfg.data.mean, cfg.data.std
        )
        x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(
            model(x),
            train.y[i : i + cfg.train.batch_size],
            label_smoothing=cfg.train.label_smoothing,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        float(loss.detach())  # the progress bar's per-step read


def engine_epoch(cfg: configs.Config, train: Split) -> None:
    torch.manual_seed(0)
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    state = engine.build_state(cfg, model, len(train))
    engine.train_one_epoch(state, train, cfg, torch.device("cpu"), on_batch=lambda s, n, loss: None)


def measure(fn, cfg: configs.Config, train: Split, steps: int) -> dict:
    fn(cfg, Split(train.x[: cfg.train.batch_size], train.y[: cfg.train.batch_size]))  # warm-up
    small = Split(train.x[: cfg.train.batch_size * 2], train.y[: cfg.train.batch_size * 2])
    counts = []
    for split in (small, train):
        mode = CountReads()
        with mode:
            fn(cfg, split)
        counts.append(mode.reads)
    return {"reads_per_step": (counts[1] - counts[0]) / (steps - 2)}


def best_rate(fn, cfg: configs.Config, train: Split) -> float:
    start = time.perf_counter()
    fn(cfg, train)
    return len(train) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--flavor", default="debug", choices=list(FLAVORS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = configs.resolve(
        "fast", overrides={"model.flavor": args.flavor, "train.batch_size": args.batch}
    )
    data = load_cifar10(cfg.data).train
    train = Split(data.x[: args.steps * args.batch], data.y[: args.steps * args.batch])
    before = measure(baseline_epoch, cfg, train, args.steps)
    after = measure(engine_epoch, cfg, train, args.steps)
    rates: dict[str, list[float]] = {"baseline": [], "engine": []}
    for _ in range(args.repeats):  # interleaved, best of each: other load hits both alike
        rates["baseline"].append(best_rate(baseline_epoch, cfg, train))
        rates["engine"].append(best_rate(engine_epoch, cfg, train))
    before["images_per_s"], after["images_per_s"] = max(rates["baseline"]), max(rates["engine"])
    print(
        f"baseline (float(loss) + AveragedModel): {before['reads_per_step']:.1f} host reads/step, "
        f"{before['images_per_s']:,.1f} images/s"
    )
    print(
        f"engine:                                 {after['reads_per_step']:.1f} host reads/step, "
        f"{after['images_per_s']:,.1f} images/s"
    )
    print(
        json.dumps(
            {
                "benchmark": "host_syncs",
                "flavor": args.flavor,
                "batch": args.batch,
                "steps": args.steps,
                "threads": torch.get_num_threads(),
                "baseline": before,
                "engine": after,
            }
        )
    )


if __name__ == "__main__":
    main()
