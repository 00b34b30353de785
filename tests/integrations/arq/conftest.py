"""Fixtures of the arq tests: Redis database 3, a fresh queue, real ``arq`` worker subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis import Redis

from jobtrace.integrations.arq import ArqInstrumentor, instrument_arq
from jobtrace.testing import capture_telemetry
from tests.integrations.arq.keys import READY_KEY, REDIS_URL, RUNNING_KEY
from tests.integrations.harness import SPANS_ENV, Worker, WorkerSetup, wait_for
from tests.services import require

WORKER_SETTINGS = "tests.integrations.arq.worker_app.WorkerSettings"


@pytest.fixture
def redis_conn() -> Iterator[Redis]:
    """Redis database 3, emptied before and after the test."""
    require("redis")
    connection = Redis.from_url(REDIS_URL)
    connection.flushdb()
    try:
        yield connection
    finally:
        connection.flushdb()
        connection.close()


@dataclass(kw_only=True)
class ArqSetup(WorkerSetup):
    """A fresh queue on Redis database 3, the producer's telemetry, and the workers started on it."""

    connection: Redis
    pool: ArqRedis
    queue: str
    tmp_path: Path

    # -- workers --------------------------------------------------------------------------------

    def start_worker(self, **env: str) -> Worker:
        """An ``arq`` CLI worker on this test's queue, once it polls the queue."""
        self.connection.delete(READY_KEY + self.queue)
        worker = Worker.python(
            "-m",
            "arq",
            WORKER_SETTINGS,
            env={
                "JOBTRACE_ARQ_QUEUE": self.queue,
                SPANS_ENV: str(self.spans_path),
                "JOBTRACE_DATABASE_URL": self.database_url,
                **env,
            },
            log_path=self.tmp_path / f"worker-{len(self.workers)}.log",
        )
        self.workers.append(worker)
        wait_for(
            lambda: (
                self.connection.exists(READY_KEY + self.queue) or worker.process.poll() is not None
            ),
            timeout=20,
            what="the arq worker to start",
        )
        assert worker.process.poll() is None, worker.log()
        return worker

    def kill(self, worker: Worker) -> None:
        """SIGKILL the worker: no handler, no flush, like the OOM killer."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(10)

    def wait_running(self, job_id: str) -> None:
        """Wait until ``hanging_job`` says it runs."""
        wait_for(
            lambda: self.connection.exists(RUNNING_KEY + job_id),
            timeout=15,
            what=f"job {job_id} to start",
        )

    def wait_for_process_spans(self, count: int, name: str | None = None) -> list[dict[str, Any]]:
        """Wait until ``count`` process spans (of ``name``) have ended."""
        try:
            return wait_for(  # type: ignore[no-any-return]
                lambda: len(spans := self.process_spans(name)) >= count and spans,
                timeout=20,
                what=f"{count} process spans of {name or 'any job'}",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.logs()}") from None

    # -- lineage --------------------------------------------------------------------------------

    def wait_for_state(self, job_id: str, state: str) -> Any:
        """Wait until the store says ``job_id`` is in ``state``."""
        try:
            return wait_for(
                lambda: (job := self.jobs().get(job_id)) is not None and job.state == state and job,
                timeout=20,
                what=f"job {job_id} to be {state}",
            )
        except AssertionError as error:
            job = self.jobs().get(job_id)
            raise AssertionError(f"{error}: {job and job.state}\n{self.logs()}") from None


async def _setup(
    redis_conn: Redis, tmp_path: Path, database_url: str, *, instrument: bool
) -> AsyncIterator[ArqSetup]:
    queue = f"jobtrace-test-{uuid.uuid4().hex[:12]}"
    with capture_telemetry() as telemetry:
        if instrument:
            # The producer records too: the enqueued (and deferred) jobs are in the store at once.
            instrument_arq(database_url=database_url)
        pool = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=queue)
        setup = ArqSetup(
            connection=redis_conn,
            pool=pool,
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
            await pool.aclose()
            ArqInstrumentor().uninstrument()


@pytest.fixture
async def arq_setup(
    redis_conn: Redis, tmp_path: Path, database_url: str
) -> AsyncIterator[ArqSetup]:
    """An instrumented producer and a fresh queue on Redis database 3."""
    async for setup in _setup(redis_conn, tmp_path, database_url, instrument=True):
        yield setup
