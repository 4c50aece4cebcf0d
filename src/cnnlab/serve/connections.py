"""How the server holds connections: the listening socket, a deadline for request headers, a connection cap.

uvicorn closes a keep-alive connection left idle after a response (`timeout_keep_alive`), but nothing
closes a connection whose request headers never complete: one that sends nothing, half a request
line, headers without the final blank line, or a byte now and then (slowloris). With httptools it
also buffers headers without any size limit (2 MB of never-ending headers were taken in silently).
`limit_concurrency` answers 503 only once a request's headers are in, counting
`connections >= limit` (a limit of 1 refuses everything). So the server runs uvicorn's HTTP protocol
with these additions (`guarded_protocol`):

- Each request's headers must arrive within `header_timeout_s` in total, counted from the
  connection opening (first request) or the first byte of the request (later ones on the same
  connection). It is one deadline, not reset by each byte. When it passes, a partly sent request gets
  `408` and the connection closes. A connection that sent nothing is just closed: browsers open
  spare connections early and show an error if one of them gets an unrequested 408.
- More than `MAX_HEADER_BYTES` of unfinished headers gets `431` and the connection closes.
- A request that arrives while more than `max_connections` connections are open (in this process)
  gets `503` + `Retry-After: 1` and the connection closes, so the work in progress is bounded and an
  excess client is told at once instead of waiting. Stalled connections count until their deadline
  closes them; beyond the cap a connection is still accepted, and lasts until its headers (503) or
  its deadline, so the header deadline is what bounds how long sockets can be held.

The listening socket is bound here before uvicorn starts (`bind_listener`). A port in use is then
one clear error, and the "serving on" line can wait until the socket is really listening.
"""

from __future__ import annotations

import errno
import functools
import inspect
import json
import socket
from http import HTTPStatus

from uvicorn.protocols.http.h11_impl import H11Protocol

from cnnlab.errors import ConfigError

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn; h11 is always there
    HttpToolsProtocol = None

MAX_HEADER_BYTES = 64 * 1024  # nginx allows 4 x 8 KiB of header lines, h11 16 KiB
BACKLOG = 2048  # uvicorn's default


class _Guard:
    """Header deadline, header size cap and connection cap, mixed into one of uvicorn's HTTP protocols."""

    def __init__(self, *args, header_timeout_s: float, max_connections: int, max_header_bytes: int = MAX_HEADER_BYTES, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout_s, self.max_connections, self.max_header_bytes = header_timeout_s, max_connections, max_header_bytes
        self._header_timer = None
        self._header_bytes = 0  # bytes received since the deadline was set (the request that is not yet complete)

    # --- the deadline for a request's headers

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _request_running(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._header_bytes and not self._request_running():  # a response in flight would get a 408 in the middle of it
            self._refuse(408, f"request headers not received within {self.header_timeout_s:g} s")
        else:
            self.transport.close()

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` with a JSON detail and close; written directly, no request has reached the app."""
        body = json.dumps({"detail": detail}).encode()
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Bytes while no request is running start the next request's deadline, even bare CRLFs, which the
        # parsers skip without starting a request but which cancel uvicorn's keep-alive timer.
        if not self._request_running():
            self._arm()
        if self._header_timer is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        # Still waiting for the end of the headers after this chunk: all of it was header bytes.
        if self._header_timer is not None and self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._disarm()
            self._refuse(431, f"request headers are over the limit of {self.max_header_bytes:,} bytes")

    # --- the connection cap

    def _app_for_new_request(self):
        return _connection_limit_app(self.max_connections) if len(self.connections) > self.max_connections else self.app


class HttpToolsGuard(_Guard, HttpToolsProtocol or object):  # (object: never chosen without httptools)
    def on_message_begin(self) -> None:
        self._arm()  # a pipelined request starts its own deadline while the one before it runs
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        app, self.app = self.app, self._app_for_new_request()
        try:
            super().on_headers_complete()
        finally:
            self.app = app


class H11Guard(_Guard, H11Protocol):
    def handle_events(self) -> None:
        cycle = self.cycle
        app, self.app = self.app, self._app_for_new_request()
        try:
            super().handle_events()
        finally:
            self.app = app
        if self.cycle is not cycle:  # a request's headers were complete
            self._disarm()


@functools.lru_cache(maxsize=8)
def _connection_limit_app(limit: int):
    body = json.dumps({"detail": f"server busy: over {limit} connections are open (--max-connections); retry shortly"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"retry-after", b"1"),
               (b"connection", b"close")]

    async def refuse(scope, receive, send):
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse


def guarded_protocol(header_timeout_s: float, max_connections: int, http: str = "auto"):
    """uvicorn's `http=` argument: its httptools protocol (h11 without httptools, or `http="h11"`) with the guards.

    A partial of a module-level class, so it pickles into `--workers` processes with the rest of uvicorn's Config.
    """
    cls = HttpToolsGuard if HttpToolsProtocol is not None and http in ("auto", "httptools") else H11Guard
    return functools.partial(cls, header_timeout_s=header_timeout_s, max_connections=max_connections)


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (0: any free port), not yet listening; ConfigError naming the fix when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart at once over TIME_WAIT connections
    try:
        sock.bind((host, port))
    except socket.gaierror as e:
        sock.close()
        raise ConfigError(f"--host {host}: cannot resolve it ({e.strerror}) — use an address such as 127.0.0.1") from None
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use — pick another with --port") from None
        if e.errno == errno.EACCES:
            raise ConfigError(f"port {port} on {host}: permission denied (ports below 1024 need administrator rights) — pick another with --port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--host {host} is not an address of this machine — use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
        raise ConfigError(f"cannot listen on {host} port {port}: {e.strerror} — pick another --host or --port") from None
    sock.set_inheritable(True)  # --workers: the worker processes serve this socket
    return sock


def listen_url(sock: socket.socket) -> str:
    """Start listening (clients that connect before the app is ready wait in the backlog) and return the URL."""
    sock.listen(BACKLOG)
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def uvicorn_config(app, header_timeout_s: float, keep_alive_timeout_s: float, max_connections: int, workers: int = 1,
                   log_level: str = "warning", factory: bool = False, http: str = "auto"):
    import uvicorn

    return uvicorn.Config(app, factory=factory, workers=workers, log_level=log_level, ws="none", backlog=BACKLOG,
                          http=guarded_protocol(header_timeout_s, max_connections, http),
                          timeout_keep_alive=keep_alive_timeout_s)  # type: ignore[arg-type]  # a float works: call_later


def run_uvicorn(config, sock: socket.socket) -> None:
    """Serve `config` on the already listening `sock` until stopped (Ctrl+C: returns; start-up failure: exit 3, as uvicorn.run)."""
    import uvicorn

    try:
        if config.workers > 1:
            from uvicorn.supervisors import Multiprocess

            # older uvicorn versions are given each worker's target; newer ones build it themselves
            target = {"target": uvicorn.Server(config).run} if "target" in inspect.signature(Multiprocess).parameters else {}
            Multiprocess(config, sockets=[sock], **target).run()
            return
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        return
    if not server.started:
        raise SystemExit(3)
