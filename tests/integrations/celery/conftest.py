"""Fixtures of the Celery tests: real ``celery worker`` processes, their spans, the lineage store.

A worker takes a second to boot, so each test module shares one worker per broker on a queue of its
own, and tests tell their jobs apart by root job id. Redis database 1 is emptied after each module;
the RabbitMQ queues a module declared are deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from jobtrace.integrations.celery import CeleryInstrumentor, instrument_celery
from jobtrace.lineage.models import Attempt, Job
from tests.integrations.celery.tasks import RABBITMQ_URL, REDIS_URL, make_app
from tests.integrations.harness import (
    SPANS_ENV,
    Worker,
    export_test_spans,
    read_spans,
    store_rows,
    wait_for,
)
from tests.services import require

APP = "tests.integrations.celery.app"
Span = dict[str, Any]


def flush_redis() -> None:
    """Empty Redis database 1, the one the Celery tests own."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


def delete_rabbitmq_queue(queue: str) -> None:
    """Delete one queue from RabbitMQ (and nothing else)."""
    from kombu import Connection

    with Connection(RABBITMQ_URL) as connection:
        connection.channel().queue_delete(queue)


@dataclass
class Cluster:
    """A producer app on a fresh queue, the workers consuming it, and what they all recorded."""

    kind: str
    queue: str
    app: Celery
    spans_path: Path
    database_url: str
    directory: Path
    workers: list[Worker] = field(default_factory=list)

    def start_worker(
        self, *args: str, app: str = APP, pool: str = "prefork", concurrency: int = 2, **env: str
    ) -> Worker:
        """A ``celery worker`` of ``app`` on this cluster's queue, once it is ready to consume."""
        log_path = self.directory / f"worker-{len(self.workers)}.log"
        worker = Worker.python(
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "-Q",
            self.queue,
            "-n",
            f"{self.queue}-{len(self.workers)}@%h",
            "--loglevel=INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *args,
            env={
                "JOBTRACE_CELERY_BROKER": self.kind,
                "JOBTRACE_CELERY_QUEUE": self.queue,
                SPANS_ENV: str(self.spans_path),
                "JOBTRACE_DATABASE_URL": self.database_url,
                **env,
            },
            log_path=log_path,
        )
        self.workers.append(worker)
        wait_for(
            lambda: " ready." in worker.log() or worker.process.poll() is not None,
            timeout=20,
            what="the celery worker to be ready",
        )
        assert worker.process.poll() is None, worker.log()
        return worker

    def send(self, name: str, *args: Any, **options: Any) -> str:
        """Send a task by name from this (instrumented) process; returns its id."""
        return str(self.app.send_task(name, args=args, queue=self.queue, **options).id)

    def spans(self) -> list[Span]:
        """Every span so far, from this process and the workers."""
        return read_spans(self.spans_path)

    def tree_spans(self, root: str, kind: str | None = None) -> list[Span]:
        """The spans of one pipeline run (one root job), of one kind if given."""
        return [
            span
            for span in self.spans()
            if span["attributes"].get("jobtrace.job.root_id") == root
            and (kind is None or span["kind"] == kind)
        ]

    def wait_for_spans(
        self, predicate: Callable[[list[Span]], bool], what: str, timeout: float = 20
    ) -> list[Span]:
        """All spans once ``predicate`` holds; the workers' logs in the failure otherwise."""
        try:
            return wait_for(  # type: ignore[no-any-return]
                lambda: (spans := self.spans()) and predicate(spans) and spans,
                timeout=timeout,
                what=what,
            )
        except AssertionError as error:
            logs = "\n".join(worker.log()[-6000:] for worker in self.workers)
            raise AssertionError(f"{error}\n--- worker logs ---\n{logs}") from None

    def wait_for_tree(self, root: str, count: int) -> list[Span]:
        """The process spans of one run once ``count`` of them ended."""
        self.wait_for_spans(
            lambda _: len(self.tree_spans(root, "CONSUMER")) >= count,
            f"{count} process spans under root {root}",
        )
        return self.tree_spans(root, "CONSUMER")

    def wait_for_job_spans(self, job_id: str, count: int = 1) -> list[Span]:
        """The process spans of one job (one per attempt) once ``count`` of them ended."""

        def of_job(spans: list[Span]) -> list[Span]:
            return [
                s
                for s in spans
                if s["kind"] == "CONSUMER" and s["attributes"].get("jobtrace.job.id") == job_id
            ]

        spans = self.wait_for_spans(lambda s: len(of_job(s)) >= count, f"{count} spans of {job_id}")
        return sorted(of_job(spans), key=lambda s: s["attributes"]["jobtrace.job.attempt"])

    def jobs(self, root: str | None = None) -> list[Any]:
        """The lineage store's jobs, of one run if given."""
        rows = store_rows(self.database_url, Job)
        return [job for job in rows if root is None or job.root_job_id == root]

    def attempts(self, job_id: str) -> list[Any]:
        """The lineage store's attempts of one job, in order."""
        rows = [a for a in store_rows(self.database_url, Attempt) if a.job_id == job_id]
        return sorted(rows, key=lambda a: a.attempt)

    def wait_for_jobs(
        self, predicate: Callable[[list[Any]], bool], what: str, root: str | None = None
    ) -> list[Any]:
        """The store's jobs (of one run) once ``predicate`` holds."""
        return wait_for(  # type: ignore[no-any-return]
            lambda: (jobs := self.jobs(root)) and predicate(jobs) and jobs, timeout=20, what=what
        )

    def close(self) -> None:
        """Stop the workers, forget the queue."""
        for worker in self.workers:
            worker.stop()
        self.app.close()
        if self.kind == "rabbitmq":
            delete_rabbitmq_queue(self.queue)


