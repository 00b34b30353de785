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
- ``flush_on_job_end``: flush spans and records after each message (default: only in processes
  forked after jobtrace was imported).

Spans and metrics go to the global OpenTelemetry providers; the relationship policy, redaction and
limits are jobtrace's settings (:func:`jobtrace.configure`).

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

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name
from dramatiq.message import Message
from dramatiq.middleware import Middleware, Retries, Shutdown
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,  # (the module's __all__ is empty)
)

from jobtrace import Enqueue, JobRun, JobState, flush, get_settings
from jobtrace._internal.metadata import KEY_JOB_ID
from jobtrace._internal.redaction import call_args
from jobtrace.integrations._common import start_recording

__all__ = ["OPTIONS_KEY", "DramatiqInstrumentor", "JobtraceMiddleware", "instrument_dramatiq"]

logger = logging.getLogger("jobtrace")

_instruments = ("dramatiq >= 1.15, < 3.0",)

SYSTEM = "dramatiq"
OPTIONS_KEY = "jobtrace"
"""The key of ``message.options`` that holds the job's metadata."""


class EnqueueIncompleteError(RuntimeError):
    """The broker raised between ``before_enqueue`` and ``after_enqueue``: the send likely failed."""


@dataclass
class _Processing:
    """A message being processed by this thread, and whether it was re-enqueued meanwhile."""

    run: JobRun
    requeued: bool = False


class _ThreadState(threading.local):
    """Per-thread bookkeeping: Dramatiq calls a message's before and after hooks in one thread."""

    def __init__(self) -> None:
        self.sending: dict[str, Enqueue] = {}
        self.processing: dict[str, _Processing] = {}
        self.consumer_thread = False


