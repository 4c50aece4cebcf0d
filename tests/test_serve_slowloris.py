"""Stalled clients (slowloris) against a real server on 127.0.0.1, over raw sockets, with short timeouts.

A connection must deliver each request's headers within `header_timeout_s` in total (not per byte), an
idle keep-alive connection is closed after `keep_alive_timeout_s`, and more than `max_connections` open
connections get 503 at once, while normal requests are answered meanwhile. Also: `cnnlab serve` binds
before it says it serves (a port in use is one line, exit 2), and `--workers 2` gets the same deadline.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from cnnlab.serve.app import ServeConfig, create_app
from cnnlab.serve.connections import MAX_HEADER_BYTES, bind_listener, listen_url, uvicorn_config
from conftest import two_class_images
from test_errors import assert_clean_error
from test_serve import png_bytes, running

HEADER_S, KEEP_ALIVE_S, MAX_CONNECTIONS = 0.6, 0.4, 6
SLACK_S = 2.5  # a loaded 2-core machine may run the timer late, never early


@contextmanager
def guarded_server(app, cfg: ServeConfig, http: str = "auto"):
    """`app` as `cnnlab serve` runs it (its socket, protocol and limits), in a thread; yields (host, port)."""
    config = uvicorn_config(app, cfg.header_timeout_s, cfg.keep_alive_timeout_s, cfg.max_connections, http=http)
    sock = bind_listener("127.0.0.1", 0)
    listen_url(sock)
    try:
        with running(uvicorn.Server(config), sockets=[sock]):
            yield sock.getsockname()[:2]
    finally:
        sock.close()


@pytest.fixture(scope="module")
def server(trained_run):
    run, _ = trained_run
    cfg = ServeConfig(model=str(run), backend="torch", header_timeout_s=HEADER_S, keep_alive_timeout_s=KEEP_ALIVE_S, max_connections=MAX_CONNECTIONS)
    with guarded_server(create_app(cfg), cfg) as address:
        yield address


@pytest.fixture(scope="module")
def image_png():
    x, _ = two_class_images(1, 32, seed=11)
    return png_bytes(x[0])


def stall(address, first: bytes = b"", trickle: bytes = b"", every_s: float = 0.2, give_up_s: float = 10.0) -> tuple[float, bytes]:
    """Connect, send `first`, then `trickle` every `every_s`; (seconds until the server closed, what it sent)."""
    sock = socket.create_connection(address, timeout=5)
    start, reply = time.monotonic(), b""
    try:
        if first:
            sock.sendall(first)
        sock.settimeout(every_s)
        while time.monotonic() - start < give_up_s:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                if trickle:
                    try:
                        sock.sendall(trickle)
                    except OSError:  # closed while we were sending: the next recv says so
                        pass
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            reply += data
        return time.monotonic() - start, reply
    finally:
        sock.close()


def status(reply: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", reply)
    return int(m.group(1)) if m else None


STALLS = {
    "nothing at all": (b"", b"", None),  # closed without an answer: nothing was asked
    "half a request line": (b"GET /heal", b"", 408),
    "headers without the blank line": (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n", b"", 408),
    "a header byte every 0.2 s": (b"GET /healthz HTTP/1.1\r\nX-Slow: ", b"a", 408),
}


@pytest.mark.parametrize("name", list(STALLS))
def test_stalled_request_is_cut_at_the_header_deadline(server, name):
    first, trickle, expected = STALLS[name]
    seconds, reply = stall(server, first, trickle)
    assert HEADER_S * 0.9 <= seconds <= HEADER_S + SLACK_S, (name, seconds)  # one deadline in total, however the bytes come
    if trickle:  # the client kept sending, so the reply may have been lost to a reset; the deadline is what counts
        assert status(reply) in (expected, None), reply[:100]
    else:
        assert status(reply) == expected, reply[:100]
    if expected == 408:
        assert b"connection: close" in reply.lower() and b"not received within 0.6 s" in reply


def test_idle_keep_alive_connection_is_closed(server):
    """After a response, an idle connection lasts `keep_alive_timeout_s`; bare CRLFs then start the header deadline."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    seconds, reply = stall(server, request)
    assert status(reply) == 200 and KEEP_ALIVE_S * 0.9 <= seconds <= KEEP_ALIVE_S + SLACK_S, (seconds, reply[:60])
    seconds, reply = stall(server, request, trickle=b"\r\n")  # cancels uvicorn's keep-alive timer, starts no request
    assert status(reply) == 200 and seconds <= HEADER_S + KEEP_ALIVE_S + SLACK_S, (seconds, reply[:60])


