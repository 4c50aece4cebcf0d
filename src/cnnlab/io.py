"""Atomic file writes: temp file in the same folder, fsync, os.replace.

A reader never sees a half-written checkpoint, model file, CSV or report: either the old file or the new one.
Bottom layer (docs/architecture.md): data, engine and the tools all write through it, so it imports only errors.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cnnlab.errors import CnnlabError, ConfigError


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import (os.umask can only be read by setting it)


class WriteError(CnnlabError):
    """An output file could not be written (disk full, read-only, permissions); the old file is unchanged."""

    exit_code = 1


def _write_failed(path: Path, e: OSError) -> WriteError:
    reason = e.strerror or str(e) or e.__class__.__name__
    hint = "free some disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check that the folder is writable"
    return WriteError(f"{path}: could not be written ({reason}) — {hint}; the previous {path.name}, if any, is unchanged")


@contextmanager
def atomic_path(path: str | os.PathLike, sync: bool = True) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path` atomically, on error it is removed.

    An OSError while writing (ENOSPC, EROFS, EACCES, EIO ...) becomes a one-line WriteError; a reader
    never sees a partial file because only a complete, fsynced temp file is ever renamed onto `path`.
    sync=False skips the fsync, for files that can be rebuilt (caches).
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_failed(path, e) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp (and some writers) make 0600 files; give results the usual mode
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _write_failed(path, e) from None
        raise


def as_os_error(tmp: Path, e: Exception) -> OSError:
    """An OSError for a writer library's own I/O failure (torch.save reports a full disk as RuntimeError,
    safetensors as SafetensorError), so atomic_path turns it into a WriteError like any other."""
    try:
        full = shutil.disk_usage(tmp.parent).free < 1 << 20
    except OSError:
        full = False
    first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:160]
    if full or "No space left" in first:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.EIO, f"write failed: {first}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def writable_folder(path: str | os.PathLike, option: str) -> Path:
    """Make sure `path` is a folder this process can write into (creating it), before any work is spent on what
    goes there; otherwise a one-line ConfigError (exit 2) naming the option and the reason."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cnnlab-write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = "a file is in the way" if p.exists() and not p.is_dir() else (e.strerror or e.__class__.__name__)
        raise ConfigError(f"{option} {p}: cannot write there ({why}) — choose a writable folder") from None
    return p
