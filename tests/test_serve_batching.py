"""DynamicBatcher on its own: when a batch starts (full, delay since arrival, wake-up on arrival), never by timing.

Every test uses a long `max_delay_ms` (60 s) and awaits with a 30 s guard: a batch that waited for the
delay instead of starting would fail the guard, while a correct one finishes in milliseconds.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from cnnlab.serve.batching import DynamicBatcher, QueueFull

GUARD_S = 30
LONG_DELAY_MS = 60_000


class Recorder:
    """predict() that records batch sizes and, while `gate` is clear, blocks (a busy model)."""

    def __init__(self, gated: bool = False):
        self.sizes, self.gate, self.entered = [], threading.Event(), threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.sizes.append(len(x))
        self.entered.set()
        self.gate.wait(GUARD_S)
        return np.stack([x.reshape(len(x), -1)[:, 0].astype(np.float32)] * 2, axis=1)  # row i tells which image it was


def images(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint8).reshape(-1, 1, 1, 1)


async def _until(cond, what: str) -> None:
    for _ in range(1200):
        if cond():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_full_batch_starts_without_waiting_for_the_delay():
    rec = Recorder()

    async def scenario():
        b = DynamicBatcher(rec, max_batch=4, max_delay_ms=LONG_DELAY_MS)
        await b.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*(b.submit(images(i)) for i in range(4))), GUARD_S)
        finally:
            await b.stop()

    out = asyncio.run(scenario())
    assert rec.sizes == [4]
    assert [float(o[0, 0]) for o in out] == [0, 1, 2, 3]  # each request got its own row


def test_a_request_arriving_during_the_wait_joins_the_batch_and_fills_it():
    rec = Recorder()

    async def scenario():
        b = DynamicBatcher(rec, max_batch=3, max_delay_ms=LONG_DELAY_MS)
        await b.start()
        try:
            first = asyncio.create_task(b.submit(images(7)))
            await _until(lambda: b._wakeup is not None, "the worker to wait for more requests")
            second = asyncio.create_task(b.submit(images(8, 9)))  # two images: the batch is full now
            return await asyncio.wait_for(asyncio.gather(first, second), GUARD_S)
        finally:
            await b.stop()

    first, second = asyncio.run(scenario())
    assert rec.sizes == [3]
    assert first[:, 0].tolist() == [7] and second[:, 0].tolist() == [8, 9]


def test_requests_that_waited_during_the_previous_batch_start_at_once():
    """The delay counts from a request's arrival, not from when the worker gets to it."""
    rec = Recorder(gated=True)
    offset = [0.0]

    async def scenario():
        b = DynamicBatcher(rec, max_batch=2, max_delay_ms=LONG_DELAY_MS, clock=lambda: time.monotonic() + offset[0])
        await b.start()
        try:
            busy = asyncio.gather(b.submit(images(1)), b.submit(images(2)))  # a full batch: starts, then blocks
            await asyncio.to_thread(rec.entered.wait, GUARD_S)
            late = asyncio.create_task(b.submit(images(3)))
            await _until(lambda: b.queued_images == 3, "the late request to queue")
            offset[0] += 2 * LONG_DELAY_MS / 1000  # it has now waited longer than the delay
            rec.gate.set()
            return await asyncio.wait_for(asyncio.gather(busy, late), GUARD_S)
        finally:
            rec.gate.set()
            await b.stop()

    _, late = asyncio.run(scenario())
    assert rec.sizes == [2, 1] and late[:, 0].tolist() == [3]


def test_a_request_is_never_split_and_an_oversized_one_runs_alone():
    rec = Recorder(gated=True)

    async def scenario():
        b = DynamicBatcher(rec, max_batch=4, max_delay_ms=0, max_queue=64)
        await b.start()
        try:
            head = asyncio.create_task(b.submit(images(0)))
            await asyncio.to_thread(rec.entered.wait, GUARD_S)  # batch 1 = [0] is running
            rest = [asyncio.create_task(b.submit(images(*range(10 * k, 10 * k + n)))) for k, n in ((1, 3), (2, 2), (3, 6))]
            await _until(lambda: b.queued_images == 12, "the requests to queue")
            rec.gate.set()
            return await asyncio.wait_for(asyncio.gather(head, *rest), GUARD_S)
        finally:
            rec.gate.set()
            await b.stop()

    out = asyncio.run(scenario())
    assert rec.sizes == [1, 3, 2, 6]  # 3 + 2 > 4 starts a new batch; the 6-image request (> max_batch) runs alone
    assert out[3][:, 0].tolist() == [30, 31, 32, 33, 34, 35]


def test_queue_full_is_refused_at_once():
    rec = Recorder(gated=True)

    async def scenario():
        b = DynamicBatcher(rec, max_batch=1, max_delay_ms=0, max_queue=2)
        await b.start()
        try:
            running = asyncio.gather(b.submit(images(1)), b.submit(images(2)))
            await _until(lambda: b.queued_images == 2, "two queued images")
            with pytest.raises(QueueFull, match="limit 2"):
                await b.submit(images(3))
            rec.gate.set()
            await asyncio.wait_for(running, GUARD_S)
            return b.queued_images
        finally:
            rec.gate.set()
            await b.stop()

    assert asyncio.run(scenario()) == 0
