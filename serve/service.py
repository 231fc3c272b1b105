"""One replica's state: the model and its backend (on its GPU, if it has one), the decode
pool, the dynamic batcher, the API keys, the admission of requests, its Prometheus series and
the counters /model reports. Free of Serve's deployment machinery and of HTTP routes (those are
the protocols', serve/protocols/), so tests run it in-process with `make_api(Service(args))`;
serve/app.py wraps the same class as the Serve ingress."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import numpy as np
import torch
from fastapi import FastAPI

from modresnet.checkpoint import load_model
from serve.args import ServeArgs
from serve.backends import load_backend
from serve.batcher import Batcher
from serve.decode import DecodePool
from serve.http.asgi import make_api
from serve.http.auth import ApiKeys
from serve.http.gate import Admission
from serve.metrics import for_replica

GPU_WARM_UP_BATCHES = 3


class Service:
    def __init__(self, args: dict) -> None:
        self.args = ServeArgs.model_validate(args)
        self.keys = ApiKeys(self.args)  # first: fail before the slow model load
        torch.set_num_threads(self.args.threads)
        start = time.perf_counter()
        self.loaded = load_model(self.args.checkpoint)
        device = "cuda" if self.args.gpus_per_replica else "cpu"
        self.backend = load_backend(self.args.backend, self.loaded, self.args.threads, device)
        if device == "cuda":  # CUDA context, kernels and allocator ready before Serve's "ready"
            warm = torch.zeros(self.args.max_batch_size, 3, 32, 32, dtype=torch.uint8)
            for _ in range(GPU_WARM_UP_BATCHES):
                self.backend.probabilities(warm)
        self.load_s = time.perf_counter() - start
        self.classes = self.loaded.classes
        self.decoder = DecodePool(
            self.args.decode_workers,
            self.args.decode_timeout_s,
            self.args.max_pixels,
            self.args.request_pixels,
        )
        self.metrics = for_replica(
            self.args.metrics,
            sha256=self.loaded.sha256,
            backend=self.backend.name,
            version="",
            max_replicas=self.args.max_replicas,
        )
        self.admission = Admission(self.args.max_ongoing_requests, self.args.max_queued_requests)
        self._batcher = Batcher(
            self._infer,
            self.args.max_batch_size,
            self.args.batch_wait_timeout_s,
            observe=self.metrics.batch,
        )
        self.batch_sizes: Counter[int] = Counter()
        self.failures = 0
        self.requests = 0

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self)

    def check_health(self) -> None:
        """Serve's replica health check: unhealthy after three failed batches in a row."""
        if self.failures >= 3:
            raise RuntimeError(f"{self.failures} inference failures in a row")

    async def _infer(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        self.batch_sizes[len(images)] += 1
        try:
            probs = await asyncio.to_thread(self.backend.probabilities, torch.stack(images))
        except Exception:
            self.failures += 1
            raise
        self.failures = 0
        return list(probs)

    async def probabilities(self, images: list[torch.Tensor]) -> np.ndarray:
        """One request's images (uint8 3x32x32) -> float32 probabilities, batched with other
        requests' images; counts the request."""
        rows = await asyncio.gather(*(self._batcher(img) for img in images))
        self.requests += 1
        return np.stack(rows).astype(np.float32)
