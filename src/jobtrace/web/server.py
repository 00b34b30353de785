"""``jobtrace web``'s own HTTP server: the WSGI app behind timeouts and a cap on connections.

One thread waits on every open connection with a selector and reads request heads; a small pool
of threads runs the app and writes the answers. An idle connection costs a descriptor, never a
thread, so many of them cannot starve the others:

- a request must arrive whole within ``request_timeout`` of its first byte (else 408), and a
  connection that sends nothing for ``idle_timeout`` is closed;
- past ``max_connections`` open connections (at most half the process's descriptors), the one
  idle the longest is closed to make room, so a new client always gets in; and when the process
  runs out of descriptors anyway, accepting pauses instead of spinning.

Off loopback it requires credentials from the environment (:mod:`jobtrace.web.auth`). Embedding
the dashboard in another server is :func:`jobtrace.web.create_app`'s business, not this module's.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import io
import ipaddress
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, TextIO
from urllib.parse import unquote_to_bytes, urlsplit

from jobtrace.lineage.queries import LineageStore
from jobtrace.web.app import POLL_SECONDS, create_app
from jobtrace.web.auth import PASSWORD_ENV, TOKEN_ENV, USER_ENV, Credentials

if sys.platform != "win32":
    import resource

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "REQUEST_TIMEOUT",
    "WORKERS",
    "DashboardServer",
    "make_server",
    "serve",
]

#: Seconds from a request's first byte to the end of its headers; also the most its answer may
#: take to be sent.
REQUEST_TIMEOUT = 10.0
#: Seconds a connection may stay open without sending anything (before or between requests).
IDLE_TIMEOUT = 30.0
#: Connections open at once, at most; the one idle the longest makes room for a new one.
MAX_CONNECTIONS = 256
#: Requests answered at once.
WORKERS = 8
#: Bytes of request line and headers, at most (431 past it).
MAX_HEAD = 16 * 1024
#: Connections the kernel holds until they are accepted.
BACKLOG = 128
#: Seconds between two checks of the timeouts, and the pause after running out of descriptors.
_TICK = 0.1
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_WAKE = "wake"


class _Connection:
    """One client connection: what it sent so far and when."""

    __slots__ = ("buffer", "busy", "last_active", "peer", "sock", "started")

    def __init__(self, sock: socket.socket, peer: Any, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = bytearray()
        self.last_active = now
        self.started: float | None = None  # the first byte of the request being read
        self.busy = False  # in a worker's hands


class _BadRequest(Exception):
    """A request the server answers itself, with this status, and then hangs up."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


