"""Trace Dramatiq messages as jobs: a ``send`` span per message enqueued, a ``process`` span per run.

Usage
-----
In the module the ``dramatiq`` CLI imports (the one that creates the broker)::

    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from jobtrace.integrations.dramatiq import instrument_dramatiq

    broker = RedisBroker(url="redis://localhost:6379/0")
    dramatiq.set_broker(broker)
    instrument_dramatiq(broker)

or ``DramatiqInstrumentor().instrument()`` anywhere before the brokers are created, or nothing at all
under ``opentelemetry-instrument`` (entry point ``jobtrace-dramatiq``; turn it off with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=jobtrace-dramatiq``). Producers and workers both need it: a
producer writes the metadata, a worker reads it. A message sent by a producer without jobtrace still
runs, as the root of its own trace and lineage tree.

``instrument()`` adds a :class:`JobtraceMiddleware` to the global broker if one is already set (it
never calls :func:`dramatiq.get_broker`, which would create one), to the ``broker`` keyword's broker,
and to every broker created afterwards (it wraps ``dramatiq.Broker.__init__``, so brokers built with
their own ``middleware=[...]`` list get it too). ``uninstrument()`` takes the middleware out of those
brokers and unwraps ``__init__``. It also starts the lineage recorder (see Configuration).

Configuration
-------------
Keywords of ``instrument()`` / :func:`instrument_dramatiq`:

- ``broker``: a broker to instrument besides the global one and the ones created later.
- ``record``: record lineage in the store (default: on, unless ``JOBTRACE_RECORD=0``).
- ``database_url``: the lineage store (default: ``JOBTRACE_DATABASE_URL``).
- ``tracer_provider``, ``meter_provider``: the providers of the job spans and metrics (default:
  the global ones).
- ``flush_on_job_end``: flush spans and records after each message (default: only in processes
  forked after jobtrace was imported).
- ``shutdown_flush_timeout``: longest wait for the flush when a worker shuts down, in seconds
  (default: jobtrace's ``flush_timeout`` setting).

The relationship policy, redaction and limits are jobtrace's settings (:func:`jobtrace.configure`).

Where the metadata travels
--------------------------
Under one key of the message's options, ``message.options["jobtrace"]``: a JSON object of strings
holding the trace context (the global propagator's keys, ``traceparent`` by default) and the lineage
keys of ``docs/metadata.md``. One key keeps it clear of the options Dramatiq and other middleware
own. The job id is Dramatiq's ``message_id``; the job name is the actor name; the queue is the
message's queue (without ``.DQ``/``.XQ``); ``messaging.system`` is ``dramatiq``.

Middleware position
-------------------
:class:`JobtraceMiddleware` goes **first** in ``broker.middleware`` (``instrument()`` puts it there).
Dramatiq runs ``before_*`` hooks in list order and ``after_*`` hooks in reverse, so the job's span
then covers every other middleware, messages sent from other middlewares' ``after_process_message``
(``Retries``, ``Pipelines``, ``Callbacks``) are sent from inside the job, and the span ends only after
``Retries`` has decided. ``Retries`` re-enqueues a copy of the failed message from inside the job:
the middleware sees that copy in ``before_enqueue`` and writes the failed attempt's
``jobtrace-attempt`` and ``jobtrace-previous-span`` into it, so the next attempt's span links back.
Placed after ``Retries`` instead, it predicts ``Retries``' decision (``throws``, ``retries`` against
``max_retries``, ``retry_when``) and writes those keys into the message before ``Retries`` copies it.

Outcomes
--------
- the actor returned: ``succeeded``;
- it raised and ``Retries`` re-enqueued the message: ``retrying``; the last attempt, failed and
  dead-lettered (or not retried at all): ``failed``; ``TimeLimitExceeded`` is a failure like any;
- a middleware skipped the message (``SkipMessage``): ``skipped``, or ``discarded`` when it also
  failed (dead-lettered) it, as ``AgeLimit`` does;
- ``dramatiq_abort``'s ``Abort``, or the worker's ``Shutdown`` when not retried: ``cancelled``.

Worker processes
----------------
The ``dramatiq`` CLI runs actors in child processes that end without running ``atexit`` handlers.
The middleware makes sure the lineage recorder runs in each of them (``after_process_boot``) and
flushes spans, metrics and lineage records in ``after_worker_shutdown``, once every worker thread
is done. Stop Dramatiq with a SIGTERM to its main process: a SIGTERM sent to the whole process group
reaches each worker process twice, and Dramatiq kills a worker process on the second, before that
flush. A process killed outright loses what it had not flushed; its running jobs stop heartbeating
and the reaper declares them crashed.

``async def`` actors (Dramatiq's ``AsyncIO`` middleware) run on its event-loop thread in a copy of
the worker thread's context, so they see the job like any other actor.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobtrace.instrumentation import import_integration

if TYPE_CHECKING:
    from dramatiq.broker import Broker

    from jobtrace.integrations.dramatiq._instrumentor import (
        OPTIONS_KEY,
        DramatiqInstrumentor,
        JobtraceMiddleware,
    )

__all__ = ["OPTIONS_KEY", "DramatiqInstrumentor", "JobtraceMiddleware", "instrument_dramatiq"]

_DRAMATIQ_PACKAGES = ("dramatiq", "prometheus_client")
_INSTRUMENTOR_MODULE = "jobtrace.integrations.dramatiq._instrumentor"


def __getattr__(name: str) -> Any:
    # The instrumentor's module imports Dramatiq: loading the ``jobtrace-dramatiq`` entry point
    # without it raises ModuleNotFoundError here, which ``opentelemetry-instrument`` skips quietly.
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_INSTRUMENTOR_MODULE), name)


def instrument_dramatiq(broker: Broker | None = None, **kwargs: Any) -> DramatiqInstrumentor:
    """Instrument Dramatiq (once per process) and ``broker``, if given; returns the instrumentor.

    Args:
        broker: A broker to instrument now, besides the global one and the ones created later.
        **kwargs: ``record``, ``database_url``, ``tracer_provider``, ``meter_provider``,
            ``flush_on_job_end``, ``shutdown_flush_timeout`` (see the module's guide).

    Raises:
        ModuleNotFoundError: Dramatiq is not installed (``pip install 'jobtrace[dramatiq]'``).
    """
    module = import_integration(
        _INSTRUMENTOR_MODULE, library="Dramatiq", extra="dramatiq", packages=_DRAMATIQ_PACKAGES
    )
    instrumentor: DramatiqInstrumentor = module.DramatiqInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(broker=broker, **kwargs)
    elif broker is not None:
        instrumentor.instrument_broker(broker)
    return instrumentor
