"""GET /model: the versions a replica serves (label, weights sha256, accuracies, lineage, the
share of requests each gets), the canary's live share and phase, the answering version's
checkpoint (the primary's unless X-Model-Version pins another) and that replica's batching
statistics."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from serve.http.errors import ERRORS

if TYPE_CHECKING:
    from serve.service import Service, Version


def accuracies(version: Version) -> dict[str, Any]:
    """val_acc, test_acc and test_n of a version: from its run's files where they sit beside
    the weights, else from what the registry recorded (its lineage)."""
    recorded = version.lineage
    metrics = version.loaded.meta.get("metrics", {})
    return {
        "val_acc": metrics.get("val_acc", recorded.get("val_acc")),
        "test_acc": version.test.get("test_acc", recorded.get("test_acc")),
        "test_n": version.test.get("n", recorded.get("test_n")),
    }


def versions(svc: Service) -> list[dict[str, Any]]:
    """Each served version as /model and the page show it."""
    share = {svc.primary.label: 1 - svc.share}
    if svc.canary is not None:
        share[svc.canary.label] = svc.share
    return [
        {
            "label": v.label,
            "role": "canary" if v is svc.canary else "primary",
            "sha256": v.loaded.sha256,
            **accuracies(v),
            "lineage": v.lineage,
            "path": str(v.loaded.path),
            "share": round(share[v.label], 6),
            "backend": v.backend.name,
        }
        for v in svc.versions.values()
    ]


def register(app: FastAPI, svc: Service) -> None:
    def model_info(request: Request) -> dict:
        """The versions this replica serves, the answering one's checkpoint, its batching."""
        svc.keys.check(request)
        version = svc.choose(request, draw=False)
        loaded = version.loaded
        cfg = loaded.config
        return {
            "sha256": loaded.sha256,
            "version": version.label,
            "classes": list(svc.classes),
            "path": str(loaded.path),
            "epoch": loaded.meta.get("epoch"),
            **{k: v for k, v in accuracies(version).items() if k != "test_n"},
            "config": {
                "model": {k: v for k, v in cfg.to_dict()["model"].items()},
                "mean": list(cfg.data.mean),
                "std": list(cfg.data.std),
            },
            "backend": version.backend.name,
            "versions": versions(svc),
            "canary": None
            if svc.canary is None
            else {"share": svc.share, "state": svc.canary_state},
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
