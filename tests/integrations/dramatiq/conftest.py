"""Fixtures of the Dramatiq tests: a per-test queue, a real worker, the producer's spans beside its."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dramatiq.broker import Broker

from jobtrace.integrations.dramatiq import DramatiqInstrumentor, instrument_dramatiq
from tests.integrations.dramatiq.actors import (
    RABBITMQ_URL,
    REDIS_URL,
    Actors,
    declare_actors,
    make_broker,
)
from tests.integrations.harness import SPANS_ENV, Worker, export_test_spans, read_spans, wait_for
from tests.services import require

APP = "tests.integrations.dramatiq.app"


@pytest.fixture
def spans_path(tmp_path: Path) -> Iterator[Path]:
    """One JSON-lines file that receives this process's spans and the workers' spans."""
    path = tmp_path / "spans.jsonl"
    export_test_spans(path)
    try:
        yield path
    finally:
        export_test_spans(None)


@pytest.fixture
def redis_db() -> Iterator[None]:
    """Redis database 4, emptied after the test."""
    require("redis")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        yield
    finally:
        client.flushdb()
        client.close()


def delete_rabbitmq_queues(queue: str) -> None:
    """Delete a Dramatiq queue and its delay and dead-letter queues from RabbitMQ."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        channel = connection.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel.queue_delete(name)
    finally:
        connection.close()


@dataclass
class Setup:
    """A broker, its actors on a fresh queue, and the worker processes started on it."""

    kind: str
    queue: str
    broker: Broker
    actors: Actors
    spans_path: Path
    database_url: str
    tmp_path: Path
    workers: list[Worker] = field(default_factory=list)

    def start_worker(self, *, app: str = APP, threads: int = 2, **env: str) -> Worker:
        """A ``dramatiq`` CLI worker (one process) of ``app`` on this test's queue, ready to consume."""
        log_path = self.tmp_path / f"worker-{len(self.workers)}.log"
        worker = Worker.python(
            "-m",
            "dramatiq",
            app,
            "--processes",
            "1",
            "--threads",
            str(threads),
            "--queues",
            self.queue,
            env={
                "JOBTRACE_DRAMATIQ_BROKER": self.kind,
                "JOBTRACE_DRAMATIQ_QUEUE": self.queue,
                SPANS_ENV: str(self.spans_path),
                "JOBTRACE_DATABASE_URL": self.database_url,
                **env,
            },
            log_path=log_path,
        )
        self.workers.append(worker)
        wait_for(
            lambda: "ready for action" in worker.log() or worker.process.poll() is not None,
            timeout=30,
            what="the dramatiq worker to boot",
        )
        assert worker.process.poll() is None, worker.log()
        return worker

    def stop_worker(self, worker: Worker) -> None:
        """Warm shutdown: SIGTERM to the main process only, which passes it on once.

        A SIGTERM to the whole process group reaches the worker process twice (directly and from
        the main process), and Dramatiq kills a worker process on the second one.
        """
        if worker.process.poll() is None:
            worker.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(15)
        worker.stop()

    def spans(self) -> list[dict[str, Any]]:
        """Every span so far, from this process and the workers."""
        return read_spans(self.spans_path)

    def process_spans(self, name: str | None = None) -> list[dict[str, Any]]:
        """Finished ``process`` spans, of one job name if given."""
        return [
            span
            for span in self.spans()
            if span["kind"] == "CONSUMER"
            and (name is None or span["attributes"].get("jobtrace.job.name") == name)
        ]

    def wait_for_process_spans(self, count: int, name: str | None = None) -> list[dict[str, Any]]:
        """Wait until ``count`` process spans have ended; show the worker logs if they do not."""
        try:
            return wait_for(
                lambda: (spans := self.process_spans(name)) and len(spans) >= count and spans,
                timeout=30,
                what=f"{count} process spans of {name or 'any job'}",
            )
        except AssertionError as error:
            logs = "\n".join(worker.log() for worker in self.workers)
            raise AssertionError(f"{error}\n--- worker logs ---\n{logs}") from None


def _make_setup(
    kind: str, tmp_path: Path, spans_path: Path, database_url: str, *, instrument: bool
) -> Iterator[Setup]:
    require(kind)
    queue = f"jobtrace-test-{uuid.uuid4().hex[:12]}"
    if instrument:
        # The producer's side: traced, but its lineage comes from the worker's records.
        instrument_dramatiq(record=False)
    broker = make_broker(kind)
    setup = Setup(
        kind=kind,
        queue=queue,
        broker=broker,
        actors=declare_actors(broker, queue),
        spans_path=spans_path,
        database_url=database_url,
        tmp_path=tmp_path,
    )
    try:
        yield setup
    finally:
        for worker in setup.workers:
            worker.stop()  # quick: the group's SIGTERM makes Dramatiq kill its worker process
        DramatiqInstrumentor().uninstrument()
        broker.close()
        if kind == "rabbitmq":
            delete_rabbitmq_queues(queue)


@pytest.fixture
def redis_setup(
    redis_db: None, tmp_path: Path, spans_path: Path, database_url: str
) -> Iterator[Setup]:
    """An instrumented producer on Redis database 4, with a fresh queue."""
    yield from _make_setup("redis", tmp_path, spans_path, database_url, instrument=True)


@pytest.fixture
def rabbitmq_setup(tmp_path: Path, spans_path: Path, database_url: str) -> Iterator[Setup]:
    """An instrumented producer on RabbitMQ (on Redis, the conformance suite runs the pipeline)."""
    yield from _make_setup("rabbitmq", tmp_path, spans_path, database_url, instrument=True)
