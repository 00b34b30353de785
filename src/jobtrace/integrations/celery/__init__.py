"""Trace Celery tasks as jobs: a ``send`` span per task published, a ``process`` span per run.

Usage
-----
In the module that creates the Celery app (the one ``celery -A`` imports), so that producers and
workers both get it::

    from celery import Celery
    from jobtrace.integrations.celery import instrument_celery

    app = Celery("cinema", broker="redis://localhost:6379/0")
    instrument_celery(app)

or ``CeleryInstrumentor().instrument()`` anywhere before tasks are sent or run, or nothing at all
under ``opentelemetry-instrument celery -A cinema worker`` (entry point ``jobtrace-celery``; turn it
off with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=jobtrace-celery``; python-contrib's own Celery
instrumentation is the entry point ``celery``). A producer writes the metadata, a worker reads it; a
task sent by a producer without jobtrace still runs, as the root of its own trace and lineage tree.
``send_task("name")`` works for any name, also one the producer has no code for.

``instrument()`` connects receivers to Celery's signals (``before_task_publish``,
``after_task_publish``, ``task_prerun``, ``task_postrun``, ``task_revoked``, ``task_unknown``,
``task_rejected``, ``worker_process_init``, ``worker_process_shutdown``, ``worker_shutdown``) and
starts the lineage recorder; ``uninstrument()`` disconnects them all. Signals are process-wide, so
every Celery app of the process is traced.

Configuration
-------------
Keywords of ``instrument()`` / :func:`instrument_celery`:

- ``record``: record lineage in the store (default: on, unless ``JOBTRACE_RECORD=0``).
- ``database_url``: the lineage store (default: ``JOBTRACE_DATABASE_URL``).
- ``tracer_provider``, ``meter_provider``: the providers of the task spans and metrics (default:
  the global ones).
- ``flush_on_job_end``: flush spans, metrics and records after each task (default: not in a
  worker's processes, which flush as they exit; elsewhere in processes forked after jobtrace was
  imported). On, a pool child killed later loses nothing of the tasks it finished.
- ``shutdown_flush_timeout``: longest wait for the flush when a worker or pool child exits, in
  seconds, shared by spans, metrics and records (default: jobtrace's ``flush_timeout`` setting).

The relationship policy, redaction and limits are jobtrace's settings (:func:`jobtrace.configure`).

Where the metadata travels
--------------------------
In the message headers of task protocol 2 (Celery's default since 4.0): the trace context under the
global propagator's keys (``traceparent`` by default) and the lineage keys of ``docs/metadata.md``
(``jobtrace-*``), short strings next to Celery's own headers. ``before_task_publish`` hands the
headers to jobtrace before the message goes out; on the worker Celery puts custom headers on
``task.request.headers`` (and on the request as attributes). The job id is Celery's task id; the job
name is the task name; the queue is the routing key (the queue's name on a direct exchange);
``messaging.system`` is ``celery``.

Retries
-------
``self.retry()`` (and ``autoretry_for``) re-sends the task with its request's headers, under the same
id: jobtrace sees that send from inside the running task and adds ``jobtrace-attempt`` and
``jobtrace-previous-span`` instead of starting a new ``send`` span. Every attempt is its own
``process`` span under the original ``send`` span, linked to the attempt before; the attempt is
``request.retries + 1``. A retrying attempt is not an error unless ``error_on_retry`` is set.

Canvas and lineage
------------------
The parent of a task is the job that published it. Children sent by a running task (``delay``,
``apply_async``, ``send_task``, a ``group``) are its children. In a ``chain`` the worker publishes the
next link after the previous one returned, still inside it: each link is the **child of the link
before**, so a chain of three is three levels deep (the trace nests the same way). A ``chord``'s body
is published by the header task that completes it last: it becomes that task's child. Links and
``link_error`` callbacks are children of the task they hang on. A canvas applied outside any job has
one root per task it publishes first. ``task_always_eager`` runs tasks in place: they are never
published, so they get no ``send`` span; each is the child of the job that called it, its span
nested in the caller's (a new trace linked to it when the relationship policy says ``link``).

Outcomes
--------
=====================================================  =======================================
Celery                                                 jobtrace
=====================================================  =======================================
``task_prerun``                                        ``running``
``SUCCESS``                                            ``succeeded``
``FAILURE`` (also past ``max_retries``)                ``failed``
``RETRY`` (``self.retry()``, ``autoretry_for``)        ``retrying``
``Ignore`` raised (also by ``self.replace()``)         ``skipped``
``Reject`` raised                                      ``discarded``; ``retrying`` with requeue
revoked (``task_revoked``)                             ``cancelled``; ``discarded`` when expired
unknown task name (``task_unknown``)                   ``discarded``
unreadable message (``task_rejected``)                 ``discarded``
pool child or worker killed (OOM, SIGKILL)             ``crashed``, by the reaper
=====================================================  =======================================

A revoked, unknown or unreadable task gets a short span from the worker's main process carrying its
outcome, so the lineage store closes it. A task whose pool child dies (``WorkerLostError``, a hard
time limit) is left to the reaper: it stops heartbeating and is declared ``crashed``.

Worker processes
----------------
Prefork children inherit the instrumentation from the main process. A child is long-lived and
does not flush after each task: it flushes spans, metrics and lineage records once, within the
budget, in ``worker_process_shutdown``, which billiard sends in the child before it leaves with
``os._exit`` (after ``--max-tasks-per-child`` tasks too); the main process (and ``--pool=solo``)
flushes in ``worker_shutdown``. See ``docs/integrations/celery.md``.

Living beside python-contrib's Celery instrumentation
-----------------------------------------------------
When ``opentelemetry-instrumentation-celery`` is instrumenting too, jobtrace makes no span of its
own for what contrib traces: it adopts contrib's ``apply_async/<task>`` and ``run/<task>`` spans,
adds its attributes, links and outcome to them, writes its lineage keys into the headers contrib
also writes ``traceparent`` into, and records the lineage. One span per send and per run, one trace.
For this jobtrace's receivers must run after contrib's where a span opens (``before_task_publish``,
``task_prerun``) and before them where it closes (``after_task_publish``, ``task_postrun``); jobtrace
puts them in that order when it is instrumented, when a pool child starts and whenever the
receivers change. Instrument contrib first (or both before the first task is sent or run); a
message handled in the moment contrib was instrumented after jobtrace and before jobtrace noticed
still gets its lineage, without jobtrace's attributes on its span. jobtrace still makes spans for
revoked, unknown and unreadable tasks, which contrib does not trace; the ``link`` relationship
policy does not apply to contrib's spans (contrib always makes the run a child of the send).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from jobtrace.instrumentation import import_integration

if TYPE_CHECKING:
    from celery import Celery

    from jobtrace.integrations.celery._instrumentor import CeleryInstrumentor

__all__ = ["CeleryInstrumentor", "after_auto_instrumentation", "instrument_celery"]

_CELERY_PACKAGES = ("celery", "kombu", "billiard", "vine", "amqp")
_INSTRUMENTOR_MODULE = "jobtrace.integrations.celery._instrumentor"


def __getattr__(name: str) -> Any:
    # The instrumentor's module imports Celery: loading the ``jobtrace-celery`` entry point without
    # Celery raises ModuleNotFoundError here, which ``opentelemetry-instrument`` skips quietly.
    if name == "CeleryInstrumentor":
        from jobtrace.integrations.celery._instrumentor import CeleryInstrumentor

        return CeleryInstrumentor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def instrument_celery(app: Celery | None = None, **kwargs: Any) -> CeleryInstrumentor:
    """Instrument Celery (once per process) and return the instrumentor.

    Args:
        app: The app to check: one sending task protocol 1 gets a warning, as its messages
            cannot carry the metadata. Signals are process-wide: every app is traced anyway.
        **kwargs: ``record``, ``database_url``, ``tracer_provider``, ``meter_provider``,
            ``flush_on_job_end``, ``shutdown_flush_timeout`` (see the module's guide).

    Raises:
        ModuleNotFoundError: Celery is not installed (``pip install 'jobtrace[celery]'``).
    """
    module = import_integration(
        _INSTRUMENTOR_MODULE, library="Celery", extra="celery", packages=_CELERY_PACKAGES
    )
    instrumentor: CeleryInstrumentor = module.CeleryInstrumentor.instrument_once(**kwargs)
    if app is not None:
        instrumentor.check_app(app)
    return instrumentor


def after_auto_instrumentation() -> None:
    """Order jobtrace's receivers around contrib's once every instrumentor is loaded.

    Meant for ``opentelemetry-instrument``'s ``opentelemetry_post_instrument`` entry points, which
    run after all instrumentors: whichever order those were loaded in, the first message a producer
    sends is then already adopted by contrib's span. Does nothing when jobtrace's Celery
    instrumentation was not loaded (and never imports Celery).
    """
    module = sys.modules.get(_INSTRUMENTOR_MODULE)
    if module is None:
        return
    instrumentor = module.CeleryInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.order_after_contrib()
