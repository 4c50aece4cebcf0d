"""Dynamic batching: concurrent requests are grouped into one forward pass.

Requests put (images, future) on a bounded queue; one worker takes the first waiting request, then
keeps taking more until the batch holds `max_batch` images or `max_delay_ms` has passed since the
first one arrived, runs the backend once in a worker thread (so the event loop keeps answering
/healthz), and hands each request its slice of the result. A full queue is refused at once
(`QueueFull` -> 503 + Retry-After) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """More images are waiting than `max_queue`; the client should retry later."""


class DynamicBatcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, max_delay_ms: float = 5.0,
                 max_queue: int = 256, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_delay_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_delay_ms >= 0")
        self.predict, self.max_batch, self.max_delay_s, self.max_queue = predict, max_batch, max_delay_ms / 1000, max_queue
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.queued_images = 0  # images waiting or in the running batch (the queue-depth gauge)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="cnnlab-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, K) for uint8 images (N, H, W, C); raises QueueFull when over capacity."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        n = len(images)
        if self.queued_images + n > self.max_queue:
            raise QueueFull(f"{self.queued_images} images are already queued (limit {self.max_queue})")
        fut = asyncio.get_running_loop().create_future()
        self.queued_images += n
        self._queue.put_nowait((images, fut))
        try:
            return await fut
        finally:
            if not fut.done():  # cancelled by a timeout: the worker will skip it
                fut.cancel()

    async def _run(self) -> None:
        assert self._queue is not None
        carry = None
        while True:
            first = carry if carry is not None else await self._queue.get()
            carry = None
            batch, size = [first], len(first[0])
            deadline = time.monotonic() + self.max_delay_s
            while size < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if size + len(item[0]) > self.max_batch:
                    carry = item  # starts the next batch; a request's images are never split
                    break
                batch.append(item)
                size += len(item[0])
            await self._run_batch(batch)

    async def _run_batch(self, batch: list) -> None:
        live = [(x, f) for x, f in batch if not f.cancelled()]
        try:
            if live:
                x = np.concatenate([x for x, _ in live]) if len(live) > 1 else live[0][0]
                if self.on_batch is not None:
                    self.on_batch(len(x))
                try:
                    probs = await asyncio.to_thread(self.predict, x)
                except Exception as e:  # the backend failed: every waiting request gets the error
                    for _, f in live:
                        if not f.done():
                            f.set_exception(e)
                    return
                i = 0
                for xs, f in live:
                    if not f.done():
                        f.set_result(probs[i : i + len(xs)])
                    i += len(xs)
        finally:
            self.queued_images -= sum(len(x) for x, _ in batch)
