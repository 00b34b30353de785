"""A broken exporter or store under real RQ and Celery prefork workers: jobs do not wait on it.

Each test starts one worker (RQ's forking worker; Celery prefork with one child, so jobs run one
at a time), runs a warm-up job, breaks the OTLP endpoint (refused, black-holed) or freezes the
PostgreSQL lineage store (paused) through a :class:`tests.faults.TcpProxy`, and runs ten jobs.
The jobs note when they started and ended: the gap from one job's end to the next one's start is
what its end cost. The budget (``flush_timeout``) is 1 s; without it these faults cost each job
10 s or more, so the bounds are generous. Then the worker is stopped (its exit timed, the fault
still on for the exporter) and the lineage is checked once the store answers.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery
from rq import Queue
from sqlalchemy.engine import make_url

from jobtrace.lineage.models import Job
from tests.faults import TcpProxy, tcp_proxy
from tests.integrations.delivery_harness import (
    REDIS_URL,
    CountingCollector,
    Note,
    count_notes,
    forget,
    gaps,
    read_notes,
    worker_env,
)
from tests.integrations.harness import Worker, store_rows, wait_for
from tests.services import fresh_postgres_database, require

pytestmark = pytest.mark.timeout(90)

JOBS = 10


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    """The Redis database of the delivery tests (each run deletes its own keys)."""
    require("redis")
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def collector() -> Iterator[CountingCollector]:
    """A fake OTLP/HTTP collector on loopback."""
    found = CountingCollector()
    try:
        yield found
    finally:
        found.close()


@pytest.fixture
def otlp(collector: CountingCollector) -> Iterator[TcpProxy]:
    """The fault proxy the workers' OTLP exporters talk to."""
    with tcp_proxy(collector.port) as proxy:
        yield proxy


@dataclass
class Store:
    """The lineage store: the URL the worker writes through, the one the test reads directly."""

    worker_url: str
    direct_url: str
    proxy: TcpProxy | None = None


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    """A SQLite store (no fault on it)."""
    url = f"sqlite:///{tmp_path / 'lineage.db'}"
    return Store(url, url)


@pytest.fixture
def postgres_store() -> Iterator[Store]:
    """A fresh PostgreSQL database that the worker reaches through a fault proxy."""
    with fresh_postgres_database() as url, tcp_proxy(make_url(url).port or 5432) as proxy:
        worker_url = make_url(url).set(host="127.0.0.1", port=proxy.port)
        yield Store(worker_url.render_as_string(hide_password=False), url, proxy)


@dataclass
class Driver:
    """One queue system: how to start its worker and send it a ``note`` job."""

    start: Callable[[dict[str, str], Path], Worker]
    send: Callable[[str, int], None]


def _rq(client: redis.Redis, queue_name: str) -> Driver:
    queue = Queue(queue_name, connection=client)

    def start(env: dict[str, str], log: Path) -> Worker:
        return Worker.python(
            *("-m", "rq.cli", "worker", "--url", REDIS_URL),
            *("--worker-class", "tests.integrations.rq.delivery_app.Worker", queue_name),
            env=env,
            log_path=log,
        )

    def send(key: str, index: int) -> None:
        queue.enqueue("tests.integrations.rq.delivery_app.note", key, index)

    return Driver(start, send)


