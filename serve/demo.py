"""Serve a run or a registered version (`models:/NAME@champion`), classify the whole CIFAR-10
test set over HTTP, check that the answers are the ones `modresnet evaluate` computes and
which version gave them (X-Model-Version), show a few of them, shut down, and (with
--pipeline) close `make demo` with a summary of what was searched, trained, registered and
served.

    python -m serve.demo RUN_DIR | models:/NAME@ALIAS [--storage DIR] [--n 8] [--port PORT]
                         [--pipeline PIPELINE_DIR]

A models:/ reference is read from the registry under --storage (or --registry URI, or
MLFLOW_TRACKING_URI). Ray's Python logs go to ray.log in the run's folder (for a registered
version: in --pipeline's folder, as serve-ray.log), not the console.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modresnet.errors import UserError
from serve.args import APP_NAME, HttpOptions, ServeArgs, registered

if TYPE_CHECKING:
    from rich.table import Table

CHUNK = ServeArgs.model_fields["max_images"].default  # images per POST: the app's most


class DemoError(UserError):
    """The served model is not the one the demo meant to show."""


@dataclass
class DemoResult:
    url: str
    sha256: str
    backend: str
    version: str  # the label every answer carried in X-Model-Version
    n: int
    http_acc: float  # accuracy of the served model's answers over HTTP
    local_acc: float  # accuracy `modresnet evaluate` computes (same checkpoint, no TTA)
    agree: int  # images whose HTTP label equals the local one
    rows: list[dict]  # the first --n images: true, predicted, probability


def _post(url: str, files: list[tuple[str, bytes]]) -> tuple[list[str], str]:
    """One POST /predict: its top-1 labels and the version that answered (X-Model-Version)."""
    import httpx

    from serve.client import ClientError

    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    try:
        r = httpx.post(f"{url}/predict", files=parts, params={"top_k": 1}, timeout=120)
    except httpx.HTTPError as err:
        raise ClientError(f"{url}/predict: cannot reach the server ({err})") from None
    if r.status_code != 200:
        raise ClientError(f"{url}/predict: HTTP {r.status_code}: {r.text[:200]}")
    labels = [a["top_k"][0]["label"] for a in r.json()["predictions"]]
    return labels, r.headers.get("x-model-version", "")


def _http_labels(url: str, pngs: list[bytes], workers: int = 4) -> tuple[list[str], set[str]]:
    """Every image's label over HTTP, and the versions that answered."""
    chunks = [
        [(f"test{i + j}.png", data) for j, data in enumerate(pngs[i : i + CHUNK])]
        for i in range(0, len(pngs), CHUNK)
    ]
    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(lambda files: _post(url, files), chunks))
    return [label for labels, _ in answers for label in labels], {v for _, v in answers}


