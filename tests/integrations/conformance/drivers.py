"""One small driver per queue adapter: what the conformance suite needs of a queue, and no more.

A driver enqueues a suite job by name from this (instrumented) process, or from a producer without
jobtrace (:meth:`Driver.enqueue_plain`, a subprocess), starts and stops a real worker process with a
given concurrency, and kills it with SIGKILL. Every process writes its spans to one JSON-lines file
and its lineage to one store, both per driver; tests tell their jobs apart by job and root id.
Workers heartbeat every :data:`HEARTBEAT_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any, ClassVar

from jobtrace.lineage.queries import LineageStore
from jobtrace.lineage.store import upgrade
from tests.integrations.conformance import jobs, rq_jobs
from tests.integrations.harness import (
    ROOT,
    SPANS_ENV,
    Worker,
    export_test_spans,
    read_spans,
    wait_for,
)
from tests.services import require

HEARTBEAT_INTERVAL = 0.3
#: Redis databases of this suite's own, so a per-library test's flush never empties its queues.
REDIS_URLS = {
    adapter: f"redis://127.0.0.1:6379/{number}"
    for adapter, number in (("celery", 6), ("rq", 7), ("arq", 8), ("dramatiq", 9))
}
#: Jobs one worker runs at once (RQ: worker processes, one work horse each).
CONCURRENCY = 6
Span = dict[str, Any]


@dataclass(frozen=True)
class PlainMessage:
    """A job sent by a producer without jobtrace; ``metadata`` is written where jobtrace's goes."""

    name: str
    args: Sequence[Any] = ()
    job_id: str | None = None
    metadata: Any = None


