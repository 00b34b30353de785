"""Trace RQ jobs: a ``send`` span per job enqueued, a ``process`` span per run, lineage recorded.

Usage
-----
Instrument every process that enqueues or runs jobs, before it does. In the producer::

    from jobtrace.integrations.rq import instrument_rq

    instrument_rq()
    queue.enqueue(count_words, url)

In a worker, the ``rq`` CLI imports the worker class you name, so a small module of yours does it::

    # myapp/rq_worker.py        run: rq worker --worker-class myapp.rq_worker.Worker <queues>
    import jobtrace, rq
    from jobtrace.integrations.rq import instrument_rq

    jobtrace.configure(...)      # or your own OpenTelemetry SDK setup
    instrument_rq()

    class Worker(rq.Worker):     # or rq.SimpleWorker: no fork
        pass

or nothing at all under ``opentelemetry-instrument rq worker <queues>`` (entry point ``jobtrace-rq``;
turn it off with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=jobtrace-rq``). A job enqueued by a producer
without jobtrace still runs, as the root of its own trace and lineage tree. ``instrument()`` also
starts the lineage recorder (see Configuration); ``uninstrument()`` takes every patch out again.

Configuration
-------------
Keywords of ``instrument()`` / :func:`instrument_rq`:

- ``record``: record lineage in the store (default: on, unless ``JOBTRACE_RECORD=0``).
- ``database_url``: the lineage store (default: ``JOBTRACE_DATABASE_URL``).
- ``tracer_provider``, ``meter_provider``: the providers of the job spans and metrics (default:
  the global ones).
- ``flush_on_job_end``: flush spans, metrics and records after each job (default: in work horses
  only, which exit with ``os._exit`` and run no ``atexit`` handler).

The relationship policy, redaction and limits are jobtrace's settings (:func:`jobtrace.configure`).

Where the metadata travels
--------------------------
In ``job.meta``, saved with the job: the trace context under the global propagator's keys
(``traceparent`` by default) and the lineage keys of ``docs/metadata.md`` (``jobtrace-*``), all short
strings. The job id is RQ's ``job.id``; the job name is ``job.func_name``; the queue is
``job.origin``; ``messaging.system`` is ``rq``.

What is patched
---------------
Producer side, the public methods every enqueue goes through, in RQ 1.15 as in 3.x:
``Queue.enqueue_job`` (``enqueue``, ``enqueue_call``, the ``@job`` decorator, ``rq enqueue``),
``Queue.schedule_job`` (``enqueue_at``, ``enqueue_in``; the span gets ``jobtrace.job.delay_s``) and
``Queue.enqueue_many`` (with ``Queue.create_job``, only inside ``enqueue_many``). Each starts the
``send`` span and writes the metadata into ``job.meta`` before the job is saved, and ends the span
when the call returns (with a caller's ``pipeline``, before ``pipeline.execute()`` writes it). A job
that was sent before (its ``jobtrace-job-id`` is its own id, or it has run already) is a resend:
RQ retrying, repeating or moving it, or someone requeueing it; it keeps its metadata and gets no
new ``send`` span.

Worker side, ``Job.perform``: the ``process`` span covers the job function (and the
``JobTimeoutException`` RQ raises into it), so it works the same under ``Worker``, ``SimpleWorker``,
``SpawnWorker`` and a synchronous queue (``is_async=False``). ``BaseWorker.handle_job_failure`` and
``Job.cancel`` are patched to record outcomes no job function sees (below).

Outcomes
--------
=====================================================  =======================================
RQ                                                     jobtrace
=====================================================  =======================================
enqueued: ``queued``, ``deferred``, ``scheduled``      ``queued``
``started``                                            ``running``
``finished``                                           ``succeeded``
raised, ``job.retries_left > 0`` (``Retry(max=..)``)   ``retrying``
raised (a job timeout too), no retry left              ``failed``
returned ``Retry(...)`` (RQ 3.x)                       ``retrying``; ``failed`` past ``max``
``stopped`` (``send_stop_job_command``)                ``cancelled`` (reason ``stopped``)
``canceled`` (``job.cancel()``)                        ``cancelled`` (reason ``canceled``)
work horse killed (OOM, segfault, SIGKILL)             ``crashed``, by the reaper
=====================================================  =======================================

One span per attempt: a failed run writes :meth:`jobtrace.JobRun.retry_metadata` (the next attempt
number and its own span) into ``job.meta`` and saves it, so the retry's span links back to it, and
so does a run requeued by hand later. When the work horse dies instead, the worker process moves the
attempt number on before RQ retries the job, so the crashed attempt keeps its own lineage row.

Work horses
-----------
``Worker`` forks a work horse per job, which ends with ``os._exit``: the span and lineage records of
the job are flushed as the job ends (in forked processes, and in ``SpawnWorker``'s horses, which RQ
marks with ``RQ_JOB_ID``). A horse killed outright loses what it had not flushed; its job stops
heartbeating and the reaper (``jobtrace.lineage.reaper.reap``) declares it crashed.

Limits: a job whose ``on_success`` callback raises counts as succeeded (RQ then fails it); a job
repeated with ``Repeat`` (RQ 3.x) records every run under the same attempt number. Custom ``Queue``
or ``Job`` classes that override the patched methods without calling ``super()`` are not traced.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobtrace.instrumentation import import_integration

if TYPE_CHECKING:
    from jobtrace.integrations.rq._instrumentor import (
        RetryLimitExceededError,
        RQInstrumentor,
        job_state,
    )

__all__ = ["RQInstrumentor", "RetryLimitExceededError", "instrument_rq", "job_state"]

_RQ_PACKAGES = ("rq", "redis", "click")
_INSTRUMENTOR_MODULE = "jobtrace.integrations.rq._instrumentor"


def __getattr__(name: str) -> Any:
    # The instrumentor's module imports RQ: loading the ``jobtrace-rq`` entry point without RQ
    # raises ModuleNotFoundError here, which ``opentelemetry-instrument`` skips quietly.
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_INSTRUMENTOR_MODULE), name)


def instrument_rq(**kwargs: Any) -> RQInstrumentor:
    """Instrument RQ in this process, once; returns the instrumentor.

    Args:
        **kwargs: ``record``, ``database_url``, ``tracer_provider``, ``meter_provider``,
            ``flush_on_job_end`` (see the module's guide).

    Raises:
        ModuleNotFoundError: RQ is not installed (``pip install 'jobtrace[rq]'``).
    """
    module = import_integration(
        _INSTRUMENTOR_MODULE, library="RQ", extra="rq", packages=_RQ_PACKAGES
    )
    instrumentor: RQInstrumentor = module.RQInstrumentor.instrument_once(**kwargs)
    return instrumentor
