"""The replica's dynamic batcher (serve/batcher.py), on a plain asyncio loop: no Ray."""

from __future__ import annotations

import asyncio

import pytest

from serve.batcher import Batcher


class Model:
    """A stand-in forward pass that records each batch and takes `seconds` per batch."""

    def __init__(self, seconds: float = 0.05, fail: bool = False) -> None:
        self.seconds = seconds
        self.fail = fail
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise ValueError("model failed")
        return [10 * x for x in items]


def test_a_batch_is_what_queued_while_the_model_ran() -> None:
    async def main() -> tuple[list[int], list[list[int]]]:
        model = Model()
        batcher = Batcher(model, max_batch_size=16)
        first = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.01)  # the model is now busy with [0]
        rest = [asyncio.ensure_future(batcher(i)) for i in range(1, 21)]
        return await asyncio.gather(first, *rest), model.batches

    results, batches = asyncio.run(main())
    assert results == [10 * i for i in range(21)]  # each caller gets its own item's result
    # serve.batch would have started [1] at once and queued small batches behind [0]
    assert batches == [[0], list(range(1, 17)), list(range(17, 21))]


def test_a_lone_request_does_not_wait() -> None:
    async def main() -> float:
        batcher = Batcher(Model(seconds=0), max_batch_size=16)
        start = asyncio.get_running_loop().time()
        assert await batcher(3) == 30
        return asyncio.get_running_loop().time() - start

    assert asyncio.run(main()) < 0.05


def test_wait_s_fills_a_short_batch() -> None:
    async def main() -> list[list[int]]:
        model = Model(seconds=0)
        batcher = Batcher(model, max_batch_size=4, wait_s=0.05)
        first = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, batcher(1), batcher(2))
        return model.batches

    assert asyncio.run(main()) == [[0, 1, 2]]


def test_a_failed_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    async def main() -> tuple[list[object], int]:
        model = Model(fail=True)
        batcher = Batcher(model, max_batch_size=2)
        outcomes = await asyncio.gather(*(batcher(i) for i in range(3)), return_exceptions=True)
        model.fail = False
        return outcomes, await batcher(5)

    outcomes, after = asyncio.run(main())
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert after == 50


def test_a_cancelled_caller_is_left_out_of_the_next_batch() -> None:
    async def main() -> list[list[int]]:
        model = Model()
        batcher = Batcher(model, max_batch_size=16)
        first = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher(1))
        kept = asyncio.ensure_future(batcher(2))
        await asyncio.sleep(0)
        gone.cancel()  # its client disconnected
        await asyncio.gather(first, kept)
        return model.batches

    assert asyncio.run(main()) == [[0], [2]]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Batcher(Model(), max_batch_size=0)
