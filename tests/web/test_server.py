"""The standalone server's HTTP: keep-alive, HTTP/1.0, malformed requests, the connection cap."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from jobtrace.lineage.queries import LineageStore
from jobtrace.web import DashboardServer, make_server
from tests.web.support import Stored


@contextmanager
def serving(stored: Stored, **options: object) -> Iterator[DashboardServer]:
    """``make_server`` with ``options`` on the stored runs, serving from a thread."""
    store = LineageStore(stored.url)
    server = make_server(store, "127.0.0.1", 0, log=None, **options)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        store.close()


def exchange(server: DashboardServer, request: bytes) -> bytes:
    """Send raw bytes on a new connection and read until the server closes it."""
    with socket.create_connection(server.server_address[:2], timeout=30) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_one_connection_serves_several_requests(stored: Stored) -> None:
    """HTTP/1.1 keeps the connection open between requests, as a polling page needs."""
    with serving(stored) as server:
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        try:
            for path in ("/api/runs", f"/runs/{stored.run.root}", "/static/live.js"):
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                assert response.status == 200, path
                assert response.getheader("Connection") is None
            assert conn.sock is not None  # still the first connection
        finally:
            conn.close()


def test_pipelined_requests_are_answered_in_order(stored: Stored) -> None:
    """Two requests sent at once get two answers, the second closing the connection."""
    with serving(stored) as server:
        answer = exchange(
            server,
            b"GET /api/runs HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    first, _, rest = answer.partition(b"\r\n")
    assert first == b"HTTP/1.1 200 OK"
    assert b"HTTP/1.1 404 Not Found" in rest
    assert rest.endswith(b"\r\n\r\n")  # a HEAD answer has no body


def test_http_1_0_closes_unless_asked_to_keep_alive(stored: Stored) -> None:
    """An HTTP/1.0 request is answered in HTTP/1.0 and the connection closed."""
    with serving(stored) as server:
        answer = exchange(server, b"GET /api/runs HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b'"runs"' in answer


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"GET * HTTP/1.1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
    ],
)
def test_malformed_requests_are_refused_by_the_server(
    stored: Stored, request_bytes: bytes, status: bytes
) -> None:
    """Requests the app should never see get a short answer and the connection closed."""
    with serving(stored) as server:
        answer = exchange(server, request_bytes)
    assert answer.split(b" ")[1] == status


def test_past_the_cap_the_longest_idle_connection_makes_room(stored: Stored) -> None:
    """With every slot held by idle clients, a new client still gets in; the oldest idle one goes."""
    with serving(stored, max_connections=3) as server:
        address = server.server_address[:2]
        idle = [socket.create_connection(address, timeout=30) for _ in range(3)]
        try:
            conn = http.client.HTTPConnection(*address, timeout=30)
            conn.request("GET", "/api/runs")
            assert conn.getresponse().status == 200
            conn.close()
            assert closed(idle[0])  # by the server
        finally:
            for sock in idle:
                sock.close()


def test_shutdown_with_clients_connected_returns(stored: Stored) -> None:
    """Open idle connections do not keep shutdown() and server_close() from returning."""
    with serving(stored) as server:
        address = server.server_address[:2]
        idle = [socket.create_connection(address, timeout=30) for _ in range(5)]
    try:
        assert all(closed(sock) for sock in idle)
    finally:
        for sock in idle:
            sock.close()


def closed(sock: socket.socket) -> bool:
    """Whether the server closed this connection (a reset if it was never accepted)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
