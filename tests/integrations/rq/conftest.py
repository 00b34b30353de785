"""Fixtures of the RQ tests: Redis database 2, a fresh queue, real ``rq worker`` subprocesses."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import create_engine, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from jobtrace.integrations.rq import RQInstrumentor, instrument_rq
from jobtrace.lineage.models import Attempt, Job
from jobtrace.testing import CapturedTelemetry, capture_telemetry
from tests.integrations.harness import SPANS_ENV, Worker, read_spans, span_to_dict, wait_for
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


@dataclass
class RQSetup:
    """A queue on Redis database 2, the producer's telemetry, and the workers started on it."""

    connection: Redis
    queue: Queue
    telemetry: CapturedTelemetry
    spans_path: Path
    database_url: str
    tmp_path: Path
    workers: list[Worker] = field(default_factory=list)

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

    def logs(self) -> str:
        """Every worker's output, for failure messages."""
        return "\n".join(worker.log() for worker in self.workers)

    def spans(self) -> list[dict[str, Any]]:
        """Every finished span: the workers' and this (producer) process's."""
        return read_spans(self.spans_path) + [span_to_dict(s) for s in self.telemetry.spans()]

    def process_spans(self, name: str | None = None) -> list[dict[str, Any]]:
        """The ``process`` spans, of one job function (by its short name) if given."""
        return _of_kind(self.spans(), "CONSUMER", name)

    def send_spans(self, name: str | None = None) -> list[dict[str, Any]]:
        """The ``send`` spans, of one job function (by its short name) if given."""
        return _of_kind(self.spans(), "PRODUCER", name)

    def jobs(self) -> dict[str, Job]:
        """The lineage store's jobs by id (none while the recorder has not created its tables)."""
        return {row.job_id: row for row in _rows(self.database_url, Job)}

    def attempts(self, job_id: str) -> list[Attempt]:
        """One job's attempts in the lineage store, in order."""
        rows = [row for row in _rows(self.database_url, Attempt) if row.job_id == job_id]
        return sorted(rows, key=lambda row: row.attempt)

    def wait_for_jobs(self, count: int, *, done: bool = True) -> dict[str, Job]:
        """Wait until the store holds ``count`` jobs (all in a done state if ``done``)."""

        def ready() -> dict[str, Job] | None:
            jobs = self.jobs()
            if len(jobs) < count:
                return None
            if done and any(
                job.state in ("queued", "running", "retrying") for job in jobs.values()
            ):
                return None
            return jobs

        try:
            return wait_for(ready, timeout=20, what=f"{count} jobs in the lineage store")  # type: ignore[no-any-return]
        except AssertionError as error:
            states = {job_id: job.state for job_id, job in self.jobs().items()}
            raise AssertionError(f"{error}: {states}\n{self.logs()}") from None


def _of_kind(spans: list[dict[str, Any]], kind: str, name: str | None) -> list[dict[str, Any]]:
    return [
        span
        for span in spans
        if span["kind"] == kind
        and (name is None or str(span["attributes"].get("jobtrace.job.name")).endswith(f".{name}"))
    ]


def _rows(database_url: str, model: type[Any]) -> list[Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(model.__table__)))
    except (OperationalError, ProgrammingError):  # no tables yet
        return []
    finally:
        engine.dispose()


@pytest.fixture
def database_url() -> str:
    """The lineage store the workers write to: the per-test SQLite file of the suite's conftest."""
    return os.environ["JOBTRACE_DATABASE_URL"]


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
