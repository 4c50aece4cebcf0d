"""Image folders too large for memory: splits that keep paths + labels and decode images on demand.

A `StreamSplit` is a `Split` whose `x` is `LazyImages`: it has the shape and dtype of the in-memory
uint8 (N, H, W, C) array, and `x[i]`, `x[a:b]`, `x[idx]` decode just those files with the same safe
decoder, size, aspect-ratio fitting (`resize`) and channel conversion as the in-memory loader (`images.load_image`), so the pixels are
identical. Bulk reads (training, evaluation) go through `cnnlab.data.loader`, which decodes batches in
worker processes.

When to stream (`load_dataset(..., stream=None)`, the default): when the decoded folder would take more
than `STREAM_MEMORY_FRACTION` of the memory available now (MemAvailable, or the cgroup limit when lower).
The in-memory path briefly holds the decoded train images twice (the validation split copies them), and the
model, optimizer and activations need room as well, hence a quarter rather than all of it.

Bad files: the folder scan reads every file's header (missing, empty, not an image, corrupt header,
too many pixels): those are skipped and recorded exactly as in memory (bad_files.txt, max_bad_fraction).
A file whose header is fine but whose pixel data is not (truncated, corrupt) shows only when it is decoded
during training: it is then left out of its batch, recorded once in `Dataset.bad_files` (the trainer adds it
to RUN/bad_files.txt), and a one-line `DataError` ends the run only when the bad files exceed
max_bad_fraction. Reading such a file directly (`x[i]`, e.g. `cnnlab show`) raises its one-line
`ImageReadError`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from cnnlab.data import images
from cnnlab.data.dataset import Split
from cnnlab.errors import DataError

STREAM_MEMORY_FRACTION = 0.25  # stream when the decoded images would exceed this share of available memory


def available_memory_bytes() -> int | None:
    """Memory this process can still use: MemAvailable, capped by a cgroup (container) limit. None if unknown."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max" or int(limit_text) >= 1 << 60:  # no limit (v1 reports a huge number)
                continue
            room = int(limit_text) - int(Path(usage_file).read_text().strip())
            avail = room if avail is None else min(avail, room)
        except (OSError, ValueError):
            continue
    return avail


def should_stream(n_images: int, image_shape: tuple[int, int, int], stream: bool | None) -> bool:
    """The decision for `stream=None` (auto): decoded bytes > STREAM_MEMORY_FRACTION of available memory."""
    if stream is not None:
        return bool(stream)
    avail = available_memory_bytes()
    decoded = n_images * int(np.prod(image_shape))
    return avail is not None and decoded > STREAM_MEMORY_FRACTION * avail


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decoding processes: one per core beyond the one that trains, at least 1, at most 4."""
    return max(1, min(4, available_cores() - 1))


class BadFiles:
    """The bad-file record shared by a dataset's splits: `entries` is `Dataset.bad_files` itself."""

    def __init__(self, entries: list[tuple[str, str]], total: int, max_bad_fraction: float):
        self.entries = entries
        self.total = total
        self.max_bad_fraction = max_bad_fraction
        self._seen = {p for p, _ in entries}

    def add(self, path: str, reason: str, check: bool = True) -> None:
        """Record a file that failed to decode (once); with `check`, raise DataError if the bad share exceeds max_bad_fraction."""
        if path not in self._seen:
            self._seen.add(path)
            self.entries.append((path, reason))
        if check and len(self.entries) / max(self.total, 1) > self.max_bad_fraction:
            raise DataError(
                f"{len(self.entries)} of {self.total} images are unreadable (more than max_bad_fraction={self.max_bad_fraction:g}),"
                f" latest: {path}: {reason} — remove or fix them, or raise --max-bad-fraction"
            )


