"""GET /model: the checkpoint a replica serves (sha256, classes, config, accuracies) and that
replica's batching statistics."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request

from modresnet.rundir import test_result
from serve.http.errors import ERRORS

if TYPE_CHECKING:
    from serve.service import Service


def register(app: FastAPI, svc: Service) -> None:
    def model_info(request: Request) -> dict:
        """The checkpoint this replica serves, and its batching statistics."""
        svc.keys.check(request)
        loaded = svc.loaded
        cfg = loaded.config
        metrics = loaded.meta.get("metrics", {})
        test = test_result(loaded.path, loaded.sha256) or {}
        return {
            "sha256": loaded.sha256,
            "classes": list(svc.classes),
            "path": str(loaded.path),
            "epoch": loaded.meta.get("epoch"),
            "val_acc": metrics.get("val_acc"),
            "test_acc": test.get("test_acc"),
            "config": {
                "model": {k: v for k, v in cfg.to_dict()["model"].items()},
                "mean": list(cfg.data.mean),
                "std": list(cfg.data.std),
            },
            "backend": svc.backend.name,
            "load_s": round(svc.load_s, 3),
            "replica": {
                "pid": os.getpid(),
                "requests": svc.requests,
                "batch_sizes": {str(k): v for k, v in sorted(svc.batch_sizes.items())},
                "max_batch_size": svc.args.max_batch_size,
                "batch_wait_timeout_s": svc.args.batch_wait_timeout_s,
            },
        }

    app.add_api_route("/model", model_info, methods=["GET"], responses=ERRORS)
