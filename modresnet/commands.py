"""The core's commands: `summary`, `evaluate`, `predict`, and the in-process training that
`train --local` runs. Torch is imported when a command runs, not when the CLI starts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modresnet import config as configs
from modresnet.cli_common import (
    console,
    epoch_line,
    print_predictions,
    print_run_result,
    user_errors,
)
from modresnet.cli_config import DataDir
from modresnet.errors import UserError

# Asks a running server (`predict --url`): (url, images, k) -> top-k {"label", "probability"}.
AskServer = Callable[[str, Sequence[Path], int], list[list[dict[str, Any]]]]

Images = Annotated[list[Path], typer.Argument(help="PNG/JPEG/... files of any size and mode.")]
CHECKPOINT_HELP = "Run directory, checkpoint folder, or models:/NAME@ALIAS (or /VERSION)."
Checkpoint = Annotated[Path | None, typer.Option(help=CHECKPOINT_HELP)]
Registry = Annotated[
    str | None,
    typer.Option(
        help="MLflow registry a models:/ reference names (default: MLFLOW_TRACKING_URI, else "
        "the embedded one under the storage root)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Url = Annotated[
    str | None,
    typer.Option(
        help="Ask a running `modresnet serve` at this URL instead of loading a checkpoint (API key "
        "from $MODRESNET_API_KEY)."
    ),
]


@user_errors
def summary(
    flavor: Annotated[str, typer.Option(help=" | ".join(configs.FLAVORS))] = "paper",
) -> None:
    """Per-layer table of ModifiedResNet and its memory totals (the paper's Figure 2)."""
    from modresnet.model import build_model
    from modresnet.summary import summarize

    s = summarize(build_model(configs.flavor(flavor, "--flavor")))
    table = Table(title=f"ModifiedResNet ({flavor})")
    table.add_column("Layer (type)")
    table.add_column("Output Shape")
    table.add_column("Param #", justify="right")
    for row in s.rows:
        table.add_row(row.name, str(list(row.output_shape)), f"{row.params:,}")
    console.print(table)
    console.print(
        f"Total params: {s.total_params:,}\nTrainable params: {s.trainable_params:,}\n"
        f"Non-trainable params: {s.total_params - s.trainable_params:,}\n"
        f"Input size (MB): {s.input_mb:.2f}\n"
        f"Forward/backward pass size (MB): {s.forward_backward_mb:.2f}\n"
        f"Params size (MB): {s.params_mb:.2f}\n"
        f"Estimated Total Size (MB): {s.total_mb:.2f}"
    )


def train_in_process(cfg: configs.Config, run_path: Path, resume: bool) -> None:
    """`train --local`: the engine in this process, with a progress bar per epoch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from modresnet.local import train_local

    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = progress.add_task("train", total=None, epoch=1, loss=float("nan"))
    last_loss_read = [0.0]

    def on_batch(step: int, steps: int, loss: Any) -> None:
        now = time.monotonic()  # reading the loss waits for the GPU: a few times a second
        if now - last_loss_read[0] > 0.5 or step == steps:
            last_loss_read[0] = now
            progress.update(task, completed=step, total=steps, loss=float(loss))
        else:
            progress.update(task, completed=step, total=steps)

    def on_epoch(record: dict[str, Any]) -> None:
        progress.console.print(
            epoch_line(record, cfg.train.epochs), highlight=False, soft_wrap=True
        )
        progress.update(task, completed=0, epoch=record["epoch"] + 1)

    with progress:
        result = train_local(
            cfg, run_path, resume=resume, on_batch=on_batch, on_epoch_done=on_epoch
        )
    print_run_result(result.test, result.run.path, result.run.path)


def local_run(value: Path, registry: str | None = None) -> Path:
    """A RUN/--checkpoint argument -> a local folder: a models:/ reference is fetched from the
    registry, a run in object storage (s3://, gs://) into the local cache."""
    import os

    from modresnet.registry.refs import is_ref
    from modresnet.storage import local_run as fetch

    if is_ref(os.fspath(value)):
        from modresnet.registry import resolve_checkpoint

        return resolve_checkpoint(os.fspath(value), registry)[0]
    fetched = fetch(value)
    return value if fetched is None else Path(fetched)


def _test_set_metrics(
    checkpoint: Path, tta: bool, data_dir: str | None, subset: int | None, registry: str | None
) -> dict[str, Any]:
    """The checkpoint scored on the test set, as a finished run's test.json is."""
    import torch

    from modresnet.checkpoint import load_model
    from modresnet.data import load_cifar10
    from modresnet.evaluation import evaluate_checkpoint, split_md5

    loaded = load_model(local_run(checkpoint, registry))
    data_cfg = loaded.config.data.replace(
        data_dir=data_dir, test_subset=subset, subset=None, val_subset=None
    )
    test = load_cifar10(data_cfg).test
    scores = evaluate_checkpoint(loaded, test, torch.device("cpu"), tta=tta)
    return {
        "checkpoint": str(loaded.path),
        "sha256": loaded.sha256,
        "n": scores.n,
        "test_md5": split_md5(test),
        "tta": tta,
        "test_acc": scores.acc,
        "test_loss": scores.loss,
    }


@user_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help=CHECKPOINT_HELP)],
    tta: Annotated[bool, typer.Option(help="Average with the mirrored image.")] = False,
    data_dir: DataDir = None,
    subset: Annotated[int | None, typer.Option(help="Stratified number of test images.")] = None,
    registry: Registry = None,
) -> None:
    """Evaluate a checkpoint on the CIFAR-10 test set; prints JSON."""
    print(json.dumps(_test_set_metrics(checkpoint, tta, data_dir, subset, registry), indent=2))


def _predict_local(
    images: Sequence[Path], checkpoint: Path, top_k: int, registry: str | None
) -> list[list[dict[str, Any]]]:
    import torch

    from modresnet.images import ImageError, decode_image
    from modresnet.inference import Predictor

    decoded = []
    for path in images:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise UserError(f"{path}: cannot read ({err.strerror})") from None
        try:
            decoded.append(decode_image(data))
        except ImageError as err:
            raise ImageError(f"{path}: {err}") from None
    predictor = Predictor.from_path(local_run(checkpoint, registry))
    results = predictor.top_k(predictor.probabilities(torch.stack(decoded)), top_k)
    return [[{"label": r.label, "probability": r.probability} for r in rs] for rs in results]


def predict_command(ask_server: AskServer) -> Callable[..., None]:
    """`predict`, with `ask_server` behind --url (the composition root passes Serve's client)."""

    @user_errors
    def predict(
        images: Images,
        checkpoint: Checkpoint = None,
        top_k: Annotated[int, typer.Option(help="Classes to show per image.")] = 3,
        as_json: AsJson = False,
        url: Url = None,
        registry: Registry = None,
    ) -> None:
        """Classify image files with a checkpoint, or over HTTP with --url."""
        if url is not None and checkpoint is not None:
            raise UserError("pass either --checkpoint (local) or --url (a server), not both")
        if url is not None:
            results = ask_server(url, images, top_k)
        elif checkpoint is None:
            raise UserError("predict needs --checkpoint RUN_OR_CHECKPOINT or --url URL")
        else:
            results = _predict_local(images, checkpoint, top_k, registry)
        print_predictions(images, results, as_json)

    return predict
