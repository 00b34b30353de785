"""Job functions the RQ tests enqueue; the worker subprocesses import them by name."""

from __future__ import annotations

import os
import signal
import time

from rq import Queue, Retry, get_current_job
from rq.job import Job

import jobtrace


def _this_job() -> Job:
    job = get_current_job()
    assert job is not None, "called outside an RQ job"
    return job


def _same_queue(job: Job) -> Queue:
    return Queue(job.origin, connection=job.connection)


def sync_cinema(pages: int, details: int) -> int:
    """Level 0 of scenario 1: one child per movie page."""
    job = _this_job()
    queue = _same_queue(job)
    for page in range(pages):
        queue.enqueue(movie_page, page, details)
    jobtrace.count(processed=pages, total=pages)
    return pages


def movie_page(page: int, details: int) -> int:
    """Level 1: one child per movie on the page."""
    queue = _same_queue(_this_job())
    for movie in range(details):
        queue.enqueue(movie_detail, page * 100 + movie)
    return details


def movie_detail(movie: int) -> int:
    """Level 2: a leaf."""
    return movie


def fail(message: str) -> None:
    """Always raises."""
    raise ValueError(message)


def flaky(failures: int) -> int:
    """Raises on its first ``failures`` runs, counted in Redis, then returns the run number."""
    job = _this_job()
    runs = int(job.connection.incr(f"jobtrace-test:runs:{job.id}"))
    if runs <= failures:
        raise ConnectionError(f"run {runs} of {failures + 1} fails")
    return runs


def hang(seconds: float) -> None:
    """Writes this horse's pid to Redis, then sleeps: the test kills or stops it meanwhile."""
    job = _this_job()
    job.connection.set(f"jobtrace-test:pid:{job.id}", os.getpid())
    time.sleep(seconds)


def crash_once() -> int:
    """Kills its own process on the first run (as a segfault would); later runs return."""
    job = _this_job()
    runs = int(job.connection.incr(f"jobtrace-test:runs:{job.id}"))
    if runs == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return runs


def quick(value: int) -> int:
    """Returns at once."""
    return value


def ask_retry(max_retries: int) -> Retry:
    """Asks RQ (3.x) to run it again, every time."""
    return Retry(max=max_retries)
