"""Trace arq jobs: a ``send`` span per job enqueued, a ``process`` span per attempt, and lineage.

Usage
-----
Instrument every process that enqueues or runs jobs, before it does. In the module named on the
``arq`` command line (``arq myapp.worker.WorkerSettings``)::

    from arq.connections import RedisSettings
    from jobtrace.integrations.arq import instrument_arq

    instrument_arq()             # after your OpenTelemetry setup (or jobtrace.configure(...))

    class WorkerSettings:
        functions = [fetch_page, parse_page]
        redis_settings = RedisSettings()

and in the web application (or script) that enqueues, once at start-up::

    instrument_arq()
    redis = await create_pool(RedisSettings())
    await redis.enqueue_job("fetch_page", url)

or nothing at all under ``opentelemetry-instrument arq myapp.worker.WorkerSettings`` (entry point
``jobtrace-arq``; turn it off with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=jobtrace-arq``). A job
enqueued by a producer without jobtrace still runs, as the root of its own trace and lineage tree;
a job enqueued with jobtrace runs unchanged on a worker without it. ``instrument()`` also starts the
lineage recorder (see Configuration); ``uninstrument()`` takes every patch out again.

Configuration
-------------
Keywords of ``instrument()`` / :func:`instrument_arq`:

- ``worker``: an ``arq.worker.Worker`` created before instrumenting, to instrument as well (workers
  created afterwards, by ``arq`` or ``run_worker``, are instrumented when they are created).
- ``record``: record lineage in the store (default: on, unless ``JOBTRACE_RECORD=0``).
- ``database_url``: the lineage store (default: ``JOBTRACE_DATABASE_URL``).
- ``tracer_provider``, ``meter_provider``: the providers of the job spans and metrics (default:
  the global ones).
- ``flush_on_job_end``: flush spans, metrics and records after each attempt (default: off; an arq
  worker is one process that exits normally, flushing at exit).

The relationship policy, redaction and limits are jobtrace's settings (:func:`jobtrace.configure`).

Where the metadata travels
--------------------------
arq has no per-job metadata field, so jobtrace adds one: a ``"jobtrace"`` entry beside arq's own
entries (``f``, ``a``, ``k``, ``t``, ``et``) of the job dict that arq serializes and stores under
``arq:job:<job id>``. It holds the trace context (the global propagator's keys, ``traceparent`` by
default) and the lineage keys of ``docs/metadata.md``, all short strings. It is written by wrapping
the serializer that ``ArqRedis.enqueue_job`` passes to ``serialize_job`` (your ``job_serializer``
or pickle, which then sees one more dict entry), and read by wrapping the deserializer of the
worker's ``deserialize_job_raw``. The job id is arq's (the ``_job_id`` given, or one made for it and
passed on as ``_job_id``); the job name is the function name; the queue is the worker's
``queue_name``; ``messaging.system`` is ``arq``.

Why there, and not elsewhere:

- The stored job is written in arq's own transaction and expires with it; arq re-runs that same
  stored value on every retry (``Retry``, ``RetryJob``, a cancelled job) and after any deferral
  (``_defer_by``, ``_defer_until``, ``Retry(defer=...)``), so each attempt reads the same metadata.
- arq reads only its own entries (``deserialize_job_raw``, ``Job.info()``, ``queued_jobs()``), so a
  worker without jobtrace runs the job unchanged, and the job's arguments, arq's log lines and its
  stored results stay exactly what the caller passed.
- A reserved keyword argument (``_jobtrace=...``) would have been simpler, but a worker without
  jobtrace would pass it to the function, and every job would fail with a ``TypeError``; it also
  shows in arq's logs and results. A side key per job in Redis would cost a second write outside
  arq's transaction, racing the worker that picks the job up, and going stale when arq refuses a
  duplicate ``_job_id``.
- The price: the wrapped functions, ``serialize_job`` in ``arq.connections`` and
  ``deserialize_job_raw`` in ``arq.worker``, are module-level names of arq rather than documented
  API (unchanged from arq 0.25 to 0.28); a custom ``job_serializer`` must accept a dict of strings
  in the job dict (msgpack, JSON and pickle all do).

Attempts and retries
--------------------
arq never rewrites the stored job between attempts, so the link from one attempt's span to the
previous one goes through one small key per job, ``jobtrace:arq:attempt:<job id>``. When an attempt
starts, its :meth:`jobtrace.JobRun.retry_metadata` (the next attempt's number and this attempt's
span) is stored there as JSON. The next attempt (arq's ``job_try`` >= 2) reads it and links its span
to the previous attempt's span, whether that attempt retried, was cancelled by a worker shutdown, or
died with its worker. The key is only trusted when its attempt number is the ``job_try`` arq hands
out, so a stale key of an older job with the same id links nothing.

The key lives for arq's in-progress timeout (the job's timeout + 10 s) plus five minutes, long
enough for a running worker to pick up the job of a dead one; an attempt that ends ``retrying``
extends it to 88,400 s (arq's own retry counter's lifetime), so a long ``Retry(defer=...)`` keeps
its link. Each attempt costs one ``SET`` (and a ``GET`` on a retry); no key outlives its job by more
than a few minutes unless it waits for a retry. Losing the key costs the link, never the job. The
attempt number is arq's ``job_try``; every attempt shares the job's trace (its parent is the
``send`` span).

What is patched
---------------
Producer side: ``ArqRedis.enqueue_job``, which every enqueue goes through (``ctx["redis"]`` inside
a job, ``create_pool(...)`` elsewhere, the worker's cron jobs, which become roots). It starts the
``send`` span, writes the metadata into the stored job, and ends the span when arq has stored the
job (an error if it raised).
A deferred job's span carries ``jobtrace.job.delay_s``. A ``_job_id`` that arq already holds (a
job or its result) is refused by arq; jobtrace checks that first (one ``EXISTS``, only when a
``_job_id`` is given) and then sends nothing, so the existing job's lineage is left alone.

Worker side: every ``arq.worker.Worker`` created while instrumented (its ``__init__`` is wrapped)
gets its functions map copied with each coroutine wrapped, cron jobs included; the functions the
settings declare are left untouched. The ``process`` span covers the function call, inside arq's
timeout; ``on_job_start``/``on_job_end`` hooks run outside it. After ``uninstrument()`` the wrapped
functions of existing workers run untraced.

Outcomes
--------
=========================================  ====================================================
arq                                        jobtrace
=========================================  ====================================================
enqueued: ``queued``, or ``deferred``      ``queued`` (``send`` span: ``jobtrace.job.delay_s``)
``in_progress``                            ``running``
returned                                   ``succeeded``
raised                                     ``failed``
``Retry``/``RetryJob``, not the last try   ``retrying``
``Retry``/``RetryJob`` on the last try     ``failed`` (reason ``max_tries_reached``)
timed out (job or function ``timeout``)    ``failed``, ``TimeoutError`` (reason ``timeout``)
aborted (``Job.abort()``)                  ``cancelled`` (reason ``aborted``)
worker shut down mid-job, to be run again  ``retrying`` (reason ``worker_shutdown``)
worker shut down mid-job, no try left      ``cancelled`` (reason ``worker_shutdown``)
worker killed (OOM, SIGKILL)               ``crashed``, by the reaper
=========================================  ====================================================

``retry_jobs=False`` makes every exception, ``Retry`` included, a failure, as in arq. A ``Retry`` on
the last try is requeued by arq, which fails it without running it when it comes due; jobtrace
marks the attempt ``failed`` at once. arq's cancellations reach the function as a bare
``CancelledError``: an abort is told by the worker's ``aborting_tasks``, a shutdown by the worker's
signal handler (wrapped for a worker created while instrumented), else by the worker no longer
picking jobs or both the job's ``run_job`` task and the worker's main task being cancelled
(``Task.cancelling()``, Python 3.11+), and a timeout by the attempt having run for the function's
timeout.

Limits: a job arq fails without running it (expired, function not found, ``max_tries`` exceeded
after a crash) gets no span; its last attempt's row says what happened to it. A worker process
killed outright loses the spans it had not exported; its running jobs stop heartbeating and the
reaper (``jobtrace.lineage.reaper.reap``) declares them crashed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobtrace.instrumentation import import_integration

if TYPE_CHECKING:
    from arq.worker import Worker

    from jobtrace.integrations.arq._instrumentor import (
        ATTEMPT_KEY_PREFIX,
        JOB_KEY,
        ArqInstrumentor,
        DuplicateJobError,
        instrument_worker,
    )

__all__ = [
    "ATTEMPT_KEY_PREFIX",
    "JOB_KEY",
    "ArqInstrumentor",
    "DuplicateJobError",
    "instrument_arq",
    "instrument_worker",
]

_ARQ_PACKAGES = ("arq", "redis")
_INSTRUMENTOR_MODULE = "jobtrace.integrations.arq._instrumentor"


def __getattr__(name: str) -> Any:
    # The instrumentor's module imports arq: loading the ``jobtrace-arq`` entry point without arq
    # raises ModuleNotFoundError here, which ``opentelemetry-instrument`` skips quietly.
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_INSTRUMENTOR_MODULE), name)


def instrument_arq(worker: Worker | None = None, **kwargs: Any) -> ArqInstrumentor:
    """Instrument arq (once per process) and ``worker``, if given; returns the instrumentor.

    Args:
        worker: A worker created before now, to instrument as well.
        **kwargs: ``record``, ``database_url``, ``tracer_provider``, ``meter_provider``,
            ``flush_on_job_end`` (see the module's guide).

    Raises:
        ModuleNotFoundError: arq is not installed (``pip install 'jobtrace[arq]'``).
    """
    module = import_integration(
        _INSTRUMENTOR_MODULE, library="arq", extra="arq", packages=_ARQ_PACKAGES
    )
    instrumentor: ArqInstrumentor = module.ArqInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(worker=worker, **kwargs)
    elif worker is not None:
        module.instrument_worker(worker)
    return instrumentor