class DashboardServer:
    """An HTTP/1.1 server for one WSGI application, with the limits of the module docstring.

    Used like the standard library's servers: ``serve_forever()`` in one thread, ``shutdown()``
    from another, ``server_close()`` (or a ``with`` block) at the end.

    Args:
        address: ``(host, port)``; port 0 picks a free one.
        app: The WSGI application (normally the dashboard's).
        log: Where a line per request goes (``None``: nowhere).

    Raises:
        OSError: The address cannot be bound (port taken, unknown host).
    """

    def __init__(
        self,
        address: tuple[str, int],
        app: Any,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        workers: int = WORKERS,
        log: TextIO | None = None,
    ) -> None:
        self.app = app
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max(1, min(max_connections, _descriptors() // 2))
        self.log = log
        self.socket = _listen(*address)
        self.server_address: tuple[Any, ...] = self.socket.getsockname()
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="jobtrace-web")
        self._connections: dict[_Connection, None] = {}  # insertion-ordered, loop thread only
        self._returned: queue.SimpleQueue[tuple[_Connection, bool]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed = False

    @property
    def url(self) -> str:
        """The address it listens on, as a URL (the real port when asked for port 0)."""
        host, port = self.server_address[:2]
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server_close()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Answer requests until :meth:`shutdown`."""
        self._stop.clear()
        self._stopped.clear()
        selector = selectors.DefaultSelector()
        selector.register(self.socket, selectors.EVENT_READ, None)
        selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        accepting = True
        resume_at = 0.0
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(min(poll_interval, _TICK)):
                    if key.data is None:
                        if not self._accept(selector):
                            selector.unregister(self.socket)
                            accepting, resume_at = False, time.monotonic() + _TICK
                    elif key.data == _WAKE:
                        self._drain_wake()
                    else:
                        self._read(selector, key.data)
                self._take_back(selector)
                now = time.monotonic()
                if not accepting and now >= resume_at:
                    selector.register(self.socket, selectors.EVENT_READ, None)
                    accepting = True
                self._expire(selector, now)
        finally:
            for conn in list(self._connections):
                if not conn.busy:
                    self._close(selector, conn)
            selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has returned."""
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the listening socket and every connection; requests in progress are cut."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self.socket.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for conn in list(self._connections):
            conn.sock.close()
        self._connections.clear()
        self._wake_r.close()
        self._wake_w.close()

    # The loop's side.

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accept what is waiting; ``False`` when out of descriptors with nothing to close."""
        for _ in range(64):
            try:
                sock, peer = self.socket.accept()
            except BlockingIOError:
                return True
            except OSError as error:
                if error.errno in _OUT_OF_DESCRIPTORS:
                    return self._evict(selector)
                return True  # the client gave up before we accepted: nothing to do
            if len(self._connections) >= self.max_connections and not self._evict(selector):
                sock.close()  # every connection is being answered: this one must retry
                continue
            sock.setblocking(False)
            conn = _Connection(sock, peer, time.monotonic())
            self._connections[conn] = None
            selector.register(sock, selectors.EVENT_READ, conn)
        return True

    def _evict(self, selector: selectors.BaseSelector) -> bool:
        """Close the connection idle the longest; ``False`` if every one is being answered."""
        idle = [conn for conn in self._connections if not conn.busy]
        if not idle:
            return False
        self._close(selector, min(idle, key=lambda conn: conn.last_active))
        return True

    def _read(self, selector: selectors.BaseSelector, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(selector, conn)
            return
        if not data:
            self._close(selector, conn)
            return
        now = time.monotonic()
        conn.last_active = now
        if conn.started is None:
            conn.started = now
        conn.buffer += data
        self._dispatch(selector, conn)

    def _dispatch(self, selector: selectors.BaseSelector, conn: _Connection) -> None:
        """Hand the connection to a worker once its buffer holds a whole request head."""
        while conn.buffer[:2] == b"\r\n" or conn.buffer[:1] == b"\n":
            del conn.buffer[: 2 if conn.buffer[:1] == b"\r" else 1]  # stray line ends (RFC 9112)
        end, size = _head_end(conn.buffer)
        if end > MAX_HEAD or (end < 0 and len(conn.buffer) > MAX_HEAD):
            self._refuse(selector, conn, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return
        if end < 0:
            if not conn.buffer:
                conn.started = None
            return
        head, rest = bytes(conn.buffer[:end]), bytes(conn.buffer[end + size :])
        conn.buffer = bytearray(rest)
        conn.busy = True
        selector.unregister(conn.sock)
        try:
            self._pool.submit(self._serve, conn, head)
        except RuntimeError:  # shutting down
            self._close(selector, conn)

    def _take_back(self, selector: selectors.BaseSelector) -> None:
        """Connections the workers are done with: kept alive, or closed."""
        while True:
            try:
                conn, keep = self._returned.get_nowait()
            except queue.Empty:
                return
            conn.busy = False
            if not keep or self._stop.is_set():
                self._close(selector, conn)
                continue
            now = time.monotonic()
            conn.last_active = now
            conn.started = now if conn.buffer else None
            selector.register(conn.sock, selectors.EVENT_READ, conn)
            self._dispatch(selector, conn)  # a pipelined request already in the buffer

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        for conn in list(self._connections):
            if conn.busy:
                continue
            if conn.started is not None:
                if now - conn.started > self.request_timeout:
                    self._refuse(selector, conn, HTTPStatus.REQUEST_TIMEOUT)
            elif now - conn.last_active > self.idle_timeout:
                self._close(selector, conn)

    def _refuse(
        self, selector: selectors.BaseSelector, conn: _Connection, status: HTTPStatus
    ) -> None:
        """Answer ``status`` without the app, as far as the socket takes it now, and hang up."""
        with contextlib.suppress(OSError):
            conn.sock.send(_plain_response(status))
        self._close(selector, conn)

    def _close(self, selector: selectors.BaseSelector, conn: _Connection) -> None:
        if not conn.busy:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(conn.sock)
        self._connections.pop(conn, None)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already awake (the pipe is full) or closed
            self._wake_w.send(b"x")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    # A worker's side.

    def _serve(self, conn: _Connection, head: bytes) -> None:
        keep = False
        try:
            conn.sock.settimeout(self.request_timeout)
            keep = self._answer(conn, head)
            if keep:
                conn.sock.setblocking(False)
        except Exception:  # a socket error or timeout: nothing more to say to this client
            keep = False
        finally:
            self._returned.put((conn, keep))
            self._wake()

    def _answer(self, conn: _Connection, head: bytes) -> bool:
        """Answer one request; whether the connection can take another."""
        started = time.monotonic()
        try:
            method, target, version, headers = _parse_head(head)
        except _BadRequest as error:
            conn.sock.sendall(_plain_response(error.status))
            return False
        environ = self._environ(conn, method, target, version, headers)
        status, response_headers, body, rest = _call(self.app, environ)
        try:
            connection = headers.get("Connection", "").lower()
            has_body = "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0"
            names = {name.lower() for name, _ in response_headers}
            # An answer without a length (a streamed list) ends when the connection closes.
            streamed = rest is not None and "content-length" not in names
            if rest is not None and not streamed:
                body += b"".join(rest)
            if version == "HTTP/1.1":
                keep = "close" not in connection and not has_body and not streamed
            else:
                keep = "keep-alive" in connection and not has_body and not streamed
            lines = [f"{version} {status}"]
            lines += [f"{name}: {value}" for name, value in response_headers]
            if "content-length" not in names and not streamed:
                lines.append(f"Content-Length: {len(body)}")
            lines += [f"Date: {formatdate(usegmt=True)}", "Server: jobtrace-web"]
            if version == "HTTP/1.1" and not keep:
                lines.append("Connection: close")
            elif version == "HTTP/1.0" and keep:
                lines.append("Connection: keep-alive")
            payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
            code = status.split(" ", 1)[0]
            sent = 0
            if method != "HEAD" and code not in ("204", "304"):
                payload += body
                sent = len(body)
            conn.sock.sendall(payload)
            if streamed and rest is not None and method != "HEAD":
                for chunk in rest:
                    if chunk:
                        conn.sock.sendall(chunk)
                        sent += len(chunk)
        finally:
            close = getattr(rest, "close", None)
            if close is not None:
                close()
        self._log(conn, method, target, version, code, sent, time.monotonic() - started)
        return keep

    def _environ(
        self,
        conn: _Connection,
        method: str,
        target: str,
        version: str,
        headers: http.client.HTTPMessage,
    ) -> dict[str, Any]:
        path, _, query = target.partition("?")
        if "://" in path:  # absolute form: http://host/path
            path = urlsplit(path).path or "/"
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path.encode("latin-1")).decode("latin-1"),
            "QUERY_STRING": query.partition("#")[0],
            "REQUEST_URI": target,
            "SERVER_NAME": str(self.server_address[0]),
            "SERVER_PORT": str(self.server_address[1]),
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": str(conn.peer[0]) if isinstance(conn.peer, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name in set(headers.keys()):
            value = ",".join(headers.get_all(name) or [])
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
            else:
                environ[f"HTTP_{key}"] = value
        return environ

    def _log(
        self,
        conn: _Connection,
        method: str,
        target: str,
        version: str,
        code: str,
        size: int,
        seconds: float,
    ) -> None:
        if self.log is None:
            return
        peer = conn.peer[0] if isinstance(conn.peer, tuple) else "-"
        line = f'{peer} "{method} {_printable(target)} {version}" {code} {size} {seconds * 1000:.0f}ms\n'
        try:
            self.log.write(line)
            self.log.flush()
        except (OSError, ValueError):
            pass


def make_server(
    store: LineageStore,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    trace_url: str | None = None,
    trace_service: str | None = None,
    base_path: str = "",
    credentials: Credentials | None = None,
    poll_seconds: float = POLL_SECONDS,
    request_timeout: float = REQUEST_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    workers: int = WORKERS,
    log: TextIO | None = sys.stderr,
) -> DashboardServer:
    """A dashboard server bound to ``host:port`` (0: any free port), not serving yet.

    Args:
        trace_url: The trace link template (see :func:`~jobtrace.web.links.trace_template`).
        trace_service: What the template's ``{service}`` becomes (else ``JOBTRACE_TRACE_SERVICE``).
        base_path: Serve under this prefix (behind a proxy that does not strip it).
        credentials: What every request must present; ``None`` takes them from the environment
            (``JOBTRACE_WEB_TOKEN``, or ``JOBTRACE_WEB_USER`` and ``JOBTRACE_WEB_PASSWORD``).
            Without any, only a loopback address is served.

    Raises:
        ValueError: A bad trace URL template, no credentials for an address other machines can
            reach, half a user and password, or Jinja2 missing; the message is one line.
        OSError: The address cannot be bound (port taken, unknown host).
    """
    if credentials is None:
        credentials = Credentials.from_env()
    if credentials is None and _reachable_from_elsewhere(host):
        raise ValueError(
            f"{host or 'every address'} is reachable from other machines and the dashboard has"
            f" no login: set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}, to require them"
            " (or listen on 127.0.0.1)"
        )
    app = create_app(
        store,
        trace_url=trace_url,
        trace_service=trace_service,
        base_path=base_path,
        poll_seconds=poll_seconds,
        credentials=credentials,
    )
    return DashboardServer(
        (host, port),
        app,
        request_timeout=request_timeout,
        idle_timeout=idle_timeout,
        max_connections=max_connections,
        workers=workers,
        log=log,
    )


def serve(
    store: LineageStore | str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    **options: Any,
) -> None:
    """Serve the dashboard until interrupted, on a store or a URL (default: the usual store).

    ``options`` are :func:`make_server`'s.
    """
    owned = not isinstance(store, LineageStore)
    lineage = store if isinstance(store, LineageStore) else LineageStore(store)
    try:
        with make_server(lineage, host, port, **options) as server:
            server.serve_forever()
    finally:
        if owned:
            lineage.close()


# Pieces.


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``host:port``."""
    family = socket.AF_INET
    if host:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    sock.setblocking(False)
    return sock


def _reachable_from_elsewhere(host: str) -> bool:
    """Whether a server bound to ``host`` can be reached from another machine."""
    if not host:
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False  # binding will fail and say so
    return not all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


def _descriptors() -> int:
    """How many file descriptors the process may open (a large number when unknown)."""
    if sys.platform == "win32":
        return 2 * MAX_CONNECTIONS
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY and soft > 0 else 2**20


def _head_end(buffer: bytearray) -> tuple[int, int]:
    """Where a request head ends (its blank line) and that line's size; ``(-1, 0)`` if not yet."""
    crlf = buffer.find(b"\r\n\r\n")
    lf = buffer.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    if lf >= 0:
        return lf, 2
    return -1, 0


def _parse_head(head: bytes) -> tuple[str, str, str, http.client.HTTPMessage]:
    """Method, target, version and headers of a request head."""
    line, _, rest = head.partition(b"\n")
    words = line.rstrip(b"\r").decode("latin-1").split()
    if len(words) != 3:
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    method, target, version = words
    if not version.startswith("HTTP/") or not method.isalpha():
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    if not (target.startswith("/") or target.startswith(("http://", "https://"))):
        raise _BadRequest(HTTPStatus.BAD_REQUEST)
    try:
        headers = http.client.parse_headers(io.BytesIO(rest + b"\r\n\r\n"))
    except http.client.HTTPException:
        raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE) from None
    return method.upper(), target, version, headers


def _call(
    app: Any, environ: dict[str, Any]
) -> tuple[str, list[tuple[str, str]], bytes, _Rest | None]:
    """Run a WSGI application: its status, headers, the body's first part, and the rest.

    The rest (``None`` when the body is whole) is the application's iterator, still to run:
    a streamed answer is written as it is produced, never held whole.
    """
    answer: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and answer:
            raise exc_info[1].with_traceback(exc_info[2])
        answer["status"], answer["headers"] = status, list(headers)
        return chunks.append

    failed = HTTPStatus.INTERNAL_SERVER_ERROR
    failure = (f"{failed.value} {failed.phrase}", [("Content-Type", "text/plain")], b"", None)
    try:
        result: Iterable[bytes] = app(environ, start_response)
        if isinstance(result, (list, tuple)):
            chunks.extend(result)
            rest: _Rest | None = None
        else:
            rest = _Rest(result)
            chunks.extend(rest.first())  # a lazy application calls start_response now
    except Exception:
        import logging

        logging.getLogger("jobtrace.web").exception("jobtrace web: the application failed")
        return failure
    if "status" not in answer:
        if rest is not None:
            rest.close()
        return failure
    return answer["status"], answer["headers"], b"".join(chunks), rest


class _Rest:
    """The rest of an application's iterable body, closed once (PEP 3333) however it ends."""

    def __init__(self, result: Iterable[bytes]) -> None:
        self._result = result
        self._iterator = iter(result)
        self._closed = False

    def first(self) -> list[bytes]:
        """The first non-empty chunk (none when the body is empty)."""
        for chunk in self._iterator:
            if chunk:
                return [chunk]
        return []

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def __next__(self) -> bytes:
        return next(self._iterator)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self._result, "close", None)
            if close is not None:
                close()


def _plain_response(status: HTTPStatus) -> bytes:
    body = f"{status.value} {status.phrase}\n".encode()
    return (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


def _printable(text: str, limit: int = 300) -> str:
    """A request target fit for a log line: no control characters, not too long."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return shown + ("…" if len(text) > limit else "")