def _served(
    target: str | Path, storage: str | None, registry: str | None
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to load and the ServeArgs fields naming it: a run as it is, a models:/
    reference fetched from the registry with its version label and lineage."""
    from modresnet.registry import is_ref, open_registry

    if not is_ref(str(target)):
        return Path(target), {"checkpoint": str(target)}
    reg = open_registry(registry, storage=storage)
    v = reg.get(str(target))
    folder = reg.fetch(v)
    return folder, {"checkpoint": str(folder), **registered(v)}


def demo(
    run: str | Path,
    n: int = 8,
    port: int | None = None,
    backend: str = "onnx",
    data_dir: str | None = None,
    print_fn=print,
    storage: str | None = None,
    registry: str | None = None,
    log_file: Path | None = None,
) -> DemoResult:
    """Serve `run` (a run folder or a models:/ reference) on 127.0.0.1, classify every test
    image over HTTP, compare with the local evaluation of the same checkpoint, print a few
    answers, shut down."""
    import ray
    from ray import serve

    from jobs.runtime import connect
    from modresnet.data import load_cifar10
    from modresnet.images import encode_png
    from modresnet.inference import Predictor
    from serve.client import wait_ready
    from serve.environment import INGRESS, serve_env
    from serve.launch import deploy, start
    from serve.ports import free_port

    checkpoint, served = _served(run, storage, registry)
    predictor = Predictor.from_path(checkpoint)  # exactly what `modresnet evaluate` loads
    loaded = predictor.loaded
    data_cfg = loaded.config.data.replace(
        data_dir=data_dir or loaded.config.data.data_dir,
        subset=None,
        val_subset=None,
        test_subset=None,
    )
    cifar = load_cifar10(data_cfg)
    test, classes = cifar.test, cifar.classes
    truth = [classes[int(i)] for i in test.y]

    def local_side() -> tuple[list[str], list[bytes]]:
        labels = [classes[int(i)] for i in predictor.probabilities(test.x).argmax(1)]
        return labels, [encode_png(test.x[i]) for i in range(len(test))]

    log_file = log_file or checkpoint / "ray.log"
    port = port or free_port()
    with ThreadPoolExecutor(1) as pool:
        # The local evaluation and the PNGs are made while Ray and Serve start (mostly waiting
        # on other processes): the serve step's wall time drops by about their cost.
        local = pool.submit(local_side)
        os.environ.update(serve_env(INGRESS[0]))  # the ingress `modresnet serve` starts with
        # its own Ray, even with RAY_ADDRESS set
        owns = connect("local", log_file=log_file, num_cpus=2) == "embedded"
        try:
            start(HttpOptions(port=port))
            url = f"http://127.0.0.1:{port}"
            deploy(ServeArgs.model_validate({**served, "backend": backend, "max_replicas": 1}))
            local_labels, pngs = local.result()
            wait_ready(url, timeout=300, sha256=loaded.sha256)
            label = served.get("version") or f"sha-{loaded.sha256[:12]}"
            print_fn(
                f"serving {label} ({loaded.sha256[:12]}, {backend}) at {url}: sending all "
                f"{len(pngs):,} test images as PNG files, {CHUNK} per POST /predict"
            )
            labels, versions = _http_labels(url, pngs)
        finally:
            if owns:
                # Delete the app (its replicas drain), then stop the Ray this process started.
                # serve.shutdown() would also kill the controller while its own
                # graceful_shutdown task runs, and Ray reports that task as failed ("will be
                # retried").
                try:
                    serve.delete(APP_NAME)
                finally:
                    ray.shutdown()
            else:
                serve.shutdown()

    rows = [
        {"file": f"test{i}.png", "true": truth[i], "predicted": labels[i]}
        for i in range(min(n, len(labels)))
    ]
    if rows:
        print_fn(f"{'image':<11} {'true':<11} {'over HTTP':<11}")
        for r in rows:
            mark = "ok" if r["predicted"] == r["true"] else "--"
            print_fn(f"{r['file']:<11} {r['true']:<11} {r['predicted']:<11} {mark}")
    total = len(labels)
    http_acc = sum(a == b for a, b in zip(labels, truth, strict=False)) / total
    local_acc = sum(a == b for a, b in zip(local_labels, truth, strict=False)) / total
    agree = sum(a == b for a, b in zip(labels, local_labels, strict=False))
    print_fn(
        f"over HTTP: {100 * http_acc:.2f}% of {total:,} test images correct; "
        f"`modresnet evaluate`: {100 * local_acc:.2f}%; the two agree on "
        f"{agree:,}/{total:,} images"
    )
    answered = ", ".join(sorted(versions))
    print_fn(f"every answer came from X-Model-Version: {answered}")
    if versions != {label}:
        raise DemoError(f"the answers came from {answered or 'no version'}, not {label}")
    return DemoResult(url, loaded.sha256, backend, label, total, http_acc, local_acc, agree, rows)


# --------------------------------------------------------------------------- summary


def _cli() -> str:
    """How to call modresnet from here: .venv/bin/modresnet when this Python is the venv's."""
    exe = Path(sys.executable).parent / "modresnet"
    if exe.exists():
        try:
            return os.path.relpath(exe)
        except ValueError:
            return str(exe)
    return "modresnet"


def summary_table(
    run_path: str | Path, result: DemoResult, pipeline: str | Path | None = None
) -> Table:
    from rich.table import Table

    from modresnet import config as configs
    from modresnet.rundir import RunDir

    run = RunDir(Path(run_path))
    cfg = configs.load_yaml(run.path / "config.yaml")
    config = configs.from_dict(cfg)
    flavor = next((k for k, m in configs.FLAVORS.items() if m == config.model), "custom")
    test = json.loads(run.test_file.read_text())
    history = run.read_metrics()
    how = "Ray Train" if (run.path / "ray").exists() else "in-process"
    train_n = config.data.subset or 50000 - config.data.val_size
    cli = _cli()

    table = Table(
        title="modresnet demo summary: a demo-sized run, not a real model",
        title_justify="left",
        show_header=False,
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    state = _pipeline_state(pipeline)
    if state is not None:
        took = ", ".join(
            f"{s['name']} {s['ended'] - s['started']:.0f}s"
            for s in state["stages"]
            if s.get("started") and s.get("ended")
        )
        table.add_row("pipeline", f"{state['settings']['name']}: {state['status']} ({took})")
        search = _stage(state, "search")
        table.add_row(
            "best search trial",
            f"{search['best_trial']}: validation {100 * search['best_val_acc']:.1f}% "
            f"({search['trials']} trials, {search['stopped_early']} stopped early by ASHA; "
            f"the search selects on validation, never on test)",
        )
    table.add_row(
        "trained",
        f"ModifiedResNet, {flavor} flavor, with {how}; recipe: "
        f"{config.optim.name} lr {config.optim.lr:g}, "
        f"{config.schedule.name} schedule",
    )
    table.add_row("data", f"{train_n:,} CIFAR-10 training images, {len(history)} epochs")
    table.add_row(
        "test accuracy",
        f"{100 * test['test_acc']:.2f}% on {test['n']:,} test images "
        f"(over HTTP {100 * result.http_acc:.2f}%, agreeing with "
        f"`evaluate` on {result.agree:,}/{result.n:,})",
    )
    table.add_row("learning curves", str(run.path / "curves.png"))
    if state is not None:
        promoted = _stage(state, "promote")
        table.add_row(
            "registered",
            f"{result.version}, champion ({promoted.get('how', '-')} promotion); "
            f"{cli} models show {state['settings']['model']}",
        )
    table.add_row(
        "served",
        f"{result.version} at {result.url} ({result.backend}; stopped when the demo ended)",
    )
    table.add_row(
        "a real model",
        f"{cli} train --preset paper --gpu --workers 1   (the paper's "
        f"2.78M-parameter model, 50 epochs, on a GPU)",
    )
    table.add_row(
        "a real pipeline",
        f"{cli} pipeline run cifar --preset paper --gpu --samples 16 --max-epochs 10 "
        f"--include-paper",
    )
    served = f"models:/{state['settings']['model']}@champion" if state else str(run.path)
    table.add_row("serve it", f"{cli} serve {served}   (then open http://127.0.0.1:8000)")
    table.add_row(
        "on a cluster",
        'README.md, "From laptop to cluster": '
        f'eval "$({cli} cluster up)", then {cli} jobs submit ...',
    )
    return table


def _pipeline_state(folder: str | Path | None) -> dict[str, Any] | None:
    if folder is None or not (Path(folder) / "pipeline.json").exists():
        return None
    state: dict[str, Any] = json.loads((Path(folder) / "pipeline.json").read_text())
    return state


def _stage(state: dict[str, Any], name: str) -> dict[str, Any]:
    out: dict[str, Any] = next(s for s in state["stages"] if s["name"] == name)["output"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a run folder, or models:/NAME@ALIAS")
    parser.add_argument("--n", type=int, default=8, help="answers to print (all are checked)")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch"])
    parser.add_argument("--storage", default=None, help="where the registry of models:/ lives")
    parser.add_argument("--registry", default=None, help="an MLflow tracking URI instead")
    parser.add_argument("--pipeline", default=None, help="the demo's pipeline, for the summary")
    args = parser.parse_args()

    from rich.console import Console

    console = Console()
    pipeline = Path(args.pipeline) if args.pipeline else None
    try:
        result = demo(
            args.run,
            args.n,
            args.port,
            args.backend,
            print_fn=lambda line: console.print(line, highlight=False, soft_wrap=True),
            storage=args.storage,
            registry=args.registry,
            log_file=pipeline / "serve-ray.log" if pipeline else None,
        )
        if result.agree != result.n:
            console.print(
                f"[bold red]error:[/] the served model disagrees with `modresnet "
                f"evaluate` on {result.n - result.agree:,} test images"
            )
            sys.exit(1)
        run = pipeline / "retrain" if pipeline else Path(args.run)
        console.print(summary_table(run, result, pipeline))
    except UserError as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
