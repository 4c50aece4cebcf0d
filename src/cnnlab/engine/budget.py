"""`--time-budget`: how many epochs fit, planned from measured speed and re-planned after every epoch.

The budget covers the whole command: loading (and the auto recipe's speed probe), training, validation, and
a reserve for the final test score and the files written at the end. The first plan comes from batches 2-5 of
the first trained epoch (batch 1 pays warm-up costs); each epoch end re-plans from the wall time per epoch,
checkpoints included. In a distributed run every figure is rank 0's, so all ranks plan the same epochs.
"""

from __future__ import annotations

import time

from cnnlab.engine.distributed import Context
from cnnlab.errors import ConfigError

TAIL_S = 4.5  # ~3 s for the files and plots written at the end, ~1.5 s for the interpreter's exit
EVAL_COST = 0.35  # an image's inference costs about a third of its training step
TIMED_BATCHES = 4  # batches 2-5 of the first epoch time the first plan


class TimeBudget:
    """seconds None: no budget — `enabled` is False and the training loop never asks."""

    def __init__(self, seconds: float | None, max_epochs: int, dist: Context, *, started: float, used_before: float = 0.0,
                 spent_earlier: float = 0.0):
        self.seconds, self.max_epochs, self.dist = seconds, max_epochs, dist
        self.started = started  # perf_counter() when fit began
        self.spent_earlier = spent_earlier  # a resumed run's earlier epochs (their train + val time)
        self.used_before = dist.broadcast_number(used_before) if seconds is not None else 0.0  # loading, start-up
        self.reserve = TAIL_S  # + the test score's estimated time, once measured
        self.epoch_walls: list[float] = []  # wall seconds between epoch ends, checkpoint writes included
        self.mark = time.perf_counter()
        self._first_batch_at: float | None = None

    @property
    def enabled(self) -> bool:
        return self.seconds is not None

    def elapsed(self) -> float:
        """Seconds of this run so far (rank 0's clock for every rank)."""
        return self.dist.broadcast_number(self.spent_earlier + time.perf_counter() - self.started)

    def left(self) -> float:
        return self.seconds - self.used_before - self.reserve - self.elapsed()

    def epochs_that_fit(self, done: int, seconds_per_epoch: float, elapsed: float) -> int:
        left = self.seconds - self.used_before - self.reserve - elapsed
        more = int(max(0.0, left) / max(seconds_per_epoch, 1e-9))
        return max(done, min(self.max_epochs, done + more))

    def reserve_for_test(self, seconds_per_image: float, n_test: int, passes: int) -> None:
        self.reserve = self.dist.broadcast_number(TAIL_S + seconds_per_image * n_test * passes)

    def restart_clock(self) -> None:
        """Epoch walls are measured from here (after the frozen phase, whose time is not an epoch's)."""
        self.mark = time.perf_counter()

    def time_first_batches(self, step: int, start_step: int) -> float | None:
        """Called after each batch of the first trained epoch: the mean seconds per batch of batches 2-5, once."""
        if step == start_step:
            self._first_batch_at = time.perf_counter()
        elif self._first_batch_at is not None and step == start_step + TIMED_BATCHES:
            per_batch = (time.perf_counter() - self._first_batch_at) / TIMED_BATCHES
            self._first_batch_at = None
            return per_batch
        return None

    def first_plan(self, per_batch: float, steps: int, n_train: int, n_val: int, batch_size: int, n_test: int, test_passes: int,
                   done: int) -> int:
        """The epochs to plan after timing the first batches; a budget shorter than one epoch is a clear error."""
        est = self.dist.broadcast_number(per_batch * steps * (1 + EVAL_COST * n_val / n_train))
        self.reserve_for_test(EVAL_COST * per_batch / batch_size, n_test, test_passes)
        if est > 1.5 * self.seconds:
            raise ConfigError(f"--time-budget {self.seconds:g}s is too short for one epoch (about {est:.0f}s here)"
                              " — raise it, or use a smaller model, image size or dataset")
        return self.epochs_that_fit(done, est, self.dist.broadcast_number(self.spent_earlier + self.mark - self.started))

    def after_epoch(self, epoch: int, planned: int) -> int:
        """Re-plan from the measured wall time per epoch: shorten any time; lengthen only in the first half, or
        extra epochs would run at the LR schedule's tail."""
        now = time.perf_counter()
        self.epoch_walls.append(now - self.mark)
        self.mark = now
        recent = self.epoch_walls[1:] or self.epoch_walls  # the first epoch pays warm-up costs
        replanned = self.epochs_that_fit(epoch, self.dist.broadcast_number(sum(recent) / len(recent)), self.elapsed())
        return replanned if replanned < planned or epoch < planned / 2 else planned
