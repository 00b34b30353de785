"""The LocalQueue worker process: ``python -m tests.integrations.conformance.local_worker SOCKET N``.

A LocalQueue runs in the process that enqueues, so this process is producer and worker at once: it
serves enqueue requests (``(name, args)`` in, the job id out) on a Unix socket, runs the jobs on
``N`` threads, and records them into ``JOBTRACE_DATABASE_URL``; spans go to ``JOBTRACE_TEST_SPANS``.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener
from typing import Any

from jobtrace.lineage.recorder import start_recorder
from jobtrace.local import LocalQueue
from tests.integrations.conformance import jobs
from tests.integrations.harness import setup_worker_telemetry

setup_worker_telemetry()
start_recorder()  # JOBTRACE_DATABASE_URL, JOBTRACE_HEARTBEAT_INTERVAL
QUEUE = LocalQueue(int(sys.argv[2]))
OPTIONS: dict[str, dict[str, Any]] = {jobs.FLAKY: {"max_attempts": 2}}


def enqueue(name: str, *args: Any) -> str:
    """Enqueue the job called ``name`` on this process's LocalQueue."""
    return QUEUE.enqueue(FUNCTIONS[name], *args, name=name, **OPTIONS.get(name, {}))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    jobs.ROOT: functools.partial(jobs.root, enqueue),
    jobs.PAGE: functools.partial(jobs.page, enqueue),
    jobs.LEAF: jobs.leaf,
    jobs.PROGRESS_PARENT: functools.partial(jobs.progress_parent, enqueue),
    jobs.PROGRESS_CHILD: jobs.progress_child,
    jobs.FLAKY: jobs.flaky,
}


def serve(connection: Connection) -> None:
    """Answer one client's enqueue requests until it hangs up."""
    with connection:
        while True:
            try:
                name, args = connection.recv()
            except EOFError:
                return
            connection.send(enqueue(name, *args))


def main() -> None:
    """Serve clients until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exit through atexit: records flushed
    with Listener(sys.argv[1], family="AF_UNIX") as listener:
        print("ready", flush=True)
        while True:
            threading.Thread(target=serve, args=(listener.accept(),), daemon=True).start()


if __name__ == "__main__":
    main()
