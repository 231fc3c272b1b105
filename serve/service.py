"""One replica's state: the versions it serves (the primary one and, during a canary, a second),
each with its model, backend (on its GPU, if it has one) and dynamic batcher; the decode pool,
the API keys, the admission of requests, its Prometheus series and the counters /model reports.
Free of Serve's deployment machinery and of HTTP routes (those are the protocols',
serve/protocols/), so tests run it in-process with `make_api(Service(args))`; serve/app.py
wraps the same class as the Serve ingress.

Which version answers is decided here, per request (`choose`): a request naming a served label
in X-Model-Version gets that one; any other gets the canary with the probability of the live
share (a uniform draw), else the primary. The live share comes from the app's traffic table
(serve/canary/traffic.py), polled in the background while a canary is served in Serve."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request

from modresnet.checkpoint import LoadedModel, load_model
from modresnet.rundir import test_result
from serve.args import ModelArgs, ServeArgs
from serve.backends import Backend, load_backend
from serve.batcher import Batcher
from serve.decode import DecodePool
from serve.http.asgi import make_api
from serve.http.auth import ApiKeys
from serve.http.errors import ApiError
from serve.http.gate import Admission
from serve.metrics import VERSION_SCOPE_KEY, for_replica, in_replica

GPU_WARM_UP_BATCHES = 3
VERSION_HEADER = "X-Model-Version"
PIN_KEY = VERSION_HEADER.lower().encode()  # ASGI header names are lower-case bytes
CHAOS_ERROR = "chaos: fail_rate of this version"


class ChaosError(RuntimeError):
    """A batch failed on purpose (ModelArgs.fail_rate): not the replica's health."""


def default_label(sha256: str) -> str:
    """The label of a version given none: its weights' sha256, short."""
    return "sha-" + sha256[:12]


@dataclass
class Version:
    """One served version in a replica: its label, weights, backend and batcher."""

    label: str
    loaded: LoadedModel
    backend: Backend
    lineage: dict[str, Any]
    fail_rate: float
    test: dict[str, Any]
    batcher: Batcher[torch.Tensor, np.ndarray] = field(init=False)
    failures: int = 0