class JobtraceMiddleware(Middleware):
    """The Dramatiq middleware behind :class:`DramatiqInstrumentor`; it must be first in the list.

    Args:
        record: Record lineage in the store; ``None`` follows ``JOBTRACE_RECORD``.
        database_url: The lineage store; ``None`` follows ``JOBTRACE_DATABASE_URL``.
        flush_on_job_end: Flush telemetry after each message; ``None`` lets jobtrace decide.
        shutdown_flush_timeout: Longest wait for the flush when a worker shuts down, in seconds;
            ``None`` uses jobtrace's ``flush_timeout`` setting.
    """

    def __init__(
        self,
        *,
        record: bool | None = None,
        database_url: str | None = None,
        flush_on_job_end: bool | None = None,
        shutdown_flush_timeout: float | None = None,
    ) -> None:
        self.record = record
        self.database_url = database_url
        self.flush_on_job_end = flush_on_job_end
        self.shutdown_flush_timeout = shutdown_flush_timeout
        self._state = _ThreadState()

    # -- producer side --------------------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """Start the ``send`` span and write the metadata, or carry retry keys into a retried copy."""
        try:
            self._before_enqueue(message, delay)
        except Exception:
            logger.warning("jobtrace: tracing the enqueue of %s failed", message, exc_info=True)

    def _before_enqueue(self, message: Message[Any], delay: int | None) -> None:
        options = message.options
        carrier = options.get(OPTIONS_KEY)
        running = self._state.processing.get(message.message_id)
        if running is not None:
            # Retries (or the actor itself) re-enqueues the message being processed right here.
            running.requeued = True
            options[OPTIONS_KEY] = {**_as_dict(carrier), **running.run.retry_metadata()}
            return
        if _is_resend(message, carrier, consumer_thread=self._state.consumer_thread):
            return
        self._end_unfinished_sends()
        metadata: dict[str, str] = {}
        enqueue = Enqueue(
            message.actor_name,
            queue=q_name(message.queue_name),
            job_id=message.message_id,
            args=call_args(message.args, message.kwargs),
            delay=delay / 1000 if delay else None,
            system=SYSTEM,
            carrier=metadata,
        )
        enqueue.start()
        # A new dict: message copies share the options' values, never mutate one in place.
        options[OPTIONS_KEY] = metadata
        self._state.sending[message.message_id] = enqueue

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """End the ``send`` span: the broker accepted the message."""
        enqueue = self._state.sending.pop(message.message_id, None)
        if enqueue is not None:
            enqueue.end()

    def _end_unfinished_sends(self) -> None:
        """A send whose ``after_enqueue`` never came raised in the broker: end its span as failed."""
        sending = self._state.sending
        while sending:
            _, enqueue = sending.popitem()
            enqueue.end(EnqueueIncompleteError("the broker raised before confirming the enqueue"))

    # -- consumer side --------------------------------------------------------------------------

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Start the job's span and make it the current job for the actor."""
        try:
            run = self._start_run(message)
        except Exception:
            logger.warning("jobtrace: tracing message %s failed", message, exc_info=True)
            return
        self._state.processing[message.message_id] = _Processing(run)

    def _start_run(self, message: MessageProxy) -> JobRun:
        options = message.options
        retries = options.get("retries", 0)
        attempt = retries + 1 if isinstance(retries, int) and retries >= 0 else None
        run = JobRun(
            options.get(OPTIONS_KEY),
            name=message.actor_name,
            job_id=message.message_id,
            queue=q_name(message.queue_name),
            attempt=attempt,
            system=SYSTEM,
            args=call_args(message.args, message.kwargs),
            flush=self.flush_on_job_end,
        )
        return run.start()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """End the job's span with the outcome that the actor and ``Retries`` decided."""
        processing = self._state.processing.pop(message.message_id, None)
        if processing is None:
            return
        run = processing.run
        if exception is None:
            if message.failed:  # a middleware failed (dead-lettered) the message
                run.finish(state=JobState.DISCARDED, reason="failed_by_middleware")
            else:
                run.finish()
            return
        try:
            will_retry = processing.requeued or self._will_retry(broker, message, exception, run)
        except Exception:
            logger.warning("jobtrace: deciding the retry of %s failed", message, exc_info=True)
            will_retry = False
        state = reason = None
        if not will_retry:
            reason = _cancel_reason(exception)
            if reason is not None:
                state = JobState.CANCELLED
        run.finish(exception, will_retry=will_retry, state=state, reason=reason)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """A middleware skipped the message: ``skipped``, or ``discarded`` if it also failed it."""
        processing = self._state.processing.pop(message.message_id, None)
        try:
            run = processing.run if processing is not None else self._start_run(message)
        except Exception:
            logger.warning("jobtrace: tracing skipped message %s failed", message, exc_info=True)
            return
        error = getattr(message, "_exception", None)
        reason = str(error) if error is not None and str(error) else "skipped"
        if message.failed:
            run.finish(
                error if isinstance(error, BaseException) else None,
                state=JobState.DISCARDED,
                reason=reason,
            )
        else:
            run.finish(state=JobState.SKIPPED, reason=reason)

    def _will_retry(
        self, broker: Broker, message: MessageProxy, exception: BaseException, run: JobRun
    ) -> bool:
        """Whether ``Retries`` re-enqueues the message, when it has not done so before this hook."""
        retries = _retries_middleware(broker)
        if retries is None:
            return False
        middleware = broker.middleware
        if self in middleware and middleware.index(self) < middleware.index(retries):
            return False  # Retries' after hook already ran, and it did not re-enqueue
        if not _predict_retry(broker, message, exception, retries):
            return False
        # Retries copies the message after this hook: hand the next attempt its keys now.
        message.options[OPTIONS_KEY] = {
            **_as_dict(message.options.get(OPTIONS_KEY)),
            **run.retry_metadata(),
        }
        return True

    # -- worker process lifecycle ---------------------------------------------------------------

    def after_process_boot(self, broker: Broker) -> None:
        """In each ``dramatiq`` CLI worker process: make sure the lineage recorder runs here."""
        start_recording(self.record, self.database_url)

    def after_consumer_thread_boot(self, broker: Broker, thread: threading.Thread) -> None:
        """Mark consumer threads: what they enqueue are delayed messages coming due, not sends."""
        self._state.consumer_thread = True

    def after_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        """Flush spans, metrics and records: CLI worker processes exit without ``atexit``."""
        timeout = self.shutdown_flush_timeout
        flush(get_settings().flush_timeout if timeout is None else timeout)


def _as_dict(carrier: object) -> dict[str, Any]:
    return dict(carrier) if isinstance(carrier, Mapping) else {}


def _is_resend(message: Message[Any], carrier: object, *, consumer_thread: bool) -> bool:
    """Whether an enqueue hands on a message that was sent before, whose metadata must stay."""
    if consumer_thread:
        return True  # a delayed message that came due, moved to its queue by the worker
    if isinstance(carrier, Mapping) and carrier.get(KEY_JOB_ID) == message.message_id:
        return True  # the broker retrying its publish, or the same message sent again
    retries = message.options.get("retries")
    return isinstance(retries, int) and retries > 0  # re-enqueued by Retries after our hook


