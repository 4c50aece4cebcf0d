"""Dynamic batching: concurrent requests are grouped into one forward pass.

Requests put (images, future, arrival time) on a bounded queue; one worker takes the oldest waiting
request and everything behind it that fits, until the batch holds `max_batch` images or `max_delay_ms`
has passed since the oldest one *arrived* — so under load, when requests piled up while the previous
batch ran, the next batch starts at once instead of waiting again, and a full batch never waits. It
runs the backend once in a worker thread (so the event loop keeps answering /healthz), and hands each
request its slice of the result. A full queue is refused at once (`QueueFull` -> 503 + Retry-After)
instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Callable

import numpy as np


class QueueFull(Exception):
    """More images are waiting than `max_queue`; the client should retry later."""


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class DynamicBatcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 32, max_delay_ms: float = 5.0,
                 max_queue: int = 256, on_batch: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 on_queue: Callable[[int], None] | None = None):
        """`on_batch(images)` is called before each forward pass, `on_queue(images)` whenever the number of
        queued images changes (the queue-depth gauge: pushed, since worker processes' metrics are read from files)."""
        if max_batch < 1 or max_queue < 1 or max_delay_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_delay_ms >= 0")
        self.predict, self.max_batch, self.max_delay_s, self.max_queue = predict, max_batch, max_delay_ms / 1000, max_queue
        self.on_batch, self.on_queue, self.clock = on_batch, on_queue, clock
        self._pending: deque | None = None  # (images, future, arrival time), oldest first
        self._wakeup: asyncio.Future | None = None  # set while the worker waits for requests
        self._task: asyncio.Task | None = None
        self.queued_images = 0  # images waiting or in the running batch (the queue-depth gauge)

    async def start(self) -> None:
        self._pending = deque()
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
        if self._pending is None:
            raise RuntimeError("batcher not started")
        n = len(images)
        if self.queued_images + n > self.max_queue:
            raise QueueFull(f"{self.queued_images} images are already queued (limit {self.max_queue})")
        fut = asyncio.get_running_loop().create_future()
        self.queued_images += n
        if self.on_queue is not None:
            self.on_queue(self.queued_images)
        self._pending.append((images, fut, self.clock()))
        if self._wakeup is not None:
            _wake(self._wakeup)
        try:
            return await fut
        finally:
            if not fut.done():  # cancelled by a timeout: the worker will skip it
                fut.cancel()

    async def _wait(self, timeout_s: float | None) -> None:
        """Until a request arrives or `timeout_s` passes (one future and one timer: no task per wait)."""
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        timer = loop.call_later(timeout_s, _wake, self._wakeup) if timeout_s is not None else None
        try:
            await self._wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _run(self) -> None:
        pending = self._pending
        assert pending is not None
        while True:
            while not pending:
                await self._wait(None)
            deadline = pending[0][2] + self.max_delay_s
            batch, size = [], 0
            while True:
                # A request's images are never split: one that does not fit starts the next batch.
                while pending and (not batch or size + len(pending[0][0]) <= self.max_batch):
                    item = pending.popleft()
                    batch.append(item)
                    size += len(item[0])
                if size >= self.max_batch or pending:  # full, or the next request does not fit
                    break
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                await self._wait(remaining)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list) -> None:
        live = [(x, f) for x, f, _ in batch if not f.cancelled()]
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
            self.queued_images -= sum(len(x) for x, _, _ in batch)
            if self.on_queue is not None:
                self.on_queue(self.queued_images)
