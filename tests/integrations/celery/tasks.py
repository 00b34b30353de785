"""The tasks of the Celery tests: scenario 1's pipeline and a task per outcome, on a given queue.

The worker module (``app.py``) and the tests build the same app with :func:`make_app`, so the
producer in the test process and the worker agree on names and queue.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery import Celery, chain, chord, group
from celery.exceptions import Ignore, Reject

import jobtrace

REDIS_URL = "redis://127.0.0.1:6379/1"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
BROKERS = {"redis": REDIS_URL, "rabbitmq": RABBITMQ_URL}


def make_app(broker: str, queue: str) -> Celery:
    """An app on ``broker`` (``redis``, ``rabbitmq`` or a URL) whose tasks all go to ``queue``."""
    app = Celery(
        f"jobtrace-test-{queue}",
        broker=BROKERS.get(broker, broker),
        backend=REDIS_URL,
        set_as_current=False,
    )
    app.conf.update(
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        result_expires=300,
        worker_hijack_root_logger=False,
    )

    @app.task(name="SyncJob")
    def sync_job(pages: int, showtimes: int) -> int:
        for page in range(pages):
            movie_page_job.delay(page, showtimes)
        jobtrace.count(processed=pages, total=pages)
        return pages

    @app.task(name="MoviePageJob")
    def movie_page_job(page: int, showtimes: int) -> None:
        movie_detail_job.delay(page)
        for number in range(showtimes):
            showtime_process_job.delay(page, number)

    @app.task(name="MovieDetailJob")
    def movie_detail_job(page: int) -> int:
        return page

    @app.task(name="ShowtimeProcessJob")
    def showtime_process_job(page: int, number: int) -> int:
        return page * 100 + number

    @app.task(name="FailingJob")
    def failing_job(message: str) -> None:
        raise ValueError(message)

    @app.task(name="FlakyJob", bind=True, max_retries=2)
    def flaky_job(self: Any, service: str) -> None:
        raise self.retry(exc=TimeoutError(f"{service} timed out"), countdown=0)

    @app.task(name="SlowJob")
    def slow_job(seconds: float, marker: str) -> None:
        Path(marker).write_text("started", encoding="utf-8")
        time.sleep(seconds)

    @app.task(name="QuickJob")
    def quick_job(number: int) -> int:
        return number

    @app.task(name="AddJob")
    def add_job(x: int, y: int) -> int:
        return x + y

    @app.task(name="SumJob")
    def sum_job(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(name="CanvasJob")
    def canvas_job() -> None:
        chain(add_job.s(1, 1), add_job.s(2), add_job.s(3)).apply_async()
        chord(group(quick_job.s(n) for n in range(2)), sum_job.s()).apply_async()

    @app.task(name="IgnoredJob")
    def ignored_job() -> None:
        raise Ignore()

    @app.task(name="RejectedJob")
    def rejected_job() -> None:
        raise Reject("bad_payload", requeue=False)

    return app