def _retries_middleware(broker: Broker) -> Retries | None:
    return next((m for m in broker.middleware if isinstance(m, Retries)), None)


def _predict_retry(
    broker: Broker, message: MessageProxy, exception: BaseException, retries: Retries
) -> bool:
    """``Retries.after_process_message``'s decision, taken before it runs (same rules)."""
    actor = broker.get_actor(message.actor_name)
    throws = message.options.get("throws") or actor.options.get("throws")
    if throws and isinstance(exception, throws):
        return False
    done = message.options.get("retries", 0)
    retry_when = actor.options.get("retry_when", retries.retry_when)
    if retry_when is not None:
        return bool(retry_when(done, exception))
    max_retries = message.options.get(
        "max_retries", actor.options.get("max_retries", retries.max_retries)
    )
    return max_retries is None or done < max_retries


def _cancel_reason(exception: BaseException) -> str | None:
    """Why a job that will not run again was cancelled rather than failed, if it was."""
    cls = type(exception)
    if cls.__name__ == "Abort" and cls.__module__.startswith("dramatiq_abort"):
        return "aborted"
    if isinstance(exception, Shutdown):
        return "worker_shutdown"
    return None


class DramatiqInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds :class:`JobtraceMiddleware` to Dramatiq brokers: the global one and every one created later.

    A singleton, like every ``BaseInstrumentor``: instrumenting twice is a no-op with a warning, and
    ``uninstrument()`` undoes it.
    """

    _middleware: JobtraceMiddleware | None = None
    _brokers: weakref.WeakSet[Broker]
    _original_init: Callable[..., None] | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        """The Dramatiq versions this instrumentation supports."""
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        self._middleware = JobtraceMiddleware(
            record=kwargs.get("record"),
            database_url=kwargs.get("database_url"),
            flush_on_job_end=kwargs.get("flush_on_job_end"),
        )
        self._brokers = weakref.WeakSet()
        start_recording(kwargs.get("record"), kwargs.get("database_url"))
        self._wrap_broker_init()
        for broker in (dramatiq.broker.global_broker, kwargs.get("broker")):
            if broker is not None:
                self.instrument_broker(broker)

    def _uninstrument(self, **kwargs: Any) -> None:
        original, self._original_init = self._original_init, None
        if original is not None:
            Broker.__init__ = original  # type: ignore[method-assign]
        middleware, self._middleware = self._middleware, None
        for broker in list(self._brokers):
            if middleware is not None and any(m is middleware for m in broker.middleware):
                broker.middleware[:] = [m for m in broker.middleware if m is not middleware]
        self._brokers = weakref.WeakSet()

    def instrument_broker(self, broker: Broker) -> None:
        """Add the middleware, first, to ``broker``; one that already has one is left alone."""
        middleware = self._middleware
        if middleware is None or any(isinstance(m, JobtraceMiddleware) for m in broker.middleware):
            return
        if broker.middleware:
            broker.add_middleware(middleware, before=type(broker.middleware[0]))
        else:
            broker.add_middleware(middleware)
        self._brokers.add(broker)

    def _wrap_broker_init(self) -> None:
        original: Callable[..., None] = Broker.__init__
        instrumentor = self

        @functools.wraps(original)
        def __init__(broker: Broker, *args: Any, **kwargs: Any) -> None:
            original(broker, *args, **kwargs)
            try:
                instrumentor.instrument_broker(broker)
            except Exception:
                logger.warning("jobtrace: instrumenting broker %r failed", broker, exc_info=True)

        self._original_init = original
        Broker.__init__ = __init__  # type: ignore[method-assign,assignment]


def instrument_dramatiq(broker: Broker | None = None, **kwargs: Any) -> DramatiqInstrumentor:
    """Instrument Dramatiq (once per process) and ``broker``, if given; returns the instrumentor.

    Args:
        broker: A broker to instrument now, besides the global one and the ones created later.
        **kwargs: ``record``, ``database_url``, ``flush_on_job_end`` (see the module's guide).
    """
    instrumentor = DramatiqInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(broker=broker, **kwargs)
    elif broker is not None:
        instrumentor.instrument_broker(broker)
    return instrumentor
