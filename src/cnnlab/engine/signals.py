"""SIGINT/SIGTERM while cnnlab works: one context manager, used by training and by the `--nproc` launcher.

A handler only records the signal (or forwards it); the work checks at a safe point — training stops at the
next batch boundary, where model, optimizer and counters agree, so the saved state resumes exactly. The old
handlers come back when the block ends. Off the main thread (Python only delivers signals there) it does
nothing, so a library caller's thread keeps the process's own handling.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Raised at a safe point (or from a second signal) so the loop can save before leaving; args[0] names the signal."""


class StopAtBoundary(Interrupted):
    """Interrupted between two batches, where model, optimizer and counters agree: the state there resumes exactly."""


@contextmanager
def handling(handler: Callable[[int, object], None], signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Install `handler` for `signals` in this block, then restore whatever was installed before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class StopRequests:
    """The signals that asked this process to stop, in arrival order. The first is only recorded; a second
    raises Interrupted at once (the user insists: leave without waiting for the batch boundary)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.saving = False  # set while the state is being saved on the way out: more signals must not cut that short

    def __call__(self, signum: int, frame: object) -> None:
        self.names.append(signal.Signals(signum).name)
        if len(self.names) > 1 and not self.saving:
            self.saving = True  # leaving now: a third signal in a burst must not cut short the way out
            raise Interrupted(self.names[0])

    def __bool__(self) -> bool:
        return bool(self.names)

    def check(self) -> None:
        """Raise Interrupted if a stop was requested (call between units of work)."""
        if self.names:
            self.saving = True
            raise Interrupted(self.names[0])


class Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM outside the training loop's safe points (loading, the final report): raised at once, as Ctrl-C
    raises KeyboardInterrupt, so whatever is being written says so and the command ends with one line and 128 + signum.
    args: (signal name, signal number)."""


def interrupt_now(signum: int, frame: object) -> None:
    """A handler for `handling`: turn the signal into Signalled where the program is (SIGTERM would otherwise end the
    process silently, in the middle of whatever it was writing)."""
    raise Signalled(signal.Signals(signum).name, signum)
