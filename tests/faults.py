"""A TCP proxy in front of a real service, to inject the faults users meet: refused, black-holed.

``refuse()`` closes every connection and refuses new ones (a service that is down); ``blackhole()``
accepts connections and swallows their bytes without an answer (a host that vanished from the
network); ``pause()`` keeps every connection open and stops moving bytes either way, to move them
again at ``heal()`` (a frozen process, a long GC pause); ``heal()`` goes back to forwarding. Tests
point a client at :attr:`TcpProxy.port`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Literal

Mode = Literal["forward", "refuse", "blackhole", "pause"]


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target`` until told to fail."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "forward"
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()

    def refuse(self) -> None:
        """Drop every connection; new ones are closed at once."""
        self.mode = "refuse"
        self._drop_all()

    def blackhole(self) -> None:
        """Drop every connection; new ones are accepted and never answered."""
        self.mode = "blackhole"
        self._drop_all()

    def pause(self) -> None:
        """Hold every connection, old and new, open without moving a byte until ``heal()``."""
        self.mode = "pause"

    def heal(self) -> None:
        """Forward again (what a pause held back goes through now)."""
        self.mode = "forward"

    def close(self) -> None:
        self._closed = True
        self._server.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            with self._lock:
                self._open.add(client)
            if self.mode == "blackhole":
                continue  # held open, never read or answered
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open.add(upstream)
        pair = {client: upstream, upstream: client}
        try:
            while self.mode in ("forward", "pause") and not self._closed:
                if self.mode == "pause":
                    time.sleep(0.02)
                    continue
                readable, _, _ = select.select(list(pair), [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def tcp_proxy(target_port: int) -> Iterator[TcpProxy]:
    """A :class:`TcpProxy` for the duration of a test."""
    proxy = TcpProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
