"""The shared downloader against a local HTTP server: cache hits, checksums, resume, mirrors, one-line errors."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket

import numpy as np
import pytest

from cnnlab.download import cache_dir, download, fetch_cached, sha256_file
from cnnlab.errors import CnnlabError, DownloadError
from conftest import start_http_server

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
TIMEOUT_S = 5.0


class _Server:
    """What the handler serves and how it misbehaves; it records every request's path and headers."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()  # send half the body, announce all of it, then close
        self.ignore_range: set[str] = set()  # answer a Range request with the whole file (200)
        self.redirects: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.url = ""

    def requests_for(self, path: str) -> list[dict[str, str]]:
        return [h for p, h in self.requests if p == path]


def _handler(state: _Server):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            state.requests.append((self.path, dict(self.headers)))
            self.close_connection = True
            if self.path in state.redirects:
                self.send_response(302)
                self.send_header("Location", state.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if m and self.path not in state.ignore_range:
                start = int(m.group(1))
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if self.path in state.truncate:
                chunk = chunk[: len(chunk) // 2]
            self.wfile.write(chunk)

    return Handler


@pytest.fixture
def server():
    state = _Server()
    state.url, stop = start_http_server(_handler(state))
    try:
        yield state
    finally:
        stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connecting is refused at once
    return f"http://127.0.0.1:{port}/w.bin"


def test_cache_dir_follows_env(cache):
    d = cache_dir("datasets")
    assert d == cache / "datasets" and d.is_dir()


def test_good_file_lands_in_cache_and_second_call_is_offline(server, cache):
    server.files["/w.bin"] = PAYLOAD
    seen = []
    dest = download([server.url + "/w.bin"], cache_dir("weights") / "w.bin", PAYLOAD_SHA, len(PAYLOAD),
                    timeout_s=TIMEOUT_S, progress=lambda done, total: seen.append((done, total)))
    assert dest == cache / "weights" / "w.bin"
    assert dest.read_bytes() == PAYLOAD and sha256_file(dest) == PAYLOAD_SHA
    assert not (dest.parent / "w.bin.part").exists()
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    assert fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"], size=len(PAYLOAD)) == dest
    assert len(server.requests) == 1


def test_wrong_checksum_saves_nothing(server, cache):
    server.files["/w.bin"] = PAYLOAD
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DownloadError) as e:
        fetch_cached("w.bin", wrong, [server.url + "/w.bin"])
    msg = str(e.value)
    assert "\n" not in msg
    assert server.url + "/w.bin" in msg and wrong[:12] in msg and PAYLOAD_SHA[:12] in msg
    folder = cache / "weights"
    assert not (folder / "w.bin").exists() and not (folder / "w.bin.part").exists()


def test_wrong_size_saves_nothing(server, cache):
    server.files["/w.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="expected 299999"):
        fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"], size=len(PAYLOAD) - 1)
    assert list((cache / "weights").iterdir()) == []


def test_truncated_transfer_is_resumed_with_range(server, cache):
    server.files["/w.bin"] = PAYLOAD
    server.truncate.add("/w.bin")
    part = cache / "weights" / "w.bin.part"
    with pytest.raises(DownloadError, match="partial file kept") as e:
        fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"], size=len(PAYLOAD))
    assert "\n" not in str(e.value)
    half = len(PAYLOAD) // 2
    assert part.read_bytes() == PAYLOAD[:half]
    assert not (cache / "weights" / "w.bin").exists()

    server.truncate.clear()
    dest = fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"], size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    first, second = server.requests_for("/w.bin")
    assert "Range" not in first
    assert second["Range"] == f"bytes={half}-"


def test_truncated_without_size_is_detected_from_content_length(server, cache):
    server.files["/w.bin"] = PAYLOAD
    server.truncate.add("/w.bin")
    with pytest.raises(DownloadError, match=f"after {len(PAYLOAD) // 2} of {len(PAYLOAD)} bytes"):
        fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"])
    assert (cache / "weights" / "w.bin.part").exists()


def test_server_ignoring_range_starts_over(server, cache):
    server.files["/w.bin"] = PAYLOAD
    server.ignore_range.add("/w.bin")
    part = cache / "weights" / "w.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000)  # not a prefix of the payload: appending to it would fail the checksum
    dest = fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"])
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests_for("/w.bin")[0]["Range"] == "bytes=1000-"


def test_part_longer_than_remote_file_starts_over(server, cache):
    server.files["/w.bin"] = PAYLOAD
    part = cache / "weights" / "w.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD + b"junk")  # server answers 416 to the Range
    dest = fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"])
    assert dest.read_bytes() == PAYLOAD
    first, second = server.requests_for("/w.bin")
    assert "Range" in first and "Range" not in second


def test_404_falls_through_to_next_url(server, cache):
    server.files["/mirror/w.bin"] = PAYLOAD
    urls = [server.url + "/missing/w.bin", server.url + "/mirror/w.bin"]
    dest = fetch_cached("w.bin", PAYLOAD_SHA, urls, size=len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/missing/w.bin", "/mirror/w.bin"]


def test_all_urls_failing_is_one_line(server, cache, closed_port_url):
    urls = [server.url + "/missing/w.bin", closed_port_url]
    dest = cache / "weights" / "w.bin"
    with pytest.raises(DownloadError) as e:
        download(urls, dest, PAYLOAD_SHA, timeout_s=TIMEOUT_S, what="resnet18 weights")
    msg = str(e.value)
    assert isinstance(e.value, CnnlabError) and e.value.exit_code == 2
    assert "\n" not in msg
    assert msg.startswith("could not download resnet18 weights: ")
    assert f"{urls[0]} (HTTP 404)" in msg
    assert f"{urls[1]} (no network: connection refused)" in msg
    assert msg.endswith(f"place the file at {dest} by hand")
    assert not dest.exists()


def test_closed_port_is_no_network(cache, closed_port_url):
    with pytest.raises(DownloadError, match=r"\(no network: connection refused\)") as e:
        fetch_cached("w.bin", PAYLOAD_SHA, [closed_port_url])
    assert e.value.exit_code == 2


def test_corrupted_dest_is_replaced(server, cache):
    server.files["/w.bin"] = PAYLOAD
    dest = cache / "weights" / "w.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD[:-10] + b"0123456789")
    assert fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"]) == dest
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_file_placed_by_hand_needs_no_url(cache):
    dest = cache / "weights" / "w.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD)
    assert fetch_cached("w.bin", PAYLOAD_SHA.upper(), []) == dest


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/w.bin", "/etc/passwd", "data:,hello"])
def test_non_http_url_refused(server, cache, url):
    server.files["/w.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="only http:// and https://"):
        fetch_cached("w.bin", PAYLOAD_SHA, [url, server.url + "/w.bin"])
    assert server.requests == [] and list((cache / "weights").iterdir()) == []


@pytest.mark.parametrize("target, scheme", [("file:///etc/passwd", "file"), ("ftp://127.0.0.1:9/w.bin", "ftp")])
def test_redirect_off_http_refused(server, cache, target, scheme):
    server.redirects["/w.bin"] = target
    with pytest.raises(DownloadError, match=rf"\(redirect to {scheme}:// refused\)"):
        fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"])


def test_redirect_within_http_followed(server, cache):
    server.files["/real/w.bin"] = PAYLOAD
    server.redirects["/w.bin"] = server.url + "/real/w.bin"
    assert fetch_cached("w.bin", PAYLOAD_SHA, [server.url + "/w.bin"]).read_bytes() == PAYLOAD


@pytest.mark.parametrize("name", ["../w.bin", "sub/w.bin", "", ".."])
def test_cached_name_cannot_leave_cache(cache, name):
    with pytest.raises(DownloadError, match="plain file name"):
        fetch_cached(name, PAYLOAD_SHA, ["http://127.0.0.1:9/w.bin"])


def test_bad_sha256_refused(cache):
    with pytest.raises(DownloadError, match="64 hex digits"):
        fetch_cached("w.bin", "abc123", ["http://127.0.0.1:9/w.bin"])
