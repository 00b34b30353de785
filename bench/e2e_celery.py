"""The Celery app of ``bench/pipeline_e2e.py``: ``celery -A e2e_celery worker`` with a mode set.

The pipeline: ``root`` sends the pages, each ``page`` its details, each ``detail`` its items; every
task counts itself in Redis when its own sends are done. A worker reads ``BENCH_E2E_MODE``:

* ``bare``: no instrumentation;
* ``contrib``: ``opentelemetry-instrumentation-celery``, in ``worker_process_init`` as its guide
  says for prefork;
* ``spans``, ``lineage``: ``jobtrace.configure()`` then ``instrument_celery(app)``, here in the
  module that creates the app, as jobtrace's guide says (``JOBTRACE_RECORD`` tells them apart;
  ``BENCH_E2E_NO_FLUSH=1`` adds ``flush_on_job_end=False``).
"""

from __future__ import annotations

import cProfile
import os
from typing import Any

from celery import Celery
from e2e_common import (
    JOB_KWARGS,
    MODE_ENV,
    NO_FLUSH_ENV,
    PREFIX_ENV,
    PROFILE_ENV,
    QUEUE_ENV,
    REDIS_ENV,
    job_done,
    setup_worker_telemetry,
)

app = Celery("e2e_celery", set_as_current=False)


def configure_app(broker_url: str, prefix: str) -> None:
    """The app on ``broker_url``, every broker key under ``<prefix>:``."""
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options={"global_keyprefix": f"{prefix}:"},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
    )


def _queue() -> str:
    return os.environ[QUEUE_ENV]


@app.task(name="e2e.root")
def root(key: str, shape: list[int], **kwargs: Any) -> None:
    """Level 1: send the pages."""
    for page_number in range(shape[0]):
        page.apply_async((key, shape), {**JOB_KWARGS, "page": page_number}, queue=_queue())
    job_done(key, shape)


@app.task(name="e2e.page")
def page(key: str, shape: list[int], **kwargs: Any) -> None:
    """Level 2: send the page's details."""
    for number in range(shape[1]):
        arguments = {**JOB_KWARGS, "page": kwargs.get("page"), "movie_id": number}
        detail.apply_async((key, shape), arguments, queue=_queue())
    job_done(key, shape)


@app.task(name="e2e.detail")
def detail(key: str, shape: list[int], **kwargs: Any) -> None:
    """Level 3: send the detail's processing jobs."""
    for number in range(shape[2]):
        arguments = {**JOB_KWARGS, "movie_id": kwargs.get("movie_id"), "item": number}
        process.apply_async((key, shape), arguments, queue=_queue())
    job_done(key, shape)


@app.task(name="e2e.process")
def process(key: str, shape: list[int], **kwargs: Any) -> None:
    """Level 4: a leaf."""
    job_done(key, shape)


def _instrument_contrib(**kwargs: Any) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()


def _setup_worker(mode: str) -> None:
    """This worker process for ``mode``, as an application's Celery module would set it up."""
    configure_app(os.environ[REDIS_ENV], os.environ[PREFIX_ENV])
    if setup_worker_telemetry(mode, "bench-e2e-celery"):
        from jobtrace.integrations.celery import instrument_celery

        if os.environ.get(NO_FLUSH_ENV) == "1":  # --celery-no-flush: the per-task flush's share
            instrument_celery(app, flush_on_job_end=False)
        else:
            instrument_celery(app)
    elif mode == "contrib":
        from celery.signals import worker_process_init

        worker_process_init.connect(_instrument_contrib, weak=False)


_profile = cProfile.Profile()


def _start_profile(**kwargs: Any) -> None:
    _profile.enable()


def _dump_profile(**kwargs: Any) -> None:
    _profile.disable()
    _profile.dump_stats(os.path.join(os.environ[PROFILE_ENV], f"child-{os.getpid()}.prof"))


if os.environ.get(MODE_ENV):
    _setup_worker(os.environ[MODE_ENV])
if os.environ.get(PROFILE_ENV):  # --profile: each pool child from its start to its exit
    from celery.signals import worker_process_init, worker_process_shutdown

    worker_process_init.connect(_start_profile, weak=False)
    worker_process_shutdown.connect(_dump_profile, weak=False)
