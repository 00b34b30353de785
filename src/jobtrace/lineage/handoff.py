"""Records of forked processes handed to the process they were forked from, which writes them.

A work horse (RQ forks one per job; Celery's and Dramatiq's prefork children, a multiprocessing
pool) is short-lived or many: a database connection of its own costs each job a connect, and a
store that is slow or frozen makes every job end wait. So before a fork the recorder opens a local
datagram socket pair; the child sends its records and its running jobs' heartbeats through it and
never opens the store, and the long-lived parent buffers them with its own and writes them in
its batches. A child killed mid-job loses at most the records it had not sent; its heartbeats
stop, so the reaper still catches it. Sending never blocks: a full socket (the parent is busy or
gone) makes the child write to the store itself, as without a hand-off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
from collections.abc import Callable, Sequence

from jobtrace.records import JobRecord

logger = logging.getLogger("jobtrace")

#: Records per datagram: well under the socket's buffer even with large arguments.
CHUNK = 32
_RECEIVE_SIZE = 4 * 1024 * 1024

Beat = tuple[str, int]  # a running attempt: (job id, attempt)
Deliver = Callable[[Sequence[JobRecord]], None]
Alive = Callable[[Sequence[Beat]], None]


def enabled() -> bool:
    """``JOBTRACE_HANDOFF=0`` makes forked processes write to the store themselves."""
    return os.environ.get("JOBTRACE_HANDOFF", "1") != "0"


class Handoff:
    """One socket pair: the parent reads, every process forked from it writes."""

    def __init__(self) -> None:
        self._parent, self._child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._child.setblocking(False)
        self._parent_pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def in_parent(self) -> bool:
        """Whether this process is the one that reads (not a forked child)."""
        return os.getpid() == self._parent_pid

    # -- the child's side ----------------------------------------------------------------------

    def send(self, batch: Sequence[JobRecord]) -> bool:
        """Hand ``batch`` to the parent; ``False`` when it could not be sent whole (write it)."""
        for start in range(0, len(batch), CHUNK):
            if not self._send(("records", list(batch[start : start + CHUNK]))):
                return False  # the caller writes the batch; the merge makes a duplicate harmless
        return True

    def beat(self, running: Sequence[Beat]) -> bool:
        """Tell the parent which attempts still run here, so it heartbeats them."""
        return self._send(("beat", list(running)))

    def _send(self, message: object) -> bool:
        try:
            self._child.send(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
        except (OSError, pickle.PicklingError):
            return False
        return True

    def forget_parent_end(self) -> None:
        """In a forked child: close its copy of the reading end, which only the parent uses."""
        with contextlib.suppress(OSError):
            self._parent.close()

    # -- the parent's side ---------------------------------------------------------------------

    def start_reading(self, deliver: Deliver, alive: Alive) -> None:
        """Start the thread that hands what children send to ``deliver`` and ``alive``."""
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._deliver, self._alive = deliver, alive
            self._thread = threading.Thread(
                target=self._read, name="jobtrace-lineage-handoff", daemon=True
            )
            self._thread.start()

    def drain(self) -> None:
        """Take in whatever children sent so far, without waiting (before a flush)."""
        if self._thread is None:
            return
        buffer = bytearray(_RECEIVE_SIZE)  # not the reader's: the two may run at once
        while True:
            try:
                size = self._parent.recv_into(buffer, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._handle(memoryview(buffer)[:size])

    def close(self) -> None:
        self._closed = True
        for end in (self._parent, self._child):
            with contextlib.suppress(OSError):
                end.close()

    def _read(self) -> None:
        # One buffer for the thread's life: ``recv(4 MiB)`` allocates 4 MiB per datagram.
        buffer = bytearray(_RECEIVE_SIZE)
        while not self._closed:
            try:
                size = self._parent.recv_into(buffer)
            except InterruptedError:
                continue
            except OSError:
                return  # closed
            self._handle(memoryview(buffer)[:size])

    def _handle(self, data: bytes | memoryview) -> None:
        try:
            kind, payload = pickle.loads(data)
            if kind == "records":
                self._deliver(payload)
            elif kind == "beat":
                self._alive(payload)
        except Exception:
            logger.warning(
                "jobtrace: a record handed over by a child process was lost", exc_info=True
            )