class Service:
    def __init__(self, args: dict) -> None:
        self.args = ServeArgs.model_validate(args)
        self.keys = ApiKeys(self.args)  # first: fail before the slow model load
        torch.set_num_threads(self.args.threads)
        start = time.perf_counter()
        primary = ModelArgs(
            checkpoint=self.args.checkpoint, version=self.args.version, lineage=self.args.lineage
        )
        self.primary = self._load(primary)
        self.canary = self._load(self.args.canary) if self.args.canary else None
        self.load_s = time.perf_counter() - start
        if self.canary and self.canary.label == self.primary.label:
            raise ValueError(f"the canary has the primary's label {self.primary.label!r}")
        if self.canary and self.canary.loaded.classes != self.primary.loaded.classes:
            raise ValueError("the canary classifies other classes than the primary")
        self.versions = {v.label: v for v in (self.primary, self.canary) if v is not None}
        self.classes = self.primary.loaded.classes
        self.share = self.args.canary_share if self.canary else 0.0
        self.canary_state: dict[str, Any] = {}
        self.decoder = DecodePool(
            self.args.decode_workers,
            self.args.decode_timeout_s,
            self.args.max_pixels,
            self.args.request_pixels,
        )
        self.metrics = for_replica(
            self.args.metrics,
            models=[(v.loaded.sha256, v.backend.name, v.label) for v in self.versions.values()],
            max_replicas=self.args.max_replicas,
        )
        self.admission = Admission(self.args.max_ongoing_requests, self.args.max_queued_requests)
        for version in self.versions.values():
            version.batcher = Batcher(
                self._runner(version),
                self.args.max_batch_size,
                self.args.batch_wait_timeout_s,
                observe=self.metrics.batch,
            )
        self.batch_sizes: Counter[int] = Counter()
        self.requests = 0
        if self.canary and in_replica():
            threading.Thread(target=self._poll_share, daemon=True).start()

    def _load(self, model: ModelArgs) -> Version:
        loaded = load_model(model.checkpoint)
        device = "cuda" if self.args.gpus_per_replica else "cpu"
        backend = load_backend(self.args.backend, loaded, self.args.threads, device)
        if device == "cuda":  # CUDA context, kernels and allocator ready before Serve's "ready"
            warm = torch.zeros(self.args.max_batch_size, 3, 32, 32, dtype=torch.uint8)
            for _ in range(GPU_WARM_UP_BATCHES):
                backend.probabilities(warm)
        return Version(
            label=model.version or default_label(loaded.sha256),
            loaded=loaded,
            backend=backend,
            lineage=model.lineage,
            fail_rate=model.fail_rate,
            test=test_result(loaded.path, loaded.sha256) or {},
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self)

    def _poll_share(self) -> None:
        """The live canary share from the traffic table, every POLL_S; a failed read keeps the
        last share. A share set for another candidate than this replica's is not its own."""
        import ray
        from ray import serve

        from serve.canary.traffic import POLL_S, traffic_table

        assert self.canary is not None
        app = serve.get_replica_context().app_name
        table = None
        while True:
            try:
                table = table or traffic_table()
                share, state = ray.get(table.get_share.remote(app), timeout=5)
                if share is not None and state.get("candidate", self.canary.label) == (
                    self.canary.label
                ):
                    self.share, self.canary_state = share, state
            except Exception:  # noqa: BLE001 - the table is briefly unreachable: keep the share
                table = None
            time.sleep(POLL_S)

    @property
    def failures(self) -> int:
        return max(v.failures for v in self.versions.values())

    def check_health(self) -> None:
        """Serve's replica health check: unhealthy after three failed batches in a row of one
        version (not counting the ones its fail_rate failed on purpose)."""
        if self.failures >= 3:
            raise RuntimeError(f"{self.failures} inference failures in a row")

    def choose(self, request: Request, draw: bool = True) -> Version:
        """The version that answers `request`: the one its X-Model-Version names (an unknown
        label: 404 naming the served ones); else, when `draw`, the canary with probability
        `share`; else the primary. Recorded in the request's scope, for the response header
        and the metrics (serve/http/gate.py)."""
        pinned = next((v for k, v in request.scope["headers"] if k == PIN_KEY), None)
        if pinned is not None:
            version = self.versions.get(pinned.decode("latin-1").strip())
            if version is None:
                served = ", ".join(self.versions)
                shown = pinned[:200].decode("latin-1")
                raise ApiError(
                    404, f"{VERSION_HEADER} {shown!r} is not served here; served: {served}"
                )
        elif draw and self.canary is not None and random.random() < self.share:
            version = self.canary
        else:
            version = self.primary
        request.scope[VERSION_SCOPE_KEY] = version.label
        return version

    def _runner(self, version: Version):  # noqa: ANN202 - the batcher's run function
        async def run(images: list[torch.Tensor]) -> list[np.ndarray]:
            self.batch_sizes[len(images)] += 1
            if version.fail_rate and random.random() < version.fail_rate:
                raise ChaosError(f"{CHAOS_ERROR} {version.label} ({version.fail_rate:g})")
            try:
                probs = await asyncio.to_thread(version.backend.probabilities, torch.stack(images))
            except Exception:
                version.failures += 1
                raise
            version.failures = 0
            return list(probs)

        return run

    async def probabilities(self, images: list[torch.Tensor], version: Version) -> np.ndarray:
        """One request's images (uint8 3x32x32) -> float32 probabilities from `version`,
        batched with other requests' images for it; counts the request."""
        rows = await asyncio.gather(*(version.batcher(img) for img in images))
        self.requests += 1
        return np.stack(rows).astype(np.float32)
