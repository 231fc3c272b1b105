"""Dynamic batching inside one replica: each batch is formed when the model is free, from
everything that queued while it ran (Triton's dynamic batching with no delay).

Why not `@serve.batch`: it forms a batch as soon as requests arrive and queues it behind the
one running, so the model runs many small batches back to back. Measured here at
concurrency 32 (one fp32 replica, 2 cores): batches of 4 while 28 images waited, and 74 % of
the in-process ceiling; with this batcher, batches of 16 and 87-90 % (docs/serving.md, "Speed")."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """`await batcher(item)` -> that item's result from `run(batch)`, which takes a list of up
    to `max_batch_size` items and returns one result per item, in order. One batch runs at a
    time. `wait_s` > 0 waits that long for more items when a batch would start short (worth it
    where a batch costs about what one item does, e.g. a GPU). `observe(waits, seconds)`, if
    given, hears of each batch that returned results: how long each of its items waited,
    and its run time."""

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        max_batch_size: int,
        wait_s: float = 0.0,
        observe: Callable[[list[float], float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size >= 1 and wait_s >= 0; got {max_batch_size}, {wait_s}")
        self._run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._observe = observe
        self._pending: deque[tuple[Item, asyncio.Future[Result], float]] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, time.perf_counter()))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._pending:
            if self.wait_s and len(self._pending) < self.max_batch_size:
                await asyncio.sleep(self.wait_s)
            batch: list[tuple[Item, asyncio.Future[Result]]] = []
            queued: list[float] = []
            while self._pending and len(batch) < self.max_batch_size:
                item, future, since = self._pending.popleft()
                if not future.cancelled():  # its client went away: skip the work
                    batch.append((item, future))
                    queued.append(since)
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await self._run([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            except asyncio.CancelledError:  # the loop is closing: nobody waits for this batch
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as err:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            if self._observe is not None:
                self._observe([start - t for t in queued], time.perf_counter() - start)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
