"""What every command module of the CLI shares: the consoles, the one way a user error ends
a command (one red line, exit 2), and the output more than one command prints. Imports
neither torch nor Ray, so `modresnet --help` stays fast."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console

from modresnet import config as configs
from modresnet.errors import UserError

console = Console()
err_console = Console(stderr=True)

# train, tune and pipeline share one W&B rule (jobs.runtime.wandb_policy).
Wandb = Annotated[
    bool,
    typer.Option(
        "--wandb/--no-wandb",
        help="Log to W&B: online with WANDB_API_KEY, else offline; "
        "--no-wandb or WANDB_MODE=disabled turns it off.",
    ),
]

# Every command that runs on Ray joins a cluster by the one rule of jobs/runtime.py.
RayAddress = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster HOST:PORT or auto (else $RAY_ADDRESS, else an embedded local Ray)."
    ),
]

P = ParamSpec("P")
R = TypeVar("R")


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn user-fixable errors into one red line and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def say(line: object) -> None:
    """One line as written: no highlighting, no wrapping (paths stay copyable)."""
    console.print(line, highlight=False, soft_wrap=True)


def default_name(preset: str) -> str:
    return f"{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def describe(cfg: configs.Config) -> str:
    """What a run trains, in one line: model flavor and size, data, epochs, recipe."""
    from modresnet.model import build_model

    flavor = next((name for name, m in configs.FLAVORS.items() if m == cfg.model), "custom")
    params = sum(p.numel() for p in build_model(cfg.model).parameters())
    train_n = cfg.data.subset or 50000 - cfg.data.val_size
    test_n = cfg.data.test_subset or 10000
    return (
        f"training ModifiedResNet ({flavor} flavor, {params:,} parameters) on {train_n:,} "
        f"CIFAR-10 training images for {cfg.train.epochs} epochs ({cfg.optim.name} lr "
        f"{cfg.optim.lr:g}, {cfg.schedule.name} schedule, batch {cfg.train.batch_size} per "
        f"worker); test set: {test_n:,} images"
    )


def epoch_line(record: dict[str, Any], total: int) -> str:
    return (
        f"epoch {record['epoch']:>3}/{total}  train {record['train_loss']:.3f} / "
        f"{100 * record['train_acc']:5.1f}%  val {record['val_loss']:.3f} / "
        f"{100 * record['val_acc']:5.1f}%  lr {record['lr']:.2e}  "
        f"{record['images_per_s']:.0f} img/s  {record['epoch_s']:.1f}s"
    )


RUN_FILES = ("metrics.jsonl", "curves.png", "confusion.png", "best/", "last/", "test.json")


def print_run_result(
    test: dict[str, Any],
    outputs: object,
    local_dir: Path,
    extra_files: Sequence[str] = (),
    how: str = "",
) -> None:
    """The end of a training run: test accuracy, where its files are, the learning curves.
    `outputs` is where the run lives (an s3:// URI or `local_dir`); `how` ends the first line."""
    console.print(
        f"[bold green]test accuracy {100 * test['test_acc']:.2f}%[/] on "
        f"{test['n']:,} test images (best epoch {test['epoch']}, validation "
        f"{100 * test['val_acc']:.2f}%){how}",
        soft_wrap=True,
    )
    say(f"outputs: {outputs}  ({', '.join((*RUN_FILES, *extra_files))})")
    say(f"learning curves: {local_dir / 'curves.png'}")


def print_predictions(
    images: Sequence[Path], results: Sequence[Sequence[dict[str, Any]]], as_json: bool
) -> None:
    """Top-k classes per image (`{"label", "probability"}` each) as JSON or as a table."""
    import json

    from rich.table import Table

    if as_json:
        print(
            json.dumps(
                [{"image": str(p), "top_k": list(r)} for p, r in zip(images, results, strict=True)],
                indent=2,
            )
        )
        return
    table = Table()
    table.add_column("image", overflow="fold")
    for i in range(len(results[0])):
        table.add_column(f"#{i + 1}")
    for path, r in zip(images, results, strict=True):
        table.add_row(str(path), *[f"{x['label']} {100 * x['probability']:.1f}%" for x in r])
    console.print(table)
