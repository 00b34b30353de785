"""The Dramatiq instrumentor and its middleware, which turns Dramatiq's message hooks into job runs.

The usage guide is the package's docstring (:mod:`jobtrace.integrations.dramatiq`). This module
imports Dramatiq at top level, so that a missing Dramatiq raises ``ModuleNotFoundError`` when the
``jobtrace-dramatiq`` entry point is loaded and ``opentelemetry-instrument`` skips it quietly.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name
from dramatiq.message import Message
from dramatiq.middleware import Middleware, Retries, Shutdown
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from jobtrace import JobRun, JobState
from jobtrace.instrumentation import (
    KEY_JOB_ID,
    Options,
    QueueInstrumentor,
    SendIncompleteError,
    SendTracker,
    Server,
    call_args,
    redis_server,
)

__all__ = ["OPTIONS_KEY", "SYSTEM", "DramatiqInstrumentor", "JobtraceMiddleware"]

logger = logging.getLogger("jobtrace")

SYSTEM = "dramatiq"
OPTIONS_KEY = "jobtrace"
"""The key of ``message.options`` that holds the job's metadata."""


class EnqueueIncompleteError(SendIncompleteError):
    """The broker raised between ``before_enqueue`` and ``after_enqueue``: the send likely failed."""

    __module__ = "jobtrace.integrations.dramatiq"  # its public home, as ``error.type`` says


@dataclass
class _Processing:
    """A message being processed by this thread, and whether it was re-enqueued meanwhile."""

    run: JobRun
    requeued: bool = False


class _ThreadState(threading.local):
    """Per-thread bookkeeping: Dramatiq calls a message's before and after hooks in one thread."""

    def __init__(self) -> None:
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
        tracer_provider: For the job and send spans; ``None``: the global one.
        meter_provider: For the job metrics; ``None``: the global one.
    """

    def __init__(
        self,
        *,
        record: bool | None = None,
        database_url: str | None = None,
        flush_on_job_end: bool | None = None,
        shutdown_flush_timeout: float | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.options = Options(
            system=SYSTEM,
            record=record,
            database_url=database_url,
            flush_on_job_end=flush_on_job_end,
            shutdown_flush_timeout=shutdown_flush_timeout,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        self._state = _ThreadState()
        self._sends = SendTracker(
            EnqueueIncompleteError, "the broker raised before confirming the enqueue"
        )

    @classmethod
    def from_options(cls, options: Options) -> JobtraceMiddleware:
        """The middleware of an instrumentor's options."""
        middleware = cls()
        middleware.options = options
        return middleware

    # -- producer side --------------------------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """Start the ``send`` span and write the metadata, or carry retry keys into a retried copy."""
        try:
            self._before_enqueue(broker, message, delay)
        except Exception:
            logger.warning("jobtrace: tracing the enqueue of %s failed", message, exc_info=True)

    def _before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
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
        self._sends.fail_unfinished()
        metadata: dict[str, str] = {}
        enqueue = self.options.send(
            message.actor_name,
            queue=q_name(message.queue_name),
            job_id=message.message_id,
            args=call_args(message.args, message.kwargs),
            delay=delay / 1000 if delay else None,
            carrier=metadata,
            server=_broker_server(broker),
        )
        enqueue.start()
        # A new dict: message copies share the options' values, never mutate one in place.
        options[OPTIONS_KEY] = metadata
        self._sends.track(message.message_id, enqueue)

    def after_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        """End the ``send`` span: the broker accepted the message."""
        self._sends.complete(message.message_id)

    # -- consumer side --------------------------------------------------------------------------

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Start the job's span and make it the current job for the actor."""
        try:
            run = self._start_run(broker, message)
        except Exception:
            logger.warning("jobtrace: tracing message %s failed", message, exc_info=True)
            return
        self._state.processing[message.message_id] = _Processing(run)

    def _start_run(self, broker: Broker, message: MessageProxy) -> JobRun:
        options = message.options
        retries = options.get("retries", 0)
        attempt = retries + 1 if isinstance(retries, int) and retries >= 0 else None
        run = self.options.job_run(
            options.get(OPTIONS_KEY),
            name=message.actor_name,
            job_id=message.message_id,
            queue=q_name(message.queue_name),
            attempt=attempt,
            args=call_args(message.args, message.kwargs),
            server=_broker_server(broker),
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
            run = processing.run if processing is not None else self._start_run(broker, message)
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
        self.options.start_recording()

    def after_consumer_thread_boot(self, broker: Broker, thread: threading.Thread) -> None:
        """Mark consumer threads: what they enqueue are delayed messages coming due, not sends."""
        self._state.consumer_thread = True

    def after_worker_shutdown(self, broker: Broker, worker: dramatiq.Worker) -> None:
        """Flush spans, metrics and records: CLI worker processes exit without ``atexit``."""
        self.options.flush()


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


def _broker_server(broker: Broker) -> Server | None:
    """The server of a Redis or RabbitMQ broker (the first of a failover list); else ``None``."""
    try:
        client = getattr(broker, "client", None)
        if client is not None:
            return redis_server(client)
        parameters = getattr(broker, "parameters", None)
        if isinstance(parameters, list):
            parameters = parameters[0] if parameters else None
        host, port = getattr(parameters, "host", None), getattr(parameters, "port", None)
        if not isinstance(host, str) or not host:
            return None
        return host, port if isinstance(port, int) and 0 < port < 65536 else None
    except Exception:
        return None


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


class DramatiqInstrumentor(QueueInstrumentor):
    """Adds :class:`JobtraceMiddleware` to Dramatiq brokers: the global one and every one created later.

    A singleton, like every ``BaseInstrumentor``: instrumenting twice is a no-op with a warning, and
    ``uninstrument()`` undoes it. Its own keyword: ``broker``, a broker to instrument as well.
    """

    system = SYSTEM
    dependencies = ("dramatiq >= 1.15, < 3.0",)
    library_options = frozenset({"broker"})
    _middleware: JobtraceMiddleware | None = None
    _brokers: weakref.WeakSet[Broker]

    def _hook(self, options: Options) -> None:
        self._middleware = JobtraceMiddleware.from_options(options)
        self._brokers = weakref.WeakSet()
        self.patch(Broker, "__init__", self._wrap_broker_init)
        for broker in (dramatiq.broker.global_broker, options.extra.get("broker")):
            if broker is not None:
                self.instrument_broker(broker)

    def _unhook(self) -> None:
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

    def _wrap_broker_init(self, original: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(original)
        def __init__(broker: Broker, *args: Any, **kwargs: Any) -> None:
            original(broker, *args, **kwargs)
            try:
                self.instrument_broker(broker)
            except Exception:
                logger.warning("jobtrace: instrumenting broker %r failed", broker, exc_info=True)

        return __init__
