"""The RQ jobs and worker class of ``bench/pipeline_e2e.py``.

``rq worker --worker-class e2e_rq.Worker <queue>`` imports this module, which sets the worker up
for ``BENCH_E2E_MODE`` as jobtrace's RQ guide says (``docs/integrations/rq.md``):

* ``bare``: no instrumentation;
* ``spans``, ``lineage``: in-process providers, ``jobtrace.configure()`` and ``instrument_rq()``
  (``JOBTRACE_RECORD`` tells them apart);
* ``healthy``, ``down`` (``--exporter-down``): ``jobtrace.configure()`` alone sets up OTLP from
  ``OTEL_EXPORTER_OTLP_ENDPOINT``, as a new user's worker does; lineage on.

``Worker`` is RQ's own forking worker: a work horse per job, forked from this process.
"""

from __future__ import annotations

import cProfile
import os
from typing import Any

import rq
from e2e_common import (
    JOB_KWARGS,
    MODE_ENV,
    PROFILE_ENV,
    QUEUE_ENV,
    job_done,
    redis_client,
    setup_worker_telemetry,
)
from rq import Queue, get_current_job


def _queue() -> Queue:
    return Queue(os.environ[QUEUE_ENV], connection=redis_client())


def _done(key: str, shape: list[int]) -> None:
    job = get_current_job()
    job_done(key, shape, job.id if job is not None else None)


def root(key: str, shape: list[int], **kwargs: Any) -> None:
    """Level 1: enqueue the pages."""
    queue = _queue()
    for page_number in range(shape[0]):
        queue.enqueue(page, key, shape, **JOB_KWARGS, page=page_number)
    _done(key, shape)


def page(key: str, shape: list[int], **kwargs: Any) -> None:
    """Level 2: enqueue the page's details."""
    queue = _queue()
    for number in range(shape[1]):
        queue.enqueue(detail, key, shape, **JOB_KWARGS, page=kwargs.get("page"), movie_id=number)
    _done(key, shape)


def detail(key: str, shape: list[int], **kwargs: Any) -> None:
    """Level 3: enqueue the detail's processing jobs."""
    queue = _queue()
    for number in range(shape[2]):
        queue.enqueue(
            process, key, shape, **JOB_KWARGS, movie_id=kwargs.get("movie_id"), item=number
        )
    _done(key, shape)


def process(key: str, shape: list[int], **kwargs: Any) -> None:
    """Level 4: a leaf."""
    _done(key, shape)


class Worker(rq.Worker):
    """RQ's forking worker, imported by ``rq worker --worker-class e2e_rq.Worker``."""

    def perform_job(self, *args: Any, **kwargs: Any) -> Any:
        """RQ's, run in the work horse; under ``--profile`` with cProfile, one dump per horse."""
        directory = os.environ.get(PROFILE_ENV)
        if not directory:
            return super().perform_job(*args, **kwargs)
        profile = cProfile.Profile()
        profile.enable()
        try:
            return super().perform_job(*args, **kwargs)
        finally:
            profile.disable()
            profile.dump_stats(os.path.join(directory, f"horse-{os.getpid()}.prof"))


if os.environ.get(MODE_ENV) and setup_worker_telemetry(os.environ[MODE_ENV], "bench-e2e-rq"):
    from jobtrace.integrations.rq import instrument_rq

    instrument_rq()
