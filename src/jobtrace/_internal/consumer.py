"""The job side: one CONSUMER span per job run, joined to its producer through the job's metadata."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from contextvars import Token
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode

from jobtrace import records
from jobtrace._internal import current, semconv
from jobtrace._internal.config import Relationship, get_settings
from jobtrace._internal.metadata import (
    Incoming,
    is_valid_job_id,
    read_run_metadata,
    repair_job_id,
    retry_metadata,
)
from jobtrace._internal.producer import new_job_id
from jobtrace._internal.redaction import args_text, call_args, safe_str
from jobtrace._internal.telemetry import TallyKey, flush, in_forked_child, instruments, tracer
from jobtrace.records import JobState

logger = logging.getLogger("jobtrace")

P = ParamSpec("P")
R = TypeVar("R")

RetryDecision = bool | Callable[[BaseException], bool]
_HOST = socket.gethostname()
_MAX_ERROR_MESSAGE = 2000
# Looked up once: an enum member read off its class costs a descriptor call every time.
_RUNNING = JobState.RUNNING
_SUCCEEDED = JobState.SUCCEEDED
_DISCARDED = JobState.DISCARDED
_MARKED_OUTCOMES = frozenset({JobState.DISCARDED, JobState.CANCELLED, JobState.SKIPPED})
"""Outcomes a run's span gets a ``jobtrace.outcome`` event for."""


