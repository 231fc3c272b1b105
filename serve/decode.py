"""Image decoding off the event loop, with bounds on what one image and one request may cost.

The replica's event loop also answers health probes and reads other bodies, so a decode
must never run on it: `DecodePool` runs `modresnet.images` (open_image, to_tensor: what
`decode_image` does) on a small thread pool, one trip per image (Pillow's zlib, libjpeg
and libwebp decoders release the GIL). Bounds:

* `max_pixels` per image, checked from the header before decoding (images.open_image);
* `request_pixels`: declared pixels summed over the images of one request; the next image
  is refused (413) once the sum would pass it, so one request costs at most that many
  decoded pixels (~ 1 s of CPU per 10-15 MP on this box for PNG; JPEGs decode at reduced
  scale and cost far less);
* `timeout_s` per image: the client gets a 413 if its decode runs longer. A Python thread
  cannot be killed, so the decode finishes in the background, but it keeps holding its pool
  slot until then, so at most `workers` decodes ever run at once, and the pixel limits bound
  how long each can take;
* memory: Pillow holds at most ~4 bytes per pixel (8 for 16-bit input, converted in
  float32), so a replica's decoders hold at most ~ workers x max_pixels x 8 bytes.

The exception: an upload of at most INLINE_BYTES whose header declares at most
INLINE_PIXELS (a CIFAR-sized image, what most clients send) decodes on the event loop. It
costs ~0.1 ms, less than the trip to the pool and back, and the bounds on bytes and pixels
cap it (a JPEG's MAX_JPEG_SCANS passes over 4,096 pixels included) well under a millisecond.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import torch

from modresnet.images import ImageError, open_image, to_tensor
from serve.http.errors import ApiError


class _OverBudget(Exception):
    pass


INLINE_BYTES = 16 * 1024
INLINE_PIXELS = 64 * 64


def _shown(name: str) -> str:
    """A client's filename as it may appear in an error: printable and short, so the message
    stays one line whatever the multipart header held."""
    return name if name.isprintable() and len(name) <= 80 else ascii(name[:80])


def _decode(data: bytes, max_pixels: int, budget: int) -> tuple[torch.Tensor, int]:
    """One trip to the pool per image: header, budget check, then the decode."""
    img = open_image(data, max_pixels)
    pixels = img.width * img.height
    if pixels > budget:
        raise _OverBudget(pixels)
    return to_tensor(img), pixels


def _decode_small(data: bytes, max_pixels: int, budget: int) -> tuple[torch.Tensor, int] | None:
    """`_decode` on the caller's thread if the image is small enough (see the module doc),
    else None without decoding anything."""
    if len(data) > INLINE_BYTES:
        return None
    img = open_image(data, max_pixels)
    if img.width * img.height > min(INLINE_PIXELS, budget):
        return None
    return to_tensor(img), img.width * img.height


class DecodePool:
    def __init__(
        self,
        workers: int = 2,
        timeout_s: float = 2.0,
        max_pixels: int = 16_000_000,
        request_pixels: int = 32_000_000,
    ) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self.max_pixels = max_pixels
        self.request_pixels = request_pixels
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="decode")
        self._slots: asyncio.Semaphore | None = None
        self.timeouts = 0

    async def decode_all(self, items: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        """(name, bytes) -> uint8 3x32x32 tensors in order; ApiError (4xx) on the first bad."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        budget = self.request_pixels
        out = []
        for name, data in items:
            try:
                done = _decode_small(data, self.max_pixels, budget)
                if done is None:
                    done = await self._run(_decode, data, self.max_pixels, budget, name=name)
                tensor, pixels = done
            except ImageError as err:
                raise ApiError(400, f"{_shown(name)}: {err}") from None
            except _OverBudget as err:
                raise ApiError(
                    413,
                    f"{_shown(name)}: {err.args[0]:,} pixels; this request has "
                    f"{budget:,} of its {self.request_pixels:,}-pixel "
                    f"decoding budget left: send fewer or smaller images",
                ) from None
            budget -= pixels
            out.append(tensor)
        return out

    async def _run(self, fn, *args, name: str):
        slots = self._slots
        assert slots is not None
        await slots.acquire()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn, *args)
        # The slot is freed when the work really ends, not when we stop waiting for it.
        future.add_done_callback(lambda _: slots.release())
        start = loop.time()
        try:
            result = await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
            if loop.time() - start <= self.timeout_s:
                return result
            # A starved event loop can wake after the bound with the work done: still over it.
        except TimeoutError:
            future.add_done_callback(
                lambda f: f.cancelled() or f.exception()
            )  # consume it: no "never retrieved"
        self.timeouts += 1
        raise ApiError(
            413,
            f"{_shown(name)}: decoding took over {self.timeout_s:g} s; send a "
            f"smaller image (it is classified at 32x32 anyway)",
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
