"""The job running in the current context, and the fields API that writes onto it.

A :class:`ActiveJob` lives in a :class:`~contextvars.ContextVar`, so threads and asyncio tasks each
see their own job. Every public function here is a silent no-op outside a job, so library code can
call it unconditionally.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

from jobtrace import records
from jobtrace._internal import semconv, telemetry
from jobtrace._internal.config import get_settings
from jobtrace._internal.redaction import safe_str
from jobtrace.records import JobInfo, JobState

ITEM_KINDS = ("total", "processed", "failed", "skipped")
_MAX_MESSAGE = 2000


@dataclass(slots=True)
class ActiveJob:
    """Mutable state of one running job; shared by the threads that copied its context."""

    info: JobInfo
    span: Span
    started_at: float
    items: dict[str, int] = field(default_factory=dict)
    progress: float | None = None
    outcome: JobState | None = None
    reason: str | None = None
    enqueued_children: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


_current: ContextVar[ActiveJob | None] = ContextVar("jobtrace_current_job", default=None)


def active_job() -> ActiveJob | None:
    """The running job's state, or ``None`` outside a job."""
    return _current.get()


def current_job() -> JobInfo | None:
    """The running job's identity, or ``None`` outside a job."""
    job = _current.get()
    return None if job is None else job.info


def _limit(value: AttributeValue) -> AttributeValue:
    limit = get_settings().max_attribute_length
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value


def set_attribute(key: str, value: AttributeValue) -> None:
    """Set a custom attribute on the current job's span (``user.email``, ``crm.status``, ...)."""
    job = _current.get()
    if job is not None:
        job.span.set_attribute(key, _limit(value))


def set_attributes(attributes: Mapping[str, AttributeValue]) -> None:
    """Set several custom attributes on the current job's span."""
    job = _current.get()
    if job is not None:
        job.span.set_attributes({key: _limit(value) for key, value in attributes.items()})


def count(
    *,
    processed: int = 0,
    failed: int = 0,
    skipped: int = 0,
    total: int | None = None,
) -> None:
    """Add to the current job's item counts; ``total`` sets the expected number of items.

    The counts land on the span as ``jobtrace.items.*`` and in the lineage store when the job ends.
    """
    job = _current.get()
    if job is None:
        return
    with job.lock:
        items = job.items
        for kind, amount in (("processed", processed), ("failed", failed), ("skipped", skipped)):
            if amount:
                items[kind] = items.get(kind, 0) + amount
        if total is not None:
            items["total"] = total


def progress(done: float, total: float | None = None) -> None:
    """Report progress as ``done`` of ``total`` (or a fraction in [0, 1] when ``total`` is omitted).

    Adds a progress event to the span and tells the lineage store, so a job that keeps reporting
    progress is never taken for stuck.
    """
    job = _current.get()
    if job is None:
        return
    fraction = done / total if total else done
    fraction = min(max(float(fraction), 0.0), 1.0)
    job.progress = fraction
    event: dict[str, AttributeValue] = {"done": done}
    if total is not None:
        event["total"] = total
    job.span.add_event(semconv.EVENT_PROGRESS, event)
    if records.has_sinks():
        records.emit(records.heartbeat(job.info, at=time.time(), progress=fraction))


def add_event(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> None:
    """Add a timestamped event to the current job's span."""
    job = _current.get()
    if job is not None:
        job.span.add_event(name, attributes)


def record_error(
    error: BaseException, attributes: Mapping[str, AttributeValue] | None = None
) -> None:
    """Record an error the job handled and went on from (an item that failed, say).

    The span keeps its status: only the job's own failure marks it as an error.
    """
    job = _current.get()
    if job is not None:
        record_exception(job.span, error, attributes)


def record_exception(
    span: Span,
    error: BaseException,
    attributes: Mapping[str, AttributeValue] | None = None,
    *,
    escaped: bool = False,
) -> None:
    """``span.record_exception`` that survives an exception whose ``__str__`` raises.

    The SDK calls ``str(error)`` itself; such an exception still leaves an ``exception`` event
    (its type and a marker for its message) and never escapes into the job.
    """
    try:
        span.record_exception(error, attributes, escaped=escaped)
    except Exception:
        event: dict[str, AttributeValue] = dict(attributes or {})
        event["exception.type"] = semconv.error_type(error)
        event["exception.message"] = safe_str(error, _MAX_MESSAGE)
        event["exception.escaped"] = escaped
        span.add_event("exception", event)


def _set_outcome(outcome: JobState, reason: str | None) -> None:
    job = _current.get()
    if job is None:
        return
    job.outcome = outcome
    job.reason = reason


def skip(reason: str | None = None) -> None:
    """Mark the current job as skipped: it ran and chose to do nothing."""
    _set_outcome(JobState.SKIPPED, reason)


def cancel(reason: str | None = None) -> None:
    """Mark the current job as cancelled."""
    _set_outcome(JobState.CANCELLED, reason)


def discard(reason: str) -> None:
    """Mark the current job as discarded: it will not be retried, for ``reason``."""
    _set_outcome(JobState.DISCARDED, reason)


@contextmanager
def section(name: str, attributes: Mapping[str, AttributeValue] | None = None) -> Iterator[Span]:
    """A span for one part of a job (a section, one user, one page), nested under the job's span.

    An exception is recorded on the section's span and re-raised. Works outside a job too, as a
    plain span under whatever is current.
    """
    with telemetry.tracer().start_as_current_span(name, attributes=attributes) as span:
        yield span