@dataclass(eq=False)
class Driver:
    """The part every adapter shares: the files, the store, the worker processes, the spans."""

    adapter: ClassVar[str]
    #: ``messaging.system`` and the store's ``system`` column.
    system: ClassVar[str]
    #: Whether the jobs of one worker run in one process (not RQ: a work horse per job).
    one_process: ClassVar[bool] = True
    #: Whether a producer without jobtrace can send to this queue (not LocalQueue: in-process).
    plain_producer: ClassVar[bool] = True
    #: Whether the place jobtrace's metadata travels can hold something that is not a mapping.
    non_mapping_metadata: ClassVar[bool] = True

    directory: Path
    database_url: str
    concurrency: int = CONCURRENCY
    queue: str = field(default_factory=lambda: f"jobtrace-conformance-{uuid.uuid4().hex[:10]}")
    workers: list[Worker] = field(default_factory=list)  # every one started, for the logs
    current: list[Worker] = field(default_factory=list)  # the worker's processes now
    _store: LineageStore | None = None

    @property
    def spans_path(self) -> Path:
        """The JSON-lines file every process of this driver writes its spans to."""
        return self.directory / "spans.jsonl"

    @property
    def broker_url(self) -> str:
        """The broker's URL (a producer without jobtrace sends there too)."""
        return REDIS_URLS[self.adapter]

    # -- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        """Create the store, trace this process as a producer, start the worker."""
        upgrade(self.database_url)
        export_test_spans(self.spans_path)
        self._open()
        self.start_worker()

    def close(self) -> None:
        """Stop the workers, take the instrumentation out, forget the queue."""
        try:
            for worker in self.workers:
                worker.stop()
            self._close()
        finally:
            export_test_spans(None)
            if self._store is not None:
                self._store.close()

    def worker_env(self) -> dict[str, str]:
        """The environment of every worker process."""
        return {
            SPANS_ENV: str(self.spans_path),
            "JOBTRACE_DATABASE_URL": self.database_url,
            "JOBTRACE_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
        }

    def start_worker(self) -> None:
        """Start the worker (all its processes) and wait until it consumes."""
        self.current = self._start_worker()
        self.workers += self.current

    def ensure_worker(self) -> None:
        """Start a worker again if the last one was killed."""
        if not self.current or any(w.process.poll() is not None for w in self.current):
            self.start_worker()

    def kill_worker(self) -> None:
        """SIGKILL every process of the worker, children in process groups of their own included.

        As the OOM killer or a lost machine would: no handler runs. (RQ's work horses leave the
        worker's process group, so killing the group alone would leave them running.)
        """
        pids = [w.process.pid for w in self.current]
        for pid in [*pids, *_descendants(pids)]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        for worker in self.current:
            worker.process.wait(10)

    def worker_pids(self) -> set[int]:
        """The pids of the worker's main processes."""
        return {worker.process.pid for worker in self.current}

    # -- producing ----------------------------------------------------------------------------

    def job_name(self, name: str) -> str:
        """The name the queue records for the suite job ``name``."""
        return name

    def short_name(self, recorded: str) -> str:
        """The suite job name of a recorded name."""
        return recorded

    def enqueue(self, name: str, *args: Any) -> str:
        """Enqueue a suite job from this process, traced by jobtrace; return its id."""
        raise NotImplementedError

    def enqueue_plain(self, *messages: PlainMessage) -> list[str]:
        """Enqueue from a process that never imports jobtrace; return the job ids."""
        spec = {
            "adapter": self.adapter,
            "broker_url": self.broker_url,
            "queue": self.queue,
            "messages": [
                {
                    "name": self.job_name(m.name),
                    "args": list(m.args),
                    "job_id": m.job_id,
                    "metadata": m.metadata,
                }
                for m in messages
            ],
        }
        sent = subprocess.run(
            [sys.executable, "-m", "tests.integrations.conformance.plain_producer"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        ids = sent.stdout.split()
        assert len(ids) == len(messages), sent.stdout
        return ids

    # -- reading ------------------------------------------------------------------------------

    @property
    def store(self) -> LineageStore:
        """The lineage store, read-only."""
        if self._store is None:
            self._store = LineageStore(self.database_url)
        return self._store

    def spans(self) -> list[Span]:
        """Every finished span so far, of every process."""
        return read_spans(self.spans_path)

    def process_spans(self, job_id: str | None = None) -> list[Span]:
        """The ``process`` spans (one per attempt), of one job if given."""
        return [
            span
            for span in self.spans()
            if span["kind"] == "CONSUMER"
            and (job_id is None or span["attributes"].get("jobtrace.job.id") == job_id)
        ]

    def logs(self) -> str:
        """The end of every worker's output, for failure messages."""
        return "\n".join(f"--- {w.log_path.name}\n{w.log()[-4000:]}" for w in self.workers)

    # -- per adapter --------------------------------------------------------------------------

    def _open(self) -> None:
        """Instrument this process as a producer, connect to the broker."""

    def _start_worker(self) -> list[Worker]:
        raise NotImplementedError

    def _close(self) -> None:
        """Undo :meth:`_open` and empty what the broker holds."""


@dataclass(eq=False)
class LocalDriver(Driver):
    """LocalQueue in a worker process that also enqueues (a LocalQueue is in-process)."""

    adapter: ClassVar[str] = "local"
    system: ClassVar[str] = "jobtrace.local"
    plain_producer: ClassVar[bool] = False
    _client: Connection | None = None

    def __post_init__(self) -> None:
        self.queue = "default"

    def _start_worker(self) -> list[Worker]:
        socket = Path(tempfile.mkdtemp(prefix="jt-")) / "queue"  # AF_UNIX: 108 bytes at most
        worker = Worker.python(
            "-m",
            "tests.integrations.conformance.local_worker",
            str(socket),
            str(self.concurrency),
            env=self.worker_env(),
            log_path=self.directory / f"local-{len(self.workers)}.log",
        )
        wait_for(
            lambda: "ready" in worker.log() or worker.process.poll() is not None,
            what="the LocalQueue worker to listen",
        )
        assert worker.process.poll() is None, worker.log()
        if self._client is not None:
            self._client.close()
        self._client = Client(str(socket), family="AF_UNIX")
        return [worker]

    def enqueue(self, name: str, *args: Any) -> str:
        assert self._client is not None
        self._client.send((name, list(args)))
        return str(self._client.recv())

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()


@dataclass(eq=False)
class CeleryDriver(Driver):
    """A ``celery worker -P threads`` on Redis, from the Celery tests' cluster."""

    adapter: ClassVar[str] = "celery"
    system: ClassVar[str] = "celery"
    non_mapping_metadata: ClassVar[bool] = False  # the metadata is message headers
    APP: ClassVar[str] = "tests.integrations.conformance.celery_app"
    _cluster: Any = None
    _instrumentor: Any = None

    def _open(self) -> None:
        from jobtrace.integrations.celery import instrument_celery
        from tests.integrations.celery.conftest import Cluster
        from tests.integrations.celery.tasks import make_app

        require("redis")
        self._cluster = Cluster(
            kind=self.broker_url,  # the Celery tests' app takes a URL for a broker too
            queue=self.queue,
            app=make_app(self.broker_url, self.queue),
            spans_path=self.spans_path,
            database_url=self.database_url,
            directory=self.directory,
        )
        self._instrumentor = instrument_celery(record=False)

    def _start_worker(self) -> list[Worker]:
        worker = self._cluster.start_worker(
            app=self.APP,
            pool="threads",
            concurrency=self.concurrency,
            JOBTRACE_HEARTBEAT_INTERVAL=str(HEARTBEAT_INTERVAL),
        )
        return [worker]

    def enqueue(self, name: str, *args: Any) -> str:
        return str(self._cluster.send(name, *args))

    def _close(self) -> None:
        if self._instrumentor is not None:
            self._instrumentor.uninstrument()
        if self._cluster is not None:
            self._cluster.app.close()
        _flush_redis(self.broker_url)


@dataclass(eq=False)
class RQDriver(Driver):
    """``concurrency`` forking ``rq worker`` processes (RQ runs one job per work horse)."""

    adapter: ClassVar[str] = "rq"
    system: ClassVar[str] = "rq"
    one_process: ClassVar[bool] = False
    concurrency: int = CONCURRENCY - 1  # processes: enough for 4 held jobs and one more
    WORKER_CLASS: ClassVar[str] = "tests.integrations.rq.worker.Worker"
    _connection: Any = None
    _queue: Any = None

    def job_name(self, name: str) -> str:
        return rq_jobs.path(name)

    def short_name(self, recorded: str) -> str:
        return recorded.rsplit(".", 1)[-1]

    def _open(self) -> None:
        from redis import Redis
        from rq import Queue

        from jobtrace.integrations.rq import instrument_rq

        require("redis")
        self._connection = Redis.from_url(self.broker_url)
        self._queue = Queue(self.queue, connection=self._connection)
        instrument_rq(record=False)

    def _start_worker(self) -> list[Worker]:
        from rq import Worker as RQWorker

        started = [
            Worker.python(
                "-m",
                "rq.cli",
                "worker",
                "--url",
                self.broker_url,
                "--worker-class",
                self.WORKER_CLASS,
                self.queue,
                env=self.worker_env(),
                log_path=self.directory / f"rq-{len(self.workers) + index}.log",
            )
            for index in range(self.concurrency)
        ]
        wait_for(
            lambda: (
                RQWorker.count(connection=self._connection, queue=self._queue) >= len(started)
                or any(w.process.poll() is not None for w in started)
            ),
            what="the rq workers to register",
        )
        assert all(w.process.poll() is None for w in started), "\n".join(w.log() for w in started)
        return started

    def enqueue(self, name: str, *args: Any) -> str:
        from rq import Retry

        options = {"retry": Retry(max=1)} if name == jobs.FLAKY else {}
        return str(self._queue.enqueue(self.job_name(name), *args, **options).id)

    def _close(self) -> None:
        from jobtrace.integrations.rq import RQInstrumentor

        RQInstrumentor().uninstrument()
        if self._connection is not None:
            self._connection.close()
        _flush_redis(self.broker_url)


@dataclass(eq=False)
class ArqDriver(Driver):
    """An ``arq`` worker: its jobs run at once on one event loop (``max_jobs``)."""

    adapter: ClassVar[str] = "arq"
    system: ClassVar[str] = "arq"
    SETTINGS: ClassVar[str] = "tests.integrations.conformance.arq_app.WorkerSettings"
    _loop: asyncio.AbstractEventLoop | None = None
    _pool: Any = None
    _connection: Any = None

    def _open(self) -> None:
        from arq.connections import RedisSettings, create_pool
        from redis import Redis

        from jobtrace.integrations.arq import instrument_arq

        require("redis")
        self._connection = Redis.from_url(self.broker_url)
        instrument_arq(record=False)
        self._loop = asyncio.new_event_loop()
        self._pool = self._loop.run_until_complete(
            create_pool(RedisSettings.from_dsn(self.broker_url), default_queue_name=self.queue)
        )

    def _start_worker(self) -> list[Worker]:
        from tests.integrations.arq.keys import READY_KEY

        self._connection.delete(READY_KEY + self.queue)
        worker = Worker.python(
            "-m",
            "arq",
            self.SETTINGS,
            env={
                **self.worker_env(),
                "JOBTRACE_ARQ_QUEUE": self.queue,
                "JOBTRACE_ARQ_REDIS_URL": self.broker_url,
                "JOBTRACE_ARQ_MAX_JOBS": str(self.concurrency),
            },
            log_path=self.directory / f"arq-{len(self.workers)}.log",
        )
        wait_for(
            lambda: (
                self._connection.exists(READY_KEY + self.queue) or worker.process.poll() is not None
            ),
            what="the arq worker to start",
        )
        assert worker.process.poll() is None, worker.log()
        return [worker]

    def enqueue(self, name: str, *args: Any) -> str:
        assert self._loop is not None
        job = self._loop.run_until_complete(self._pool.enqueue_job(name, *args))
        assert job is not None
        return str(job.job_id)

    def _close(self) -> None:
        from jobtrace.integrations.arq import ArqInstrumentor

        if self._loop is not None:
            self._loop.run_until_complete(self._pool.aclose())
            self._loop.close()
        ArqInstrumentor().uninstrument()
        if self._connection is not None:
            self._connection.close()
        _flush_redis(self.broker_url)


@dataclass(eq=False)
class DramatiqDriver(Driver):
    """A ``dramatiq`` worker, one process with ``concurrency`` threads, from the Dramatiq tests."""

    adapter: ClassVar[str] = "dramatiq"
    system: ClassVar[str] = "dramatiq"
    APP: ClassVar[str] = "tests.integrations.conformance.dramatiq_app"
    _setup: Any = None
    _actors: dict[str, Any] = field(default_factory=dict)

    def _open(self) -> None:
        from dramatiq.brokers.redis import RedisBroker

        from jobtrace.integrations.dramatiq import instrument_dramatiq
        from tests.integrations.conformance.dramatiq_app import declare
        from tests.integrations.dramatiq.actors import declare_actors
        from tests.integrations.dramatiq.conftest import Setup

        require("redis")
        instrument_dramatiq(record=False)  # before the broker: brokers made later are traced
        broker = RedisBroker(url=self.broker_url)
        self._setup = Setup(
            kind="redis",
            queue=self.queue,
            broker=broker,
            actors=declare_actors(broker, self.queue),
            spans_path=self.spans_path,
            database_url=self.database_url,
            tmp_path=self.directory,
        )
        self._actors = declare(broker, self.queue)

    def _start_worker(self) -> list[Worker]:
        worker = self._setup.start_worker(
            app=self.APP,
            threads=self.concurrency,
            JOBTRACE_HEARTBEAT_INTERVAL=str(HEARTBEAT_INTERVAL),
            JOBTRACE_DRAMATIQ_REDIS_URL=self.broker_url,
        )
        return [worker]

    def enqueue(self, name: str, *args: Any) -> str:
        return str(self._actors[name].send(*args).message_id)

    def _close(self) -> None:
        from jobtrace.integrations.dramatiq import DramatiqInstrumentor

        DramatiqInstrumentor().uninstrument()
        if self._setup is not None:
            self._setup.broker.close()
        _flush_redis(self.broker_url)


def _descendants(pids: Sequence[int]) -> list[int]:
    """Every process under ``pids``, from ``/proc`` (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the fields after "(name)": state, ppid
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = list(pids)
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _flush_redis(url: str) -> None:
    """Empty one of the suite's Redis databases."""
    from redis import Redis

    with contextlib.closing(Redis.from_url(url)) as client:
        client.flushdb()


DRIVERS: dict[str, type[Driver]] = {
    driver.adapter: driver
    for driver in (LocalDriver, CeleryDriver, RQDriver, ArqDriver, DramatiqDriver)
}