class JobRun:
    """One run (one attempt) of one job, as a span, a record and the job the fields API writes to.

    Use it as ``with`` or ``async with`` around the job's body; an exception is recorded and
    re-raised unchanged. Frameworks whose hooks split the run in two call :meth:`start` and
    :meth:`finish` instead (in the same thread and context).

    ``span`` adopts a span another instrumentation already started for this run (the
    ``opentelemetry-instrumentation-celery`` one, say) instead of starting a second one: jobtrace
    sets its attributes, links and outcome on it and records the lineage, and leaves recording
    the exception and ending the span to its owner. ``tracer_provider`` and ``meter_provider``
    (an instrumentor's) replace the global providers for this run's span, metrics and flush.
    ``server_address`` and ``server_port`` name the broker the job came from, when known.
    """

    def __init__(
        self,
        metadata: object,
        *,
        name: str,
        job_id: str | None = None,
        queue: str | None = None,
        attempt: int | None = None,
        system: str = "jobtrace",
        args: Any = None,
        will_retry: RetryDecision = False,
        flush: bool | None = None,
        span: Span | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
    ) -> None:
        self.metadata = metadata
        self.name = name
        self.job_id = job_id
        self.queue = queue
        self.attempt = attempt
        self.system = system
        self.args = args
        self.will_retry = will_retry
        self.flush = flush
        self.adopted_span = span
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.server = semconv.server_of(server_address, server_port)
        self.state: JobState | None = None
        self.info: records.JobInfo | None = None
        self._job: current.ActiveJob | None = None
        self._context_token: object | None = None
        self._context: otel_context.Context | None = None
        self._job_token: Token[current.ActiveJob | None] | None = None
        self._started_at = 0.0
        self._shape = _NO_SHAPE

    # -- starting -------------------------------------------------------------------------------

    def start(self) -> JobRun:
        """Start the span, attach its context and make this the current job; never raises."""
        if self._job is not None:
            return self
        try:
            self._start()
        except Exception:
            logger.warning("jobtrace: starting the span of job %s failed", self.name, exc_info=True)
        return self

    def _start(self) -> None:
        settings = get_settings()
        incoming = read_run_metadata(self.metadata, self.name, self.job_id)
        job_id = self.job_id
        if job_id:
            if not is_valid_job_id(job_id):  # a queue's own id, under the metadata's rule
                job_id = repair_job_id(job_id)
        else:  # the metadata's was read by that rule; a new one keeps it
            job_id = incoming.job_id or new_job_id()
        attempt = self.attempt or incoming.attempt or 1
        relationship: Relationship = incoming.relationship or "child"
        parent_context, links = _parent_and_links(incoming, relationship)
        root_job_id, depth = records.lineage(
            job_id, incoming.parent_job_id, incoming.root_job_id, incoming.depth
        )
        now = time.time()
        self._shape = shape = _shape_of(self.system, self.name, self.queue, self.server)
        attributes: dict[str, Any] = {
            **shape.span_attributes,
            semconv.MESSAGING_MESSAGE_ID: job_id,
            semconv.JOB_ID: job_id,
            semconv.JOB_ROOT_ID: root_job_id,
            semconv.JOB_DEPTH: depth,
            semconv.JOB_ATTEMPT: attempt,
            semconv.RELATIONSHIP: relationship,
        }
        if incoming.parent_job_id is not None:
            attributes[semconv.JOB_PARENT_ID] = incoming.parent_job_id
        queue_wait = None
        if incoming.enqueued_at is not None and attempt == 1:
            # From when the job was due: a job delayed an hour has not waited that hour.
            due = incoming.enqueued_at
            if incoming.due_at is not None and incoming.due_at > due:
                due = incoming.due_at
            queue_wait = max(0.0, now - due)
            attributes[semconv.JOB_QUEUE_WAIT] = queue_wait
        recorded_args = args_text(settings, self.args)
        if recorded_args is not None:
            attributes[semconv.JOB_ARGS] = recorded_args
        span = self.adopted_span
        if span is None:
            span = tracer(self.tracer_provider).start_span(
                shape.span_names[settings.span_names == "conventions"],
                context=parent_context,
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=links,
            )
        else:
            span.set_attributes(attributes)
            for link in links:
                span.add_link(link.context, link.attributes)
        span_context = span.get_span_context()
        self.info = records.job_info(
            job_id,
            self.name,
            root_job_id,
            depth,
            self.queue,
            attempt,
            incoming.parent_job_id,
            self.system,
            f"{span_context.trace_id:032x}",
            f"{span_context.span_id:016x}",
        )
        self._job = current.ActiveJob(info=self.info, span=span, started_at=now)
        self._started_at = now
        self._context = job_context = trace.set_span_in_context(span, parent_context)
        self._context_token = otel_context.attach(job_context)
        self._job_token = current._current.set(self._job)
        self.state = _RUNNING
        metrics = instruments(self.meter_provider)
        metrics.consumed.add(shape.consumed_key)
        if queue_wait is not None:
            # The job's context given, not looked up: it is the current one (for exemplars).
            metrics.queue_wait.record(queue_wait, shape.job_attributes, job_context)
        if records.has_sinks():
            records.emit(
                records.started(
                    self.info,
                    at=now,
                    args=recorded_args,
                    enqueued_at=incoming.enqueued_at,
                    host=_HOST,
                    pid=_pid_now,
                )
            )

    # -- finishing ------------------------------------------------------------------------------

    def finish(
        self,
        error: BaseException | None = None,
        *,
        will_retry: bool | None = None,
        state: JobState | None = None,
        reason: str | None = None,
    ) -> None:
        """End the run: outcome, span, metrics, record; detach the context. Never raises.

        Args:
            error: The exception the job raised, if any.
            will_retry: Whether the queue will run the job again; by default decided by the
                ``will_retry`` given at construction.
            state: Force an outcome (a framework that knows better, e.g. a cancelled job).
            reason: Why, for a forced outcome.
        """
        job, self._job = self._job, None
        if job is None:
            return
        try:
            self._finish(job, error, will_retry, state, reason)
        except Exception:
            logger.warning("jobtrace: ending the span of job %s failed", self.name, exc_info=True)
        finally:
            self._detach()

    def _finish(
        self,
        job: current.ActiveJob,
        error: BaseException | None,
        will_retry: bool | None,
        state: JobState | None,
        reason: str | None,
    ) -> None:
        settings = get_settings()
        span = job.span
        info = job.info
        if will_retry is None and error is not None:
            will_retry = self._decide_retry(error)
        outcome = state or _outcome(job, error, bool(will_retry))
        reason = reason or job.reason
        self.state = outcome
        attributes: dict[str, Any] = {semconv.JOB_OUTCOME: outcome._value_}
        if reason:
            attributes[semconv.JOB_OUTCOME_REASON] = reason
        for kind, amount in job.items.items():
            attributes[semconv.ITEMS_PREFIX + kind] = amount
        if job.progress is not None:
            attributes[semconv.PROGRESS] = job.progress
        error_type = None
        message = None
        if error is not None:
            error_type = semconv.error_type(error)
            message = safe_str(error, _MAX_ERROR_MESSAGE)  # a raising __str__ costs the text only
            attributes[semconv.ERROR_TYPE] = error_type
            if self.adopted_span is None:
                current.record_exception(span, error, escaped=True)
            if outcome is JobState.RETRYING:
                attributes[semconv.JOB_WILL_RETRY] = True
                span.add_event(semconv.EVENT_RETRY, {"jobtrace.job.attempt": info.attempt})
                if settings.error_on_retry:
                    span.set_status(
                        Status(StatusCode.ERROR, semconv.status_description(message, error_type))
                    )
            elif outcome is not JobState.CANCELLED:
                attributes[semconv.JOB_WILL_RETRY] = False
                span.add_event(semconv.EVENT_FAILED, {"jobtrace.job.attempt": info.attempt})
                span.set_status(
                    Status(StatusCode.ERROR, semconv.status_description(message, error_type))
                )
        elif outcome is _DISCARDED:
            error_type = reason or "discarded"
            attributes[semconv.ERROR_TYPE] = error_type
            # The reason is error.type already (and jobtrace.job.outcome_reason): no description.
            span.set_status(Status(StatusCode.ERROR))
        if outcome in _MARKED_OUTCOMES:
            span.add_event(
                semconv.EVENT_OUTCOME, {"outcome": outcome.value, "reason": reason or ""}
            )
        span.set_attributes(attributes)
        if self.adopted_span is None:
            span.end()
        finished = time.time()
        process_attributes, outcome_key = self._shape.of_outcome(outcome)
        metrics = instruments(self.meter_provider)
        if error_type is not None:
            process_attributes = {**process_attributes, semconv.ERROR_TYPE: error_type}
        metrics.process_duration.record(
            finished - self._started_at, process_attributes, self._context
        )
        metrics.outcomes.add(outcome_key)
        if records.has_sinks():
            records.emit(
                records.finished(
                    info,
                    outcome,
                    at=finished,
                    items=dict(job.items),
                    progress=job.progress,
                    error_type=error_type,
                    error_message=message,
                    reason=reason,
                    host=_HOST,
                    pid=_pid_now,
                )
            )
        flush_now = self.flush if self.flush is not None else settings.flush_on_job_end
        if flush_now or (flush_now is None and in_forked_child()):
            flush(settings.flush_timeout, (self.tracer_provider, self.meter_provider))

    def _decide_retry(self, error: BaseException) -> bool:
        decision = self.will_retry
        if callable(decision):
            try:
                return bool(decision(error))
            except Exception:
                logger.warning("jobtrace: will_retry of job %s raised", self.name, exc_info=True)
                return False
        return bool(decision)

    def _detach(self) -> None:
        job_token, self._job_token = self._job_token, None
        context_token, self._context_token = self._context_token, None
        self._context = None
        if job_token is not None:
            try:
                current._current.reset(job_token)
            except ValueError:  # finished in another context than it started in
                current._current.set(None)
        if context_token is not None:
            try:
                otel_context.detach(context_token)  # type: ignore[arg-type]
            except Exception:
                logger.debug("jobtrace: detaching the job context failed", exc_info=True)

    def retry_metadata(self) -> dict[str, str]:
        """Keys to add to the job's metadata for its next attempt, so that attempt links back."""
        if self.info is None or self.info.trace_id is None or self.info.span_id is None:
            return {}
        span_context = trace.SpanContext(
            int(self.info.trace_id, 16), int(self.info.span_id, 16), is_remote=True
        )
        return retry_metadata(span_context, self.info.attempt + 1)

    # -- context managers -----------------------------------------------------------------------

    def __enter__(self) -> JobRun:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exc)

    async def __aenter__(self) -> JobRun:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exc)


