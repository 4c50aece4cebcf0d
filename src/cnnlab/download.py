"""One downloader for pretrained weights and public datasets: mirrors, resume, checksum, atomic rename.

Nothing unverified ever lands at `dest`: bytes stream into ``<dest>.part`` while being hashed, and only a
complete part whose size and sha256 match is fsynced and renamed onto `dest`. An interrupted transfer
keeps its part so the next call asks for the rest with an HTTP Range request instead of starting over.
A mirror that sends other bytes (a captive portal's page on plain http, a changed file) is skipped for the
next one. Processes fetching the same file at once (the ranks of a distributed run) take turns on
``<dest>.lock``: the first downloads, the others then find the verified file.
Stdlib only (urllib), so fetching a file never needs an extra dependency or a shell.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from cnnlab.errors import DownloadError

CHUNK_BYTES = 1 << 20
_SCHEMES = ("http://", "https://")
# a full digest, or the 8+ hex prefix torch.hub checks (torchvision names its files by it)
_SHA256 = re.compile(r"[0-9a-f]{8,64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")

Progress = Callable[[int, "int | None"], None]


def cache_dir(kind: str) -> Path:
    """``$CNNLAB_CACHE/<kind>`` (default ``~/.cache/cnnlab/<kind>``), created on demand."""
    root = Path(os.environ.get("CNNLAB_CACHE") or Path.home() / ".cache" / "cnnlab")
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    return _hash_file(Path(path)).hexdigest()


def _hash_file(path: Path) -> "hashlib._Hash":
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h


class _Truncated(Exception):
    """The connection ended before the whole file arrived; the part is kept for a later resume."""


class _RestartWithoutRange(Exception):
    """The server cannot continue our part (416, or a 206 for another offset): drop the part, ask again."""


class _RefusedRedirect(urllib.error.URLError):
    pass


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would follow a redirect to ftp://; a mirror must not be able to send us off http(s).
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not newurl.lower().startswith(_SCHEMES):
            raise _RefusedRedirect(f"redirect to {newurl.split(':', 1)[0]}:// refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_HttpOnlyRedirects)


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _network_reason(e: BaseException, timeout_s: float) -> str:
    """A few words for the one-line error: what went wrong with this URL."""
    if isinstance(e, urllib.error.HTTPError):
        scheme = (e.headers.get("Location") or "").partition(":")[0] if e.headers else ""
        if 300 <= e.code < 400 and scheme.isalpha():  # urllib itself stops redirects to file:// and friends
            return f"redirect to {scheme.lower()}:// refused"
        return f"HTTP {e.code}"
    if isinstance(e, _RefusedRedirect):
        return str(e.reason)
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout_s:g} s"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {_short(getattr(reason, 'reason', None) or reason, 40)}"
    if isinstance(reason, http.client.HTTPException):
        return f"bad HTTP reply: {_short(str(reason) or type(reason).__name__, 40)}"
    if isinstance(reason, ValueError):
        return f"bad URL: {_short(reason, 40)}"
    if isinstance(reason, ConnectionRefusedError):
        return "no network: connection refused"
    if isinstance(reason, socket.gaierror):
        return "no network: host not found"
    if isinstance(reason, OSError) and reason.strerror:
        return f"no network: {_short(reason.strerror.lower(), 40)}"
    return f"no network: {_short(reason, 40)}"


def _write_failed(part: Path, e: OSError) -> DownloadError:
    # A local disk problem, not a network one: it must not be reported as a failed mirror.
    hint = "free some disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check that the folder is writable"
    return DownloadError(f"{part}: could not be written ({e.strerror or e}) — {hint}")


def _declared_total(resp, offset: int) -> int | None:
    """Full file size the server announced (Content-Range for a 206, Content-Length for a 200)."""
    if resp.status == 206:
        m = _CONTENT_RANGE.fullmatch((resp.headers.get("Content-Range") or "").strip())
        if not m or int(m.group(1)) != offset:
            raise _RestartWithoutRange
        if m.group(3) != "*":
            return int(m.group(3))
    length = resp.headers.get("Content-Length")
    if length is not None and length.strip().isdigit():
        return offset + int(length)
    return None


def _fetch_into_part(url: str, part: Path, size: int | None, timeout_s: float, progress: Progress | None,
                     resume: bool) -> "hashlib._Hash":
    """Stream `url` into `part` (continuing it when `resume` and the server agrees); return the hash of all of it.

    Raises _Truncated (part kept), _RestartWithoutRange, or the urllib/OSError of the request.
    """
    offset = part.stat().st_size if resume and part.exists() else 0
    # Hash what we already have before asking, so a slow disk never stalls an open connection.
    prefix_hash = _hash_file(part) if offset else None
    from cnnlab._version import __version__  # at call time: model code importing this module may run inside cnnlab/__init__

    headers = {"User-Agent": f"cnnlab/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = _opener.open(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            e.close()
            raise _RestartWithoutRange from None
        raise
    with resp:
        if resp.status != 206:
            offset = 0  # the server sent the whole file (it ignores Range): start the part over
        total = _declared_total(resp, offset)
        if total is None:
            total = size
        h = prefix_hash if offset and prefix_hash is not None else hashlib.sha256()
        done = offset
        try:
            out = open(part, "ab" if offset else "wb")
        except OSError as e:
            raise _write_failed(part, e) from None
        with out:
            if progress is not None:
                progress(done, total)
            while True:
                try:
                    chunk = resp.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException):
                    # Reset/timeout mid-stream: what was written so far is good, keep it for a resume.
                    raise _Truncated(done, total) from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as e:
                    raise _write_failed(part, e) from None
                h.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            try:
                out.flush()
                os.fsync(out.fileno())
            except OSError as e:
                raise _write_failed(part, e) from None
    # http.client returns b"" rather than raising when the peer closes early, so compare counts ourselves.
    if total is not None and done < total:
        raise _Truncated(done, total)
    return h


@contextlib.contextmanager
def _exclusive(dest: Path):
    """Hold ``<dest>.lock`` (flock) while fetching `dest`; the holder removes it, so the cache keeps no lock files.

    A waiter may lock a file the holder has just removed, so after locking it checks that the path still names
    the file it locked, and tries again if not.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): concurrent fetches are still verified, at worst one fails its checksum
        yield
        return
    lock = dest.parent / (dest.name + ".lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _write_failed(lock, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): fetch unlocked
            os.close(fd)
            yield
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def download(urls: Sequence[str], dest: Path, sha256: str, size: int | None = None, *, timeout_s: float = 30.0,
             progress: Progress | None = None, what: str | None = None) -> Path:
    """Fetch a file into `dest` from the first of `urls` that works, verified against `sha256` (and `size`).

    Returns `dest` at once when it already holds the right bytes. A URL whose bytes fail the size or checksum
    check is not saved and the next URL is tried; when no URL gives the right file the one-line DownloadError
    names each URL with its reason and says where to place the file by hand. `progress(done_bytes,
    total_bytes_or_None)` is called as data arrives.
    """
    dest = Path(dest)
    name = what or dest.name
    expected = str(sha256).strip().lower()
    if not _SHA256.fullmatch(expected):
        raise DownloadError(f"{name}: sha256 must be 64 hex digits (or a prefix of at least 8), got {_short(sha256, 20)!r}")
    if isinstance(urls, str):  # a lone URL would otherwise be tried one character at a time
        urls = [urls]
    for url in urls:
        if not url.lower().startswith(_SCHEMES):
            raise DownloadError(f"{name}: refusing to download {_short(url)} — only http:// and https:// URLs are allowed")

    if dest.exists() and sha256_file(dest).startswith(expected):  # before locking: a read-only cache still works
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest):
        return _download_locked(urls, dest, expected, size, timeout_s, progress, name)


