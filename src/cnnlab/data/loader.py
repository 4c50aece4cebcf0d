"""Batches of a split, in a given order: indexed from memory, or decoded ahead by worker processes.

    reader = BatchReader(split)
    for x, y, index in reader.batches(64, order=epoch_order(n, seed, epoch), start=step):
        ...   # x: uint8 (B, H, W, C) tensor, y: int64 (B,), index: positions of these images in the split

An in-memory split is indexed directly (one uint8 tensor, the fast path). A `StreamSplit` is read through a
torch DataLoader whose "samples" are whole batches: the list of index slices is computed up front from
`order` (so the data order, resume at `start` and --deterministic runs are exactly those of the in-memory
path), each worker process decodes one batch of files at a time with the project's safe decoder, and at most
`PREFETCH_BATCHES` batches per worker wait in memory. Files that fail to decode are left out of their batch
(`index` says which images a batch holds) and recorded in the split's bad-file record.
"""

from __future__ import annotations

import os
import signal
from typing import Iterator, NamedTuple

import numpy as np
import torch

from cnnlab.data.dataset import Split
from cnnlab.data.stream import StreamSplit, available_cores, decode_files, default_workers

PREFETCH_BATCHES = 2  # per worker: decoded batches waiting for the training loop (bounded memory)


class Batch(NamedTuple):
    x: torch.Tensor  # uint8 (B, H, W, C)
    y: torch.Tensor  # int64 (B,)
    index: torch.Tensor  # int64 (B,): positions in the split (fewer than asked when files failed to decode)


def is_streamed(split: Split) -> bool:
    return isinstance(split, StreamSplit)


def batch_slices(n: int, batch_size: int, order: torch.Tensor | None = None, start: int = 0, stop: int | None = None) -> list[torch.Tensor]:
    """Index tensors of batches start..stop-1 of `order` (default: 0..n-1 in order)."""
    order = torch.arange(n) if order is None else order
    steps = -(-n // batch_size)
    stop = steps if stop is None else min(stop, steps)
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(start, stop)]


class BatchReader:
    """Reads batches of one split; build it once per split (in memory it holds the split as one tensor)."""

    def __init__(self, split: Split, workers: int | None = None):
        self.split = split
        self.streamed = is_streamed(split)
        if self.streamed:
            self.workers = workers if workers is not None else (split.workers if split.workers is not None else default_workers())
        else:
            self.x = torch.from_numpy(np.ascontiguousarray(split.x))
            self.y = torch.from_numpy(np.asarray(split.y))

    def batches(self, batch_size: int, order: torch.Tensor | None = None, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
        """Batches `start`..`stop`-1 of `order` (default: the split in order), each as uint8 images, labels, positions."""
        slices = batch_slices(len(self.split), batch_size, order, start, stop)
        if not self.streamed:
            return (Batch(self.x[idx], self.y[idx], idx) for idx in slices)
        return self._stream(slices)

    def _stream(self, slices: list[torch.Tensor]) -> Iterator[Batch]:
        if not slices:
            return
        workers = max(0, min(self.workers, len(slices)))
        loader = torch.utils.data.DataLoader(
            _DecodeBatches(self.split), sampler=[s.numpy() for s in slices], batch_size=None, collate_fn=_as_is, num_workers=workers,
            prefetch_factor=PREFETCH_BATCHES if workers else None, worker_init_fn=_quiet_worker if workers else None,
        )
        threads = torch.get_num_threads()
        if workers and not torch.are_deterministic_algorithms_enabled():
            # The workers take `workers` cores; the training process gets the rest. Oversubscribed cores cost far more
            # than the threads: an OpenMP thread that loses its core to a worker stalls every parallel op (measured 3-4x
            # slower per epoch with 2 threads + 1 worker on 2 cores). Deterministic runs keep their thread count, as
            # it can change the order of floating-point reductions (bit-identical to the in-memory run).
            torch.set_num_threads(max(1, min(threads, available_cores() - workers)))
        _trim_heap()  # the workers fork now: from a process holding no freed-but-kept memory for them to copy
        it = iter(loader)

        def release() -> None:  # idempotent
            _shutdown(it)
            torch.set_num_threads(threads)
            _trim_heap()

        try:
            for k, (x, y, index, bad) in enumerate(it):
                if k == len(slices) - 1:
                    release()  # the last batch is in hand: workers and cores go back before the caller moves on (validation)
                for path, reason in bad:
                    self.split.bad.add(path, reason)  # may raise DataError: too many bad files
                yield Batch(x, y, index)
        finally:
            release()  # also when the caller stops early (interrupt, error): now, not at garbage collection


def read_images(split: Split, idx) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) at positions `idx`, for sample grids; a streamed file that fails to decode is left out and recorded
    (the bad-fraction limit is left to the training and evaluation passes, which meet every file)."""
    idx = np.asarray(idx, dtype=np.int64)
    if not is_streamed(split):
        return split.x[idx], split.y[idx]
    x, ok, bad = decode_files([split.x.path(i) for i in idx], split.x.size, split.x.channels, split.x.resize)
    for path, reason in bad:
        split.bad.add(path, reason, check=False)
    return x, split.y[idx[np.asarray(ok, dtype=np.int64)]]


class _DecodeBatches(torch.utils.data.Dataset):
    """dataset[index array] -> one decoded batch (runs in a worker process)."""

    def __init__(self, split: StreamSplit):
        self.paths, self.size, self.channels, self.resize, self.y = split.x.paths, split.x.size, split.x.channels, split.x.resize, split.y

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, idx: np.ndarray):  # numpy, not a tensor view: pickled by value, not via the whole order's storage
        x, ok, bad = decode_files([os.fsdecode(self.paths[i]) for i in idx], self.size, self.channels, self.resize)
        kept = idx[np.asarray(ok, dtype=np.int64)]
        return torch.from_numpy(x), torch.from_numpy(self.y[kept]), torch.from_numpy(kept), bad


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc malloc_trim; elsewhere nothing).

    cnnlab keeps freed activations in the process for speed (engine.device.tune_cpu_allocator: no mmap for
    large blocks, trim only above 512 MB). A streamed pass is where that costs most: measured on 50,000 images,
    the training process kept up to 1.6 GB after the evaluation passes and a worker forked from it copied up
    to 0.8 GB of it (peak 2.3 GB for both; 0.8 GB with the allocator left alone, but epochs 1.45x slower).
    Trimming before the workers fork and after each pass: peak 1.0 GB at the tuned speed.
    """
    global _libc
    if _libc is None:
        try:
            import ctypes

            lib = ctypes.CDLL(None)
            _libc = lib if hasattr(lib, "malloc_trim") and hasattr(lib, "gnu_get_libc_version") else False
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc = None


def _shutdown(it) -> None:
    if hasattr(it, "_shutdown_workers"):  # torch's multi-process iterator; idempotent
        it._shutdown_workers()


def _as_is(batch):
    return batch


def _quiet_worker(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the training process saves a checkpoint at the next batch and then
    # shuts its workers down; a worker that died of the signal first would turn that into a DataLoader error.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