class _Shape:
    """What every run of one job name, queue, system and broker has in common, made once.

    The span's constant attributes and both span names, the metric attribute sets and the
    counters' keys: building them per job was a fifth of jobtrace's own cost per job. The dicts
    are shared by every run and never changed (the SDK copies what it is given).
    """

    __slots__ = (
        "_messaging",
        "_outcomes",
        "consumed_key",
        "job_attributes",
        "span_attributes",
        "span_names",
    )

    def __init__(
        self, system: str, name: str, queue: str | None, server: semconv.Server | None
    ) -> None:
        attributes: dict[str, Any] = {
            semconv.MESSAGING_SYSTEM: system,
            semconv.MESSAGING_OPERATION_TYPE: semconv.OPERATION_PROCESS,
            semconv.MESSAGING_OPERATION_NAME: semconv.OPERATION_PROCESS,
            semconv.JOB_NAME: name,
        }
        # The conventions' attributes of the job's metrics: its span has them too.
        messaging: dict[str, str | int] = {
            semconv.MESSAGING_SYSTEM: system,
            semconv.MESSAGING_OPERATION_NAME: semconv.OPERATION_PROCESS,
        }
        job: dict[str, str] = {semconv.JOB_NAME: name}
        if queue is not None:
            messaging[semconv.MESSAGING_DESTINATION_NAME] = queue
            attributes[semconv.MESSAGING_DESTINATION_NAME] = queue
            job[semconv.MESSAGING_DESTINATION_NAME] = queue
        if server is not None:
            found = semconv.server_attributes(server)
            messaging.update(found)
            attributes.update(found)
        self.span_attributes = attributes
        self.span_names = (
            semconv.span_name(semconv.OPERATION_PROCESS, name, queue, "job"),
            semconv.span_name(semconv.OPERATION_PROCESS, name, queue, "conventions"),
        )
        self.consumed_key: TallyKey = tuple(messaging.items())
        self.job_attributes = job
        self._messaging = messaging
        self._outcomes: dict[str, tuple[dict[str, str | int], TallyKey]] = {}

    def of_outcome(self, outcome: JobState) -> tuple[dict[str, str | int], TallyKey]:
        """``messaging.process.duration``'s attributes (no ``error.type``) and the outcome's key."""
        value = outcome._value_
        found = self._outcomes.get(value)
        if found is None:
            by_outcome = {**self.job_attributes, semconv.JOB_OUTCOME: value}
            found = ({**self._messaging, **by_outcome}, tuple(by_outcome.items()))
            self._outcomes[value] = found
        return found


