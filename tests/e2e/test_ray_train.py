"""Ray Train V2 path end to end, on real Ray and real CIFAR-10 subsets; no mocks.

Ordering matters for runtime on 2 cores: the tests that start their own Ray (CLI
subprocesses, the DDP check without Ray) run first, then the tests that share one
module-scoped embedded Ray. Workers spread over several nodes are checked on a real local
cluster in test_cluster.py; a driver killed and the same command resuming into the same W&B
run, in test_storage.py (with its run in object storage).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch
from helpers.ports import free_port
from helpers.processes import raylet_pids, train_workers_under
from helpers.ray_train import (
    CLI,
    REPO,
    TINY,
    assert_run_dir,
    env,
    tiny_config,
)

from modresnet import config as configs

pytestmark = pytest.mark.ray


# ------------------------------------------------------------------ (g) fast user errors


def test_unreachable_address_fails_fast(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [*CLI, "train", *TINY, "--storage", str(tmp_path), "--address", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no Ray cluster reachable" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert time.perf_counter() - start < 30


def test_unwritable_storage_fails_fast(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = subprocess.run(
        [*CLI, "train", *TINY, "--storage", str(blocker / "runs")],
        capture_output=True,
        text=True,
        env=env(),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--storage: cannot write" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# ------------------------------------------------------------------ (b) DDP == big batch


class _EvalBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics (never updated)."""

    def train(self, mode: bool = True):
        super().train(False)
        return self


def _freeze_bn(model: torch.nn.Module) -> torch.nn.Module:
    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.BatchNorm2d):
            bn = _EvalBatchNorm(child.num_features)
            bn.load_state_dict(child.state_dict())
            setattr(model, name, bn)
        else:
            _freeze_bn(child)
    return model


def _ddp_config(data_dir, batch: int) -> configs.Config:
    aug_off = {
        f"augment.{k}": 0
        for k in (
            "crop_padding",
            "flip",
            "brightness",
            "contrast",
            "saturation",
            "hue",
            "rotation",
            "translate",
            "cutout",
        )
    }
    return configs.resolve(
        "debug",
        overrides={
            "data.data_dir": str(data_dir),
            "train.batch_size": batch,
            "train.lr_scaling": "none",
            "optim.name": "sgd",
            "optim.lr": 0.05,
            "optim.weight_decay": 0.0,
            "schedule.name": "constant",
            "train.channels_last": False,
            **aug_off,
        },
    )


def _train_one_epoch(rank: int, world: int, port: int, data_dir: str, batch: int, x, y, out):
    import torch.distributed as dist

    from modresnet import engine, parallel
    from modresnet.data import Split
    from modresnet.model import build_model

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    config = _ddp_config(data_dir, batch)
    torch.manual_seed(0)
    model = _freeze_bn(build_model(config.model))
    wrap = (lambda m: torch.nn.parallel.DistributedDataParallel(m)) if world > 1 else (lambda m: m)
    state = engine.build_state(config, model, len(y), wrap=wrap)
    metrics = engine.train_one_epoch(state, Split(x, y), config, torch.device("cpu"))
    if rank == 0:
        torch.save(
            {
                "weights": {
                    k: v.clone() for k, v in parallel.unwrap(state.model).state_dict().items()
                },
                "loss": metrics["train_loss"],
                "images": metrics["train_images"],
            },
            out,
        )
    if world > 1:
        # Both ranks leave together: a rank that tears gloo down while its peer still writes
        # the result aborts in gloo's destructor ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()


def test_ddp_two_workers_match_one_worker_at_double_batch(tmp_path, small_cifar, data_dir):
    """2 workers at batch B take the same optimizer steps as 1 worker at batch 2B.

    Each rank's step-s batch is the even/odd half of the same 2B-slice of the shared epoch
    permutation, and DDP averages the two equal-size mean gradients, so the update equals the
    2B mean gradient. BatchNorm is the one place the two differ in train mode (each rank
    normalises with its own B-sample batch statistics, and DDP broadcasts rank 0's buffers),
    so the check swaps every BatchNorm for one that normalises with its (fixed) running
    statistics: then every weight must agree up to float32 all-reduce order. Augmentation
    is off and lr_scaling is none (same lr). Tolerance: atol 1e-5 + rtol 1e-4 per weight.
    """
    import torch.multiprocessing as mp

    x, y = small_cifar.train.x[:256], small_cifar.train.y[:256]
    port, batch = free_port(), 32
    two, one = tmp_path / "two.pt", tmp_path / "one.pt"
    mp.spawn(_train_one_epoch, args=(2, port, str(data_dir), batch, x, y, str(two)), nprocs=2)
    _train_one_epoch(0, 1, port, str(data_dir), 2 * batch, x, y, str(one))
    a, b = torch.load(two), torch.load(one)
    assert a["images"] == b["images"] == 256
    assert abs(a["loss"] - b["loss"]) < 1e-4
    compared = 0
    for name, wa in a["weights"].items():
        if wa.is_floating_point() and ("conv" in name or "linear" in name or "shortcut.0" in name):
            torch.testing.assert_close(wa, b["weights"][name], atol=1e-5, rtol=1e-4, msg=name)
            compared += 1
    assert compared >= 5
    first = next(k for k in a["weights"] if "conv" in k)
    torch.manual_seed(0)
    from modresnet.model import build_model

    init = build_model(_ddp_config(data_dir, batch).model).state_dict()[first]
    assert not torch.allclose(init, a["weights"][first])  # training did move the weights


# ------------------------------------------------------------ shared embedded Ray (a, c, g)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def test_killed_worker_is_replaced_and_every_epoch_recorded_once(ray_local, tmp_path, data_dir):
    """Two workers on a Ray this test did not start: one is SIGKILLed after the first epoch;
    Ray Train replaces it, the driver still gets one line per epoch, the run directory is
    complete, and the caller's Ray is left running."""
    from jobs.train.driver import RayOptions, train_ray

    epochs, raylet = 5, raylet_pids(ray_local._private.worker._global_node)[0]
    killed: list[int] = []
    seen: list[int] = []

    def on_epoch(record: dict) -> None:
        seen.append(record["epoch"])
        if not killed:  # first epoch reported and checkpointed: kill -9 one worker mid-run
            victims = train_workers_under(raylet)
            assert len(victims) == 2, victims
            os.kill(victims[-1], signal.SIGKILL)
            killed.append(record["epoch"])

    result = train_ray(
        tiny_config(data_dir, epochs=epochs, **{"data.subset": 600}),
        tmp_path / "kill",
        RayOptions(workers=2, max_failures=3, wandb=False),
        on_epoch_done=on_epoch,
        info=lambda _: None,
    )
    assert killed and killed[0] < epochs
    assert seen == list(range(1, epochs + 1))  # the driver got one line per epoch
    assert [r["epoch"] for r in result.history] == list(range(1, epochs + 1))
    assert_run_dir(tmp_path / "kill", epochs)
    assert ray_local.is_initialized()  # a Ray it did not start is left running


def test_more_workers_than_cpus_is_a_user_error(ray_local, tmp_path):
    from typer.testing import CliRunner

    from modresnet.cli import app

    start = time.perf_counter()
    res = CliRunner().invoke(app, ["train", *TINY, "--workers", "3", "--storage", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "needs 3 CPUs but the Ray cluster has 2" in res.output
    assert time.perf_counter() - start < 30
    assert ray_local.is_initialized()