def test_endless_headers_get_431_at_once(server):
    sock = socket.create_connection(server, timeout=5)
    with sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1000))
        reply = sock.recv(65536)
    assert status(reply) == 431 and b"limit of 65,536 bytes" in reply


def test_stalled_clients_under_the_cap_do_not_delay_a_prediction(server, image_png):
    """MAX_CONNECTIONS - 1 stalled sockets are held while a normal upload is answered; each is then closed."""
    results = []
    threads = [threading.Thread(target=lambda: results.append(stall(server, b"GET /he"))) for _ in range(MAX_CONNECTIONS - 1)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # the stalled connections are open before the prediction starts
    start = time.monotonic()
    r = httpx.post(f"http://{server[0]}:{server[1]}/v1/predict", content=image_png, headers={"content-type": "image/png"}, timeout=5)
    answered_s = time.monotonic() - start
    for t in threads:
        t.join(15)
    assert r.status_code == 200 and r.json()["predictions"][0]["class"] in ("circle", "square"), r.text
    assert answered_s < HEADER_S * 0.9, answered_s  # answered while every stalled socket was still open
    assert len(results) == MAX_CONNECTIONS - 1
    assert all(status(reply) == 408 and HEADER_S * 0.9 <= s <= HEADER_S + SLACK_S for s, reply in results), results


def test_over_the_connection_cap_a_request_gets_503_at_once_then_is_served(server):
    stalled = [socket.create_connection(server, timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)
        start = time.monotonic()
        r = httpx.get(f"http://{server[0]}:{server[1]}/healthz", timeout=5)
        assert r.status_code == 503 and time.monotonic() - start < 0.5
        assert r.headers["retry-after"] == "1" and f"over {MAX_CONNECTIONS} connections" in r.json()["detail"]
    finally:
        for s in stalled:
            s.close()
    for _ in range(100):  # the server sees the closes a moment later
        r = httpx.get(f"http://{server[0]}:{server[1]}/healthz", timeout=5)
        if r.status_code == 200:
            break
        time.sleep(0.05)
    assert r.status_code == 200


def test_h11_protocol_gets_the_same_deadline():
    """Without httptools uvicorn parses with h11; the guard works there too."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    cfg = ServeConfig(model="unused", header_timeout_s=HEADER_S, keep_alive_timeout_s=KEEP_ALIVE_S, max_connections=MAX_CONNECTIONS)
    with guarded_server(app, cfg, http="h11") as address:
        seconds, reply = stall(address, b"GET / HTTP/1.1\r\nX-Slow: ", trickle=b"a")
        assert HEADER_S * 0.9 <= seconds <= HEADER_S + SLACK_S, seconds
        seconds, reply = stall(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status(reply) == 200 and KEEP_ALIVE_S * 0.9 <= seconds <= KEEP_ALIVE_S + SLACK_S, seconds


# ------------------------------------------------------------------ `cnnlab serve` itself


def test_port_in_use_is_one_line_and_nothing_claims_to_serve(cli, trained_run):
    run, _ = trained_run
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("serve", run, "--backend", "torch", "--port", port)
    assert_clean_error(r, f"port {port} on 127.0.0.1 is in use", "--port")
    assert "serving" not in r.out


def test_workers_2_cut_a_stalled_client_and_report_their_limits(trained_run, image_png):
    """`cnnlab serve --workers 2 --port 0`: the line names the bound port; each worker has the header deadline."""
    run, _ = trained_run
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", str(run), "--port", "0", "--workers", "2", "--backend", "torch",
                             "--header-timeout-s", "1", "--keep-alive-timeout-s", "1", "--max-connections", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # printed once the socket listens
        m = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        assert m, (line, proc.poll())
        address = ("127.0.0.1", int(m.group(1)))
        base = f"http://127.0.0.1:{address[1]}"
        for _ in range(1200):  # the workers start after the line; connections wait in the backlog meanwhile
            try:
                if httpx.get(f"{base}/healthz", timeout=30).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
        info = httpx.get(f"{base}/v1/model", timeout=10).json()
        assert (info["header_timeout_s"], info["keep_alive_timeout_s"], info["max_connections"]) == (1.0, 1.0, 50)
        results = []
        threads = [threading.Thread(target=lambda: results.append(stall(address, b"GET /he"))) for _ in range(4)]
        for t in threads:
            t.start()
        r = httpx.post(f"{base}/v1/predict", content=image_png, headers={"content-type": "image/png"}, timeout=10)
        assert r.status_code == 200, r.text
        for t in threads:
            t.join(15)
        assert len(results) == 4 and all(status(reply) == 408 and 0.9 <= s <= 1 + SLACK_S for s, reply in results), results
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
