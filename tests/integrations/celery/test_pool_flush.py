"""When Celery's worker processes flush: as they exit, not after each task (unless asked to).

A prefork child is long-lived: it flushes in ``worker_process_shutdown``, which billiard sends in
the child as it leaves, after ``--max-tasks-per-child`` tasks too. The real-worker test exports
over OTLP to a fake collector with the batch processor's own schedule at a minute, so only those
exit flushes get the spans out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery, signals

import jobtrace
from jobtrace._internal import consumer, telemetry
from jobtrace.integrations.celery import CeleryInstrumentor, instrument_celery
from jobtrace.testing import CapturedTelemetry, capture_telemetry
from tests.integrations.delivery_harness import (
    REDIS_URL,
    CountingCollector,
    count_notes,
    forget,
    read_notes,
    worker_env,
)
from tests.integrations.harness import Worker, wait_for
from tests.services import require

APP = "tests.integrations.celery.delivery_app"


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The budget of every flush a job's end asks for, in a process that looks forked."""
    calls: list[float] = []
    monkeypatch.setattr(consumer, "flush", lambda timeout, providers=(): calls.append(timeout))
    monkeypatch.setattr(telemetry, "_in_forked_child", True)
    return calls


@pytest.fixture
def telemetry_captured() -> Iterator[CapturedTelemetry]:
    """In-memory spans for the test."""
    with capture_telemetry() as captured:
        yield captured


@pytest.fixture
def eager_app() -> Iterator[Celery]:
    """An app whose tasks run in place (no broker), with one task, ``add``."""
    app = Celery("pool-flush", broker="memory://", set_as_current=True)
    app.conf.task_always_eager = True

    @app.task(name="add")  # type: ignore[untyped-decorator]
    def add(a: int, b: int) -> int:
        return a + b

    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def instrumentor() -> Iterator[CeleryInstrumentor]:
    """The singleton instrumentor, uninstrumented after the test."""
    instrumentor = CeleryInstrumentor()
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


def _run_in_pool_child(app: Celery, **options: object) -> None:
    instrument_celery(app, record=False, **options)
    signals.worker_process_init.send(sender=None)  # as billiard's child does before its loop
    app.tasks["add"].delay(1, 2)


def test_prefork_child_does_not_flush_per_task(
    instrumentor: CeleryInstrumentor,
    telemetry_captured: CapturedTelemetry,
    eager_app: Celery,
    flushes: list[float],
) -> None:
    """In a pool child a task's end does not flush (the child flushes as it exits)."""
    _run_in_pool_child(eager_app)
    assert [s.name for s in telemetry_captured.spans()].count("process add") == 1
    assert flushes == []


def test_prefork_child_flushes_per_task_when_asked(
    instrumentor: CeleryInstrumentor,
    telemetry_captured: CapturedTelemetry,
    eager_app: Celery,
    flushes: list[float],
) -> None:
    """``flush_on_job_end=True`` brings the flush after each task back, within the budget."""
    _run_in_pool_child(eager_app, flush_on_job_end=True)
    assert flushes == [jobtrace.get_settings().flush_timeout]


def test_forked_process_outside_a_worker_still_flushes(
    instrumentor: CeleryInstrumentor,
    telemetry_captured: CapturedTelemetry,
    eager_app: Celery,
    flushes: list[float],
) -> None:
    """An eager task in a forked process that is no Celery worker flushes as before."""
    instrument_celery(eager_app, record=False)
    eager_app.tasks["add"].delay(1, 2)
    assert len(flushes) == 1


def test_recycled_prefork_children_deliver_every_span(tmp_path: Path) -> None:
    """12 tasks, ``--max-tasks-per-child=2``: every span arrives, in one export per child life."""
    require("redis")
    client = redis.Redis.from_url(REDIS_URL)
    collector = CountingCollector()
    queue = f"jobtrace-pool-flush-{uuid.uuid4().hex[:8]}"
    key = f"{queue}:notes"
    worker = Worker.python(
        *("-m", "celery", "-A", APP, "worker", "--pool=prefork", "--concurrency=2"),
        *("--max-tasks-per-child=2", "-Q", queue, "--loglevel=INFO"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        env=worker_env(
            collector.port,
            f"sqlite:///{tmp_path / 'lineage.db'}",
            JOBTRACE_DELIVERY_QUEUE=queue,
            OTEL_BSP_SCHEDULE_DELAY="60000",  # no export on the batch processor's schedule
        ),
        log_path=tmp_path / "worker.log",
    )
    try:
        wait_for(lambda: " ready." in worker.log(), timeout=30, what="the worker to be ready")
        app = Celery("producer", broker=REDIS_URL)
        for index in range(12):
            app.send_task("note", args=(key, index), queue=queue)
        app.close()
        wait_for(lambda: count_notes(client, key) >= 12, timeout=40, what="12 tasks done")
        assert len({note.pid for note in read_notes(client, key)}) >= 6  # children recycled
        worker.stop(timeout=30)
        assert worker.process.returncode == 0, worker.log()
        assert collector.process_spans("note") == 12, worker.log()
        # A flush after each task would be one request a task; one per child life is 6 (+2 at
        # the worker's shutdown, the last children's).
        assert collector.trace_requests <= 8, collector.trace_requests
    finally:
        worker.stop()
        collector.close()
        forget(client, queue)
        client.close()