def _download_locked(urls: Sequence[str], dest: Path, expected: str, size: int | None, timeout_s: float,
                     progress: Progress | None, name: str) -> Path:
    if dest.exists():
        if sha256_file(dest).startswith(expected):  # another process fetched it while we waited for the lock
            return dest
        dest.unlink()  # stale or corrupted: a verified copy replaces it below

    part = dest.parent / (dest.name + ".part")
    if part.exists() and size is not None:
        have = part.stat().st_size
        if have > size:
            part.unlink()
        elif have == size and sha256_file(part).startswith(expected):  # finished before a crash, never renamed
            os.replace(part, dest)
            return dest

    failures: list[str] = []
    for url in urls:
        h, reason = None, "server cannot continue the partial file, nor send it whole"
        for resume in (True, False):  # the second try only when the server cannot continue our part
            try:
                h = _fetch_into_part(url, part, size, timeout_s, progress, resume)
                break
            except _RestartWithoutRange:
                part.unlink(missing_ok=True)
            except _Truncated as t:
                done, total = t.args
                reason = f"connection closed after {done} of {total if total is not None else '?'} bytes; partial file kept"
                break
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
                # ValueError: urllib's reply to a malformed URL such as "http://".
                reason = _network_reason(e, timeout_s)
                break
        if h is None:
            failures.append(f"{url} ({reason})")
            continue

        got_size = part.stat().st_size
        actual = h.hexdigest()
        # Wrong bytes are never kept, and never stop us: the next mirror may serve the right file.
        if size is not None and got_size != size:
            part.unlink(missing_ok=True)
            failures.append(f"{url} (sent {got_size} bytes, expected {size}: a different file, not saved)")
            continue
        if not actual.startswith(expected):
            part.unlink(missing_ok=True)
            failures.append(f"{url} (checksum mismatch: sha256 expected {expected[:12]}…, got {actual[:12]}…: "
                            "a different or corrupted file, not saved)")
            continue
        os.replace(part, dest)
        return dest

    tried = ", ".join(failures) if failures else "no URL is known for it"
    raise DownloadError(f"could not download {name}: {tried} — place the file at {dest} by hand")


def fetch_cached(name: str, sha256: str, urls: Sequence[str], size: int | None = None, kind: str = "weights") -> Path:
    """`download` into ``cache_dir(kind)/name``; a verified copy already there costs no network."""
    if not name or Path(name).name != name or name in (".", ".."):
        # the name may come from a manifest: it must not climb out of the cache folder
        raise DownloadError(f"{name!r}: a cached file name must be a plain file name, without folders")
    return download(urls, cache_dir(kind) / name, sha256, size, what=name)