_NO_SHAPE = _Shape("jobtrace", "", None, None)
_shapes: dict[tuple[str, str, str | None, semconv.Server | None], _Shape] = {}
_MAX_SHAPES = 4096  # job names are few; this bounds a stream of made-up ones


def _shape_of(system: str, name: str, queue: str | None, server: semconv.Server | None) -> _Shape:
    key = (system, name, queue, server)
    shape = _shapes.get(key)
    if shape is None:
        if len(_shapes) >= _MAX_SHAPES:
            _shapes.clear()
        shape = _shapes[key] = _Shape(system, name, queue, server)
    return shape


_pid_now = os.getpid()
"""This process's id, read once per process (and after a fork), not by a system call per record."""


def _note_fork() -> None:
    global _pid_now
    _pid_now = os.getpid()


os.register_at_fork(after_in_child=_note_fork)


def _parent_and_links(
    incoming: Incoming, relationship: Relationship
) -> tuple[otel_context.Context | None, list[Link]]:
    """The context the job span starts under, and its links, for the producer's relationship."""
    links: list[Link] = []
    if incoming.previous_span is not None:
        links.append(Link(incoming.previous_span, {semconv.LINK_TYPE: "previous_attempt"}))
    received = incoming.context
    if relationship == "none":
        return otel_context.Context(), links
    if received is None:
        return None, links  # no trace context came: start under whatever is current
    if relationship == "link":
        producer = trace.get_current_span(received).get_span_context()
        if producer.is_valid:
            links.insert(0, Link(producer, {semconv.LINK_TYPE: "producer"}))
        # A new trace that keeps the baggage.
        return trace.set_span_in_context(INVALID_SPAN, received), links
    return received, links


def _outcome(job: current.ActiveJob, error: BaseException | None, will_retry: bool) -> JobState:
    if job.outcome is not None:
        return job.outcome
    if error is None:
        return _SUCCEEDED
    if isinstance(error, asyncio.CancelledError):
        return JobState.CANCELLED
    return JobState.RETRYING if will_retry else JobState.FAILED


def trace_job(
    metadata: object,
    *,
    name: str,
    job_id: str | None = None,
    queue: str | None = None,
    attempt: int | None = None,
    system: str = "jobtrace",
    args: Any = None,
    will_retry: RetryDecision = False,
    flush: bool | None = None,
) -> JobRun:
    """Trace one run of a job: use the result as ``with`` or ``async with`` around the job's body.

    Args:
        metadata: The job's metadata as it came off the queue (anything: malformed is tolerated).
        name: The job's name.
        job_id: The queue's id for the job; else the metadata's, else a new one.
        queue: The queue the job came from.
        attempt: Which attempt this is, from 1; else the metadata's, else 1.
        system: The queue system's name, for ``messaging.system``.
        args: The job's arguments, recorded redacted and truncated.
        will_retry: Whether a failure will be retried, or a function of the exception deciding it.
        flush: Flush telemetry when the job ends; by default only in forked processes.
    """
    return JobRun(
        metadata,
        name=name,
        job_id=job_id,
        queue=queue,
        attempt=attempt,
        system=system,
        args=args,
        will_retry=will_retry,
        flush=flush,
    )


@overload
def wrap_job(
    func: Callable[P, Awaitable[R]], *, name: str | None = None, queue: str | None = None
) -> Callable[Concatenate[object, P], Awaitable[R]]: ...


@overload
def wrap_job(
    func: Callable[P, R], *, name: str | None = None, queue: str | None = None
) -> Callable[Concatenate[object, P], R]: ...


def wrap_job(
    func: Callable[P, Any], *, name: str | None = None, queue: str | None = None
) -> Callable[Concatenate[object, P], Any]:
    """Wrap a job function, sync or async, so each call runs as a traced job.

    The wrapped function takes the job's metadata first, then the function's own arguments, which
    are recorded (redacted) on the span.
    """
    job_name = name or str(getattr(func, "__qualname__", repr(func)))

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def run_async(metadata: object, /, *args: P.args, **kwargs: P.kwargs) -> Any:
            async with trace_job(
                metadata, name=job_name, queue=queue, args=call_args(args, kwargs)
            ):
                return await func(*args, **kwargs)

        return run_async

    @functools.wraps(func)
    def run(metadata: object, /, *args: P.args, **kwargs: P.kwargs) -> Any:
        with trace_job(metadata, name=job_name, queue=queue, args=call_args(args, kwargs)):
            return func(*args, **kwargs)

    return run
