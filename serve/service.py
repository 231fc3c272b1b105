"""One replica's state: the model and its backend, the decode pool, the dynamic batcher, the
API keys and the counters /model reports. Free of Serve's deployment machinery and of HTTP
routes (those are the protocols', serve/protocols/), so tests run it in-process with
`make_api(Service(args))`; serve/app.py wraps the same class as the Serve ingress."""

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


class Service:
    def __init__(self, args: dict) -> None:
        self.args = ServeArgs.model_validate(args)
        self.keys = ApiKeys(self.args)  # first: fail before the slow model load
        torch.set_num_threads(self.args.threads)
        start = time.perf_counter()
        self.loaded = load_model(self.args.checkpoint)
        self.backend = load_backend(self.args.backend, self.loaded, self.args.threads)
        self.load_s = time.perf_counter() - start
        self.classes = self.loaded.classes
        self.decoder = DecodePool(
            self.args.decode_workers,
            self.args.decode_timeout_s,
            self.args.max_pixels,
            self.args.request_pixels,
        )
        self._batcher = Batcher(
            self._infer, self.args.max_batch_size, self.args.batch_wait_timeout_s
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
