"""Serve a run, classify a few real CIFAR-10 test images over HTTP, print the answers next to
the true labels, and shut down. `python -m serve.demo RUN_DIR [--n 8] [--port 8000]`."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo(run: str | Path, n: int = 8, port: int | None = None, backend: str = "onnx",
         data_dir: str | None = None, print_fn=print) -> list[dict]:
    """Returns one {"true", "predicted", "probability"} per image (also printed)."""
    import dataclasses

    import ray
    from ray import serve

    from modresnet.checkpoint import load_model
    from modresnet.data import load_cifar10
    from modresnet.images import encode_png
    from serve.app import ServeArgs, deploy, start, wait_ready
    from serve.client import predict_files
    from serve.launch import connect

    loaded = load_model(run)
    data_cfg = dataclasses.replace(loaded.config.data, data_dir=data_dir or loaded.config.data.data_dir,
                                   subset=None, val_subset=None, test_subset=max(n, 10))
    cifar = load_cifar10(data_cfg)
    test, classes = cifar.test, cifar.classes
    port = port or _free_port()
    owns = connect(None, num_cpus=2)
    try:
        start("127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        deploy(ServeArgs(checkpoint=str(run), backend=backend, max_replicas=1))
        wait_ready(url, timeout=300)
        files = [(f"test{i}.png", encode_png(test.x[i])) for i in range(n)]
        answers = predict_files(url, files, top_k=1)
        rows = []
        print_fn(f"served {loaded.sha256[:12]} ({backend}) at {url}")
        print_fn(f"{'image':<11} {'true':<11} {'predicted':<11} probability")
        for i, answer in enumerate(answers):
            top = answer["top_k"][0]
            true = classes[int(test.y[i])]
            mark = "ok" if top["label"] == true else "--"
            print_fn(f"{answer['filename']:<11} {true:<11} {top['label']:<11} "
                     f"{100 * top['probability']:5.1f}%  {mark}")
            rows.append({"true": true, "predicted": top["label"], "probability": top["probability"]})
        correct = sum(r["true"] == r["predicted"] for r in rows)
        print_fn(f"{correct}/{len(rows)} correct over HTTP")
        return rows
    finally:
        serve.shutdown()
        if owns:
            ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch"])
    args = parser.parse_args()
    demo(args.run, args.n, args.port, args.backend)


if __name__ == "__main__":
    main()