class LazyImages:
    """A read-only stand-in for a uint8 (N, H, W, C) array whose images are decoded from files when indexed."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths: np.ndarray, size: tuple[int, int], channels: int, resize: str | None = None):
        self.paths = paths  # bytes (numpy "S"): no per-path Python objects for worker processes to copy on touch
        self.size = size
        self.channels = channels
        self.resize = images.check_resize(resize)  # squash | crop | pad (images.fit_image)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size[0], self.size[1], self.channels)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        return os.fsdecode(self.paths[i])

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"image index {key} out of range for {len(self)} images")
            return images.load_image(self.path(i), self.size, channels=self.channels, resize=self.resize)
        idx = np.arange(len(self))[key]  # slices, integer arrays, boolean masks: numpy's own rules
        x, _, bad = decode_files([self.path(i) for i in idx], self.size, self.channels, self.resize)
        if bad:
            raise images.ImageReadError(*bad[0])
        return x

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __array__(self, dtype=None, copy=None):
        raise DataError(
            f"these {len(self):,} images stream from disk and are not held in memory — read them in batches"
            " (cnnlab.data.loader.BatchReader) or load the dataset with stream=False"
        )

    def __repr__(self) -> str:
        return f"LazyImages(shape={self.shape}, dtype=uint8)"


def decode_files(paths: list[str], size: tuple[int, int], channels: int,
                 resize: str | None = None) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """(uint8 array of the files that decode, their positions in `paths`, [(path, reason)] of the rest), in this process."""
    return images.load_images(paths, size, channels=channels, workers=1, resize=resize)


class PathList:
    """The file paths of LazyImages as a read-only sequence of str (built on access, not held as objects)."""

    def __init__(self, encoded: np.ndarray):
        self._encoded = encoded

    def __len__(self) -> int:
        return len(self._encoded)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [os.fsdecode(p) for p in self._encoded[i]]
        return os.fsdecode(self._encoded[i])

    def __iter__(self):
        return (os.fsdecode(p) for p in self._encoded)


class StreamSplit(Split):
    """A Split of an image folder that keeps file paths and labels only; `x` is `LazyImages`."""

    def __init__(self, x: LazyImages, y: np.ndarray, bad: BadFiles, workers: int | None = None):
        self.x = x
        self.y = y
        self.bad = bad
        self.workers = workers  # decoding processes for bulk reads; None: default_workers()

    @property
    def paths(self) -> PathList:  # type: ignore[override]
        return PathList(self.x.paths)

    def resized(self, size: int) -> "StreamSplit":
        """The same files decoded at size x size (what loading the folder with image_size=size gives)."""
        return StreamSplit(LazyImages(self.x.paths, (size, size), self.x.channels, self.x.resize), self.y, self.bad, self.workers)

    def subset(self, idx: np.ndarray) -> "StreamSplit":
        idx = np.asarray(idx)
        return StreamSplit(LazyImages(self.x.paths[idx], self.x.size, self.x.channels, self.x.resize), self.y[idx], self.bad, self.workers)

    def __repr__(self) -> str:
        return f"StreamSplit({len(self)} images {self.x.shape[1]}x{self.x.shape[2]}x{self.x.shape[3]}, streamed from disk)"


def scan_headers(paths: list[Path]) -> tuple[list[int], list[tuple[str, str]]]:
    """Positions of the files whose header opens, and (path, reason) for the others; no pixel data is decoded.

    Before checking file i, the kernel is asked to read the start of file i + SCAN_LOOKAHEAD in the background
    (posix_fadvise WILLNEED), so on a cold page cache the disk serves many reads at once.
    """
    ok, bad = [], []
    for i in range(min(SCAN_LOOKAHEAD, len(paths))):
        _read_ahead(paths[i])
    for i, p in enumerate(paths):
        if i + SCAN_LOOKAHEAD < len(paths):
            _read_ahead(paths[i + SCAN_LOOKAHEAD])
        try:
            images.check_image_header(p)
            ok.append(i)
        except images.ImageReadError as e:
            bad.append((str(p), e.reason))
    return ok, bad


SCAN_LOOKAHEAD = 256  # files asked for ahead of the header check
SCAN_HEAD_BYTES = 65536  # enough for the header of nearly every image (EXIF and ICC blocks included)


def _read_ahead(path: Path) -> None:
    """Ask the kernel to start reading the head of a regular file; problems are the header check's to report."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO named x.jpg must not block here
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.posix_fadvise(fd, 0, SCAN_HEAD_BYTES, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        pass


def stream_split(paths: list[Path], labels: np.ndarray, size: tuple[int, int], channels: int, bad: BadFiles,
                 workers: int | None, resize: str | None = None) -> StreamSplit:
    encoded = np.array([os.fsencode(str(p)) for p in paths], dtype=np.bytes_) if paths else np.array([], dtype="S1")
    return StreamSplit(LazyImages(encoded, size, channels, resize), np.asarray(labels, dtype=np.int64), bad, workers)
