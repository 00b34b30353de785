"""A channel from forked children to the process they came from, for spans and measurements.

RQ forks a work horse per job (and prefork pools fork children that live for a few jobs): a horse
that exports its own telemetry connects to the collector and waits for it at every job's end, and
its metrics, cumulative from a one-job process, restart with every horse. So before a fork the
process that owns jobtrace's providers opens a local datagram socket pair and reads it on a thread;
its children send what they produce (an ended span, a histogram measurement, a counted message)
as plain data, and the parent feeds it to its own span processor and instruments, which export it
with its own. Sending never blocks: a full socket or a parent gone makes :func:`send` return
``False``, and the child handles that item itself, as without a channel.

``JOBTRACE_HANDOFF=0`` turns it off (with the lineage records' hand-off).
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401  (imported for its fork hooks; see below)
import contextlib
import logging
import os
import pickle
import socket
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("jobtrace")

# OpenTelemetry's SDK (1.45) re-detects its resource in every forked child with a thread pool. If
# ``concurrent.futures.thread`` is first imported after a TracerProvider was made, its fork hook
# (which frees the pool's global lock in the child) runs after the provider's, and every forked
# child (an RQ work horse) hangs there for good. Importing it with jobtrace puts its hook first.

_RECEIVE_SIZE = 4 * 1024 * 1024

Handler = Callable[[Any], None]


def enabled() -> bool:
    """Whether forked processes hand their telemetry over (``JOBTRACE_HANDOFF`` is not ``0``)."""
    return os.environ.get("JOBTRACE_HANDOFF", "1") != "0"


class _Channel:
    """The socket pair, the parent's reader thread, and what each kind of message goes to."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.owner = os.getpid()
        self.parent_end: socket.socket | None = None
        self.child_end: socket.socket | None = None
        self.in_child = False
        self.reader: threading.Thread | None = None
        self.lock = threading.Lock()
        # Held while a handler runs: a fork waits for it, so no child inherits a lock of the SDK
        # that the reader thread held at that moment.
        self.dispatching = threading.Lock()
        #: In a child: the signals it hands over instead of exporting (``traces``, ``metrics``).
        self.handed_off: set[str] = set()

    def open(self) -> None:
        """Before a fork in the owner: the socket pair (once) and its reader."""
        if self.in_child or not self.handlers or os.getpid() != self.owner or not enabled():
            return
        with self.lock:
            if self.parent_end is None:
                try:
                    self.parent_end, self.child_end = socket.socketpair(
                        socket.AF_UNIX, socket.SOCK_DGRAM
                    )
                except OSError as error:
                    logger.warning("jobtrace: forked processes will export themselves: %s", error)
                    return
                self.child_end.setblocking(False)
                with contextlib.suppress(OSError):  # room for bursts of spans (up to wmem_max)
                    self.child_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                    self.parent_end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            if self.reader is None:
                self.reader = threading.Thread(
                    target=self.read, name="jobtrace-fork-channel", daemon=True
                )
                self.reader.start()

    def read(self) -> None:
        end = self.parent_end
        # One buffer for the thread's life: ``recv(4 MiB)`` would allocate (and fault in) 4 MiB
        # for every datagram, ~20 µs each, which a busy parent (Celery's main process) pays per
        # span and measurement.
        buffer = bytearray(_RECEIVE_SIZE)
        while end is not None:
            try:
                size = end.recv_into(buffer)
            except InterruptedError:
                continue
            except OSError:
                return  # closed
            if not size:
                return  # shut down by close(): children never send an empty datagram
            self.dispatch(memoryview(buffer)[:size])

    def dispatch(self, data: bytes | memoryview) -> None:
        with self.dispatching:
            try:
                kind, payload = pickle.loads(data)
                self.handlers[kind](payload)
            except Exception:
                logger.warning("jobtrace: telemetry handed over by a child was lost", exc_info=True)

    def drain(self) -> None:
        """Dispatch what children sent and the reader has not taken yet (before an exit flush)."""
        end = self.parent_end
        buffer = bytearray(_RECEIVE_SIZE)  # not the reader's: the two may run at once
        while end is not None and not self.in_child:
            try:
                size = end.recv_into(buffer, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError, OSError):
                return
            self.dispatch(memoryview(buffer)[:size])

    def after_fork_in_child(self) -> None:
        self.dispatching = threading.Lock()
        if self.child_end is None:
            self.owner = os.getpid()  # no channel came along: this process may open its own
            return
        self.in_child = True
        self.reader = None  # the parent's thread did not come along
        self.lock = threading.Lock()
        if self.parent_end is not None:
            with contextlib.suppress(OSError):
                self.parent_end.close()
            self.parent_end = None


_channel = _Channel()


def handle(kind: str, handler: Handler) -> None:
    """In the process that exports: give what children send as ``kind`` to ``handler``."""
    _channel.handlers[kind] = handler


def in_child() -> bool:
    """Whether this process is a forked child whose telemetry goes to its parent."""
    return _channel.in_child


def handled(kind: str) -> bool:
    """In a child: whether the parent takes ``kind`` (its handlers came along with the fork)."""
    return _channel.in_child and kind in _channel.handlers


def hand_off(signal: str) -> None:
    """In a child: ``signal`` goes to the parent, so a job's end need not export it here."""
    _channel.handed_off.add(signal)


def handed_off(signal: str) -> bool:
    """Whether this child hands ``signal`` to its parent (its own flush can skip it)."""
    return _channel.in_child and signal in _channel.handed_off


def send(kind: str, payload: object) -> bool:
    """In a forked child: hand ``payload`` to the parent; ``False`` if not sent (handle it here)."""
    end = _channel.child_end
    if not _channel.in_child or end is None:
        return False
    try:
        end.send(pickle.dumps((kind, payload), pickle.HIGHEST_PROTOCOL))
    except Exception:  # full, the parent gone, or a value pickle refuses
        return False
    return True


def drain() -> None:
    """In the parent: take in what children sent and was not read yet (an exit flush is next)."""
    _channel.drain()


def close() -> None:
    """Stop reading (the process is shutting its telemetry down)."""
    for end in (_channel.parent_end, _channel.child_end):
        if end is not None:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)  # wakes the reader blocked in recv
            with contextlib.suppress(OSError):
                end.close()
    _channel.parent_end = _channel.child_end = None
    _channel.reader = None


def dropped(signal: str) -> None:
    """In a child: a send of ``signal`` failed, so its own flush must export it after all."""
    _channel.handed_off.discard(signal)


def reset() -> None:
    """A channel of this process's own, with no handlers: for tests."""
    global _channel
    close()
    _channel = _Channel()


def _before_fork() -> None:
    _channel.open()
    _channel.dispatching.acquire()


def _after_fork_in_parent() -> None:
    with contextlib.suppress(RuntimeError):
        _channel.dispatching.release()


def _after_fork_in_child() -> None:
    _channel.after_fork_in_child()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
