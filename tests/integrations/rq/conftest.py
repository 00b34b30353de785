"""Fixtures of the RQ tests: Redis database 2, a fresh queue, real ``rq worker`` subprocesses."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

from jobtrace.integrations.rq import RQInstrumentor, instrument_rq
from jobtrace.testing import capture_telemetry
from tests.integrations.harness import SPANS_ENV, Worker, WorkerSetup
from tests.services import require

REDIS_URL = "redis://127.0.0.1:6379/2"
WORKER_MODULE = "tests.integrations.rq.worker"


@pytest.fixture
def redis_conn() -> Iterator[Redis]:
    """Redis database 2, emptied after the test."""
    require("redis")
    connection = Redis.from_url(REDIS_URL)
    try:
        yield connection
    finally:
        connection.flushdb()
        connection.close()


@dataclass(kw_only=True)
class RQSetup(WorkerSetup):
    """A queue on Redis database 2, the producer's telemetry, and the workers started on it."""

    connection: Redis
    queue: Queue
    tmp_path: Path

    def is_job(self, recorded_name: object, name: str) -> bool:
        """RQ names jobs by the function's dotted path; tests use its short name."""
        return str(recorded_name).endswith(f".{name}")

    def start_worker(
        self, *, worker_class: str = "Worker", burst: bool = True, **env: str
    ) -> Worker:
        """An ``rq worker`` CLI process on this test's queue, its class from the worker app."""
        args = ["-m", "rq.cli", "worker", "--url", REDIS_URL]
        args += ["--worker-class", f"{WORKER_MODULE}.{worker_class}"]
        if burst:
            args.append("--burst")
        worker = Worker.python(
            *args,
            self.queue.name,
            env={
                SPANS_ENV: str(self.spans_path),
                "JOBTRACE_DATABASE_URL": self.database_url,
                **env,
            },
            log_path=self.tmp_path / f"worker-{len(self.workers)}.log",
        )
        self.workers.append(worker)
        return worker

    def run_burst(self, *, worker_class: str = "Worker", timeout: float = 40, **env: str) -> Worker:
        """Run a burst worker until the queue is empty and it exits."""
        worker = self.start_worker(worker_class=worker_class, **env)
        self.wait_until_exits(worker, timeout)
        return worker

    def wait_until_exits(self, worker: Worker, timeout: float = 40) -> None:
        """Wait for a burst worker to finish; fail with its log if it does not."""
        try:
            worker.process.wait(timeout)
        except Exception:
            raise AssertionError(f"the worker did not finish\n{worker.log()}") from None
        assert worker.process.returncode == 0, worker.log()


def _setup(
    redis_conn: Redis, tmp_path: Path, database_url: str, *, instrument: bool
) -> Iterator[RQSetup]:
    queue = Queue(f"jobtrace-test-{uuid.uuid4().hex[:12]}", connection=redis_conn)
    with capture_telemetry() as telemetry:
        if instrument:
            # The producer is traced; the lineage comes from the workers' records.
            instrument_rq(record=False)
        setup = RQSetup(
            connection=redis_conn,
            queue=queue,
            telemetry=telemetry,
            spans_path=tmp_path / "spans.jsonl",
            database_url=database_url,
            tmp_path=tmp_path,
        )
        try:
            yield setup
        finally:
            for worker in setup.workers:
                worker.stop()
            RQInstrumentor().uninstrument()


@pytest.fixture
def rq_setup(redis_conn: Redis, tmp_path: Path, database_url: str) -> Iterator[RQSetup]:
    """An instrumented producer and a fresh queue on Redis database 2."""
    yield from _setup(redis_conn, tmp_path, database_url, instrument=True)


@pytest.fixture
def plain_rq_setup(redis_conn: Redis, tmp_path: Path, database_url: str) -> Iterator[RQSetup]:
    """A producer without jobtrace and a fresh queue on Redis database 2."""
    yield from _setup(redis_conn, tmp_path, database_url, instrument=False)


@pytest.fixture
def python() -> str:
    """This interpreter, for subprocesses."""
    return sys.executable
