"""The Ray Train worker: what each of the data-parallel workers of `jobs/train/driver.py` runs.

It assembles the run as the local path does (`modresnet.assembly.assemble`; DDP from
`ray.train.torch.prepare_model` goes in as `wrap`), resumes from `ray.train.get_checkpoint()`
and reports every epoch to Ray with a checkpoint folder in the core format (rank 0 writes it).
Rank 0 logs to W&B; online, with its node's own WANDB_API_KEY, checked before anything else.
Tune's data-parallel trials run the same function.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from jobs.runtime import check_wandb_key
from modresnet import checkpoint
from modresnet.assembly import assemble
from modresnet.config import Config, from_dict
from modresnet.engine import Record, TrainingState


def wandb_init(wb: dict, config: dict):
    """Open the run's W&B run. Offline, W&B's own banner (a dozen lines) stays quiet: the
    driver already said in one line where the files go and how to upload them."""
    import wandb

    return wandb.init(
        project=wb["project"],
        id=wb["id"],
        name=wb["name"],
        resume="allow",
        dir=wb["dir"],
        config=config,
        mode=wb["mode"] or None,
        settings=wandb.Settings(silent=wb["mode"] == "offline"),
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, int]:
    config: Config = from_dict(loop_config["config"])
    import ray.train
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    rank = ray.train.get_context().get_world_rank()
    wb = loop_config.get("wandb")
    if wb and rank == 0 and wb["mode"] is None:  # online: with this node's own key
        check_wandb_key("the Ray Train worker of rank 0")
    resumed = ray.train.get_checkpoint()
    with resumed.as_directory() if resumed is not None else nullcontext() as d:
        assembled = assemble(
            config,
            get_device(),
            cpus=loop_config["threads"],
            wrap=lambda m: prepare_model(m, move_to_device=False),
            resume_from=Path(d) if d is not None else None,
        )

    wandb_run = wandb_init(wb, config.to_dict()) if wb and rank == 0 else None

    def on_epoch(record: Record, state: TrainingState) -> None:
        if wandb_run is not None:
            wandb_run.log(record, step=record["epoch"])
        with tempfile.TemporaryDirectory(prefix="modresnet-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                checkpoint.save_resumable(Path(tmp), state, config, assembled.classes, record)
                ckpt = Checkpoint.from_directory(tmp)
            ray.train.report(dict(record), checkpoint=ckpt)  # a barrier: every rank reports

    try:
        assembled.fit(on_epoch)
    finally:
        if wandb_run is not None:
            wandb_run.finish()
    return {"epochs": assembled.state.epoch}