def _celery(client: redis.Redis, queue_name: str) -> Driver:
    app = Celery("delivery-producer", broker=REDIS_URL, set_as_current=False)

    def start(env: dict[str, str], log: Path) -> Worker:
        worker = Worker.python(
            *("-m", "celery", "-A", "tests.integrations.celery.delivery_app", "worker"),
            *("--pool=prefork", "--concurrency=1", "-Q", queue_name, "--loglevel=INFO"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            env={**env, "JOBTRACE_DELIVERY_QUEUE": queue_name},
            log_path=log,
        )
        wait_for(
            lambda: " ready." in worker.log() or worker.process.poll() is not None,
            timeout=30,
            what="the celery worker to be ready",
        )
        return worker

    def send(key: str, index: int) -> None:
        app.send_task("note", args=(key, index), queue=queue_name)

    return Driver(start, send)


DRIVERS = {"rq": _rq, "celery": _celery}


@dataclass
class Outcome:
    """What one run under a fault showed."""

    notes: list[Note]
    exit_seconds: float
    log: str
    store: Store


def _run(
    system: str,
    fault: Callable[[], None],
    heal: Callable[[], None] | None,
    client: redis.Redis,
    otlp: TcpProxy,
    store: Store,
    tmp_path: Path,
) -> Outcome:
    """A warm-up job, the fault, ``JOBS`` jobs, ``heal`` (if given), the worker stopped."""
    queue_name = f"jobtrace-delivery-{uuid.uuid4().hex[:8]}"
    driver = DRIVERS[system](client, queue_name)
    key = f"{queue_name}:notes"

    def _notes() -> list[Note]:
        return [note for note in read_notes(client, key) if note.index > 0]

    worker = driver.start(worker_env(otlp.port, store.worker_url), tmp_path / "worker.log")
    try:
        driver.send(key, 0)
        wait_for(lambda: count_notes(client, key) >= 1, timeout=30, what="the warm-up job")
        wait_for(lambda: store_rows(store.direct_url, Job), timeout=30, what="the store's tables")
        fault()
        for index in range(1, JOBS + 1):
            driver.send(key, index)
        try:
            # Done, or one gap already past every bound (the assertions then say which).
            wait_for(
                lambda: (
                    count_notes(client, key) >= JOBS + 1 or max(gaps(_notes()), default=0) > 3.0
                ),
                timeout=30,
                what=f"{JOBS} jobs",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{worker.log()}") from None
        if heal is not None:
            heal()
        started = time.monotonic()
        worker.stop(timeout=30)
        exit_seconds = time.monotonic() - started
        notes = _notes()
    finally:
        worker.stop()
        forget(client, queue_name)
    print(f"{system}: gaps {[round(gap, 3) for gap in gaps(notes)]}, exit {exit_seconds:.2f} s")
    return Outcome(notes, exit_seconds, worker.log(), store)


def _dropped(log: str) -> int:
    """The lineage records the worker said it dropped."""
    counts = [int(n) for n in re.findall(r"(\d+) (?:lineage )?records (?:were )?dropped", log)]
    return max(counts, default=0)


def _assert_jobs_did_not_wait(outcome: Outcome) -> None:
    between = gaps(outcome.notes)
    detail = f"gaps {[round(g, 2) for g in between]}\n{outcome.log[-4000:]}"
    slow = [gap for gap in between if gap > 0.7]
    assert len(slow) <= 2, detail  # the job that found out (and at most one retry)
    assert max(between) < 3.0, detail  # the budget is 1 s
    assert sum(between) < 6.0, detail
    assert len(outcome.notes) == JOBS, detail


def _assert_lineage_complete(outcome: Outcome) -> None:
    def succeeded() -> int:
        return sum(
            1 for job in store_rows(outcome.store.direct_url, Job) if job.state == "succeeded"
        )

    dropped = _dropped(outcome.log)
    try:
        wait_for(lambda: succeeded() >= JOBS + 1 - dropped, timeout=20, what="the lineage")
    except AssertionError:
        raise AssertionError(f"{succeeded()} succeeded, {dropped} dropped\n{outcome.log}") from None


@pytest.mark.parametrize("system", ["rq", "celery"])
@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_a_broken_exporter_costs_one_job_at_most_the_budget(
    system: str,
    fault: str,
    client: redis.Redis,
    otlp: TcpProxy,
    sqlite_store: Store,
    tmp_path: Path,
) -> None:
    """OTLP refused or black-holed: at most a job or two waits the budget, the exit is bounded."""
    outcome = _run(system, getattr(otlp, fault), None, client, otlp, sqlite_store, tmp_path)
    _assert_jobs_did_not_wait(outcome)
    assert outcome.exit_seconds < 10.0, outcome.log
    _assert_lineage_complete(outcome)


@pytest.mark.parametrize("system", ["rq", "celery"])
def test_a_paused_store_costs_the_jobs_nothing_and_loses_no_record(
    system: str,
    client: redis.Redis,
    otlp: TcpProxy,
    collector: CountingCollector,
    postgres_store: Store,
    tmp_path: Path,
) -> None:
    """PostgreSQL frozen: jobs go on; once it answers the lineage is complete, the exit bounded."""
    proxy = postgres_store.proxy
    assert proxy is not None
    outcome = _run(system, proxy.pause, proxy.heal, client, otlp, postgres_store, tmp_path)
    _assert_jobs_did_not_wait(outcome)
    assert outcome.exit_seconds < 10.0, outcome.log
    _assert_lineage_complete(outcome)
    assert (
        collector.process_spans("note")
        + collector.process_spans("tests.integrations.rq.delivery_app.note")
        == JOBS + 1
    ), outcome.log