def make_cluster(kind: str, directory: Path) -> Cluster:
    """A cluster on ``kind`` with a fresh queue and store, and no worker yet."""
    require(kind)
    if kind == "rabbitmq":
        require("redis")  # the result backend
    queue = f"jobtrace-celery-{uuid.uuid4().hex[:10]}"
    directory.mkdir(parents=True, exist_ok=True)
    return Cluster(
        kind=kind,
        queue=queue,
        app=make_app(kind, queue),
        spans_path=directory / "spans.jsonl",
        database_url=f"sqlite:///{directory / 'lineage.db'}",
        directory=directory,
    )


@pytest.fixture(scope="module")
def instrumented_producer() -> Iterator[CeleryInstrumentor]:
    """This process traced as a producer; its lineage comes from the workers' records."""
    instrumentor = instrument_celery(record=False)
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


def _cluster(
    kind: str, tmp_path_factory: pytest.TempPathFactory, *worker_args: str, **env: str
) -> Iterator[Cluster]:
    cluster = make_cluster(kind, tmp_path_factory.mktemp(f"celery-{kind}"))
    export_test_spans(cluster.spans_path)
    try:
        cluster.start_worker(*worker_args, **env)
        yield cluster
    finally:
        export_test_spans(None)
        cluster.close()
        flush_redis()


@pytest.fixture(scope="module")
def _redis_cluster(
    instrumented_producer: CeleryInstrumentor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    yield from _cluster("redis", tmp_path_factory)


@pytest.fixture(scope="module")
def _rabbitmq_cluster(
    instrumented_producer: CeleryInstrumentor, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    yield from _cluster("rabbitmq", tmp_path_factory)


@pytest.fixture
def redis_cluster(_redis_cluster: Cluster) -> Cluster:
    """A prefork worker (2 processes) on Redis database 1, shared by the module's tests."""
    export_test_spans(_redis_cluster.spans_path)
    return _redis_cluster


@pytest.fixture(params=["redis", "rabbitmq"])
def any_cluster(request: pytest.FixtureRequest) -> Cluster:
    """A prefork worker on Redis database 1, then one on RabbitMQ, shared by the module's tests."""
    cluster: Cluster = request.getfixturevalue(f"_{request.param}_cluster")
    export_test_spans(cluster.spans_path)
    return cluster
