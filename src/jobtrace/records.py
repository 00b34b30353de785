"""Job lifecycle records: what the tracing side tells the lineage side, and the rules they follow.

This is the write side's declared interface. A job's identity and place in the pipeline is one
:class:`JobInfo`, derived once by :func:`lineage` from what its metadata said; the builders
(:func:`enqueued`, :func:`started`, :func:`heartbeat`, :func:`finished`, :func:`unrun`) turn it into
the :class:`JobRecord` of each step, so no caller assembles a record by hand. Sinks (the lineage
recorder, a test) subscribe with :func:`add_sink`. Emitting never raises and never blocks on I/O:
a sink must hand the record to its own queue and return. See ``docs/lineage.md``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, NamedTuple

logger = logging.getLogger("jobtrace")


class JobState(str, Enum):
    """Where a job run stands. Terminal states never change back to running."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    CRASHED = "crashed"
    STALLED = "stalled"
    #: Known only by name: a parent or root no record of reached the store, or a job whose
    #: records were lost in a store outage (the reaper's "lost track", never a crash).
    UNKNOWN = "unknown"

    @property
    def is_done(self) -> bool:
        """True for a state after which the job will not run again (crashed counts as done)."""
        return self in DONE_STATES

    def __str__(self) -> str:
        return self.value


DONE_STATES = frozenset(
    {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.DISCARDED,
        JobState.CANCELLED,
        JobState.SKIPPED,
        JobState.CRASHED,
    }
)
FAILED_STATES = frozenset({JobState.FAILED, JobState.DISCARDED, JobState.CRASHED})
# The builders' states, looked up once (an enum member read off its class is a descriptor call).
_QUEUED = JobState.QUEUED
_RUNNING = JobState.RUNNING

RecordKind = Literal["enqueued", "started", "heartbeat", "finished", "lost"]


class JobRecord(NamedTuple):
    """One step of one attempt of one job, as the lineage store needs it.

    Times are Unix epoch seconds. ``None`` means "not known at this step": a sink merges records of
    the same ``(job_id, attempt)`` and keeps what other records said, and never invents a value
    (a record without ``root_job_id`` or ``depth`` leaves them to the records that carry them).
    A named tuple: immutable, cheap to build three times per job on the job's own thread, and
    picklable (a sink may hand records to another process). Build one with the functions below.
    """

    kind: RecordKind
    job_id: str
    attempt: int
    name: str
    state: JobState
    queue: str | None = None
    system: str | None = None
    parent_job_id: str | None = None
    root_job_id: str | None = None
    depth: int | None = None
    trace_id: str | None = None
    span_id: str | None = None
    args: str | None = None
    items: Mapping[str, int] | None = None  # item counts, on a finished record
    progress: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    reason: str | None = None
    host: str | None = None
    pid: int | None = None
    enqueued_at: float | None = None
    due_at: float | None = None  # a delayed job may not run before this
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None


def lineage(
    job_id: str, parent_job_id: str | None, root_job_id: str | None, depth: int | None
) -> tuple[str, int]:
    """A job's ``(root_job_id, depth)`` from what its metadata said: the one rule, used everywhere.

    A job that names no parent is the root of its own run (depth 0 unless a depth came). A job that
    names a parent but no root is taken to hang under a parent that is its run's root (the root
    key is required by the metadata contract; this keeps a sloppy producer's run whole); a named
    parent without a depth puts the job at depth 1.
    """
    if parent_job_id is None:
        return root_job_id or job_id, depth if depth is not None else 0
    return root_job_id or parent_job_id, depth if depth is not None else 1


@dataclass(frozen=True, slots=True, kw_only=True)
class JobInfo:
    """Who a job is: its identity and its place in the pipeline, as every record of it says.

    ``root_job_id`` and ``depth`` come from :func:`lineage`.
    """

    job_id: str
    name: str
    root_job_id: str
    depth: int
    queue: str | None = None
    attempt: int = 1
    parent_job_id: str | None = None
    system: str = "jobtrace"
    trace_id: str | None = None
    span_id: str | None = None


_new_record = tuple.__new__
"""Builds a :class:`JobRecord` from all its fields in order, without the keyword parsing of
``JobRecord(...)``: the builders below run three times per job on the job's own thread."""

_new_object = object.__new__
_set_field = object.__setattr__


def job_info(
    job_id: str,
    name: str,
    root_job_id: str,
    depth: int,
    queue: str | None,
    attempt: int,
    parent_job_id: str | None,
    system: str,
    trace_id: str | None,
    span_id: str | None,
) -> JobInfo:
    """``JobInfo(...)`` from all its fields, positionally: the same object, in two thirds the time.

    For the job path, which makes one per run: the dataclass's own ``__init__`` parses ten keyword
    arguments and looks up ``object.__setattr__`` for each field.
    """
    info: JobInfo = _new_object(JobInfo)
    _set_field(info, "job_id", job_id)
    _set_field(info, "name", name)
    _set_field(info, "root_job_id", root_job_id)
    _set_field(info, "depth", depth)
    _set_field(info, "queue", queue)
    _set_field(info, "attempt", attempt)
    _set_field(info, "parent_job_id", parent_job_id)
    _set_field(info, "system", system)
    _set_field(info, "trace_id", trace_id)
    _set_field(info, "span_id", span_id)
    return info


def enqueued(
    info: JobInfo,
    *,
    at: float,
    args: str | None = None,
    due_at: float | None = None,
) -> JobRecord:
    """The record of a send: the job waits in its queue (scheduled when ``due_at`` is later)."""
    return enqueued_from(
        info.job_id,
        info.name,
        info.root_job_id,
        info.depth,
        info.queue,
        info.parent_job_id,
        info.system,
        info.trace_id,
        at=at,
        args=args,
        due_at=due_at,
        attempt=info.attempt,
        span_id=info.span_id,
    )


def enqueued_from(
    job_id: str,
    name: str,
    root_job_id: str,
    depth: int,
    queue: str | None,
    parent_job_id: str | None,
    system: str,
    trace_id: str | None,
    *,
    at: float,
    args: str | None = None,
    due_at: float | None = None,
    attempt: int = 1,
    span_id: str | None = None,
) -> JobRecord:
    """:func:`enqueued` from the job's fields, without a :class:`JobInfo` first.

    The same record as ``enqueued(JobInfo(...), ...)``; for the send path, which has no other use
    for the ``JobInfo`` (a first attempt, and no span id: a send has none of the run's).
    """
    return _new_record(
        JobRecord,
        (
            "enqueued",
            job_id,
            attempt,
            name,
            _QUEUED,
            queue,
            system,
            parent_job_id,
            root_job_id,
            depth,
            trace_id,
            span_id,
            args,
            None,  # items
            None,  # progress
            None,  # error_type
            None,  # error_message
            None,  # reason
            None,  # host
            None,  # pid
            at,  # enqueued_at
            due_at,
            None,  # started_at
            None,  # finished_at
            None,  # heartbeat_at
        ),
    )


def started(
    info: JobInfo,
    *,
    at: float,
    args: str | None = None,
    enqueued_at: float | None = None,
    host: str | None = None,
    pid: int | None = None,
) -> JobRecord:
    """The record of an attempt that began running here."""
    return _new_record(
        JobRecord,
        (
            "started",
            info.job_id,
            info.attempt,
            info.name,
            _RUNNING,
            info.queue,
            info.system,
            info.parent_job_id,
            info.root_job_id,
            info.depth,
            info.trace_id,
            info.span_id,
            args,
            None,  # items
            None,  # progress
            None,  # error_type
            None,  # error_message
            None,  # reason
            host,
            pid,
            enqueued_at,
            None,  # due_at
            at,  # started_at
            None,  # finished_at
            at,  # heartbeat_at
        ),
    )


def heartbeat(info: JobInfo, *, at: float, progress: float | None = None) -> JobRecord:
    """The record of a running attempt saying it is alive (and how far it got)."""
    return _record("heartbeat", info, JobState.RUNNING, progress=progress, heartbeat_at=at)


def finished(
    info: JobInfo,
    state: JobState,
    *,
    at: float,
    items: Mapping[str, int] | None = None,
    progress: float | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
    reason: str | None = None,
    host: str | None = None,
    pid: int | None = None,
) -> JobRecord:
    """The record of an attempt's outcome, as the attempt itself saw it end."""
    return _new_record(
        JobRecord,
        (
            "finished",
            info.job_id,
            info.attempt,
            info.name,
            state,
            info.queue,
            info.system,
            info.parent_job_id,
            info.root_job_id,
            info.depth,
            info.trace_id,
            info.span_id,
            None,  # args
            items,
            progress,
            error_type,
            error_message,
            reason,
            host,
            pid,
            None,  # enqueued_at
            None,  # due_at
            None,  # started_at
            at,  # finished_at
            at if host is not None else None,  # heartbeat_at
        ),
    )


def unrun(info: JobInfo, state: JobState, *, at: float, reason: str) -> JobRecord:
    """The outcome of an attempt no job span saw end: its worker died, it expired, it was dropped.

    Nothing ran in this process, so the record says nothing about a host or a heartbeat.
    """
    return _record("finished", info, state, reason=reason, finished_at=at)


def _record(kind: RecordKind, info: JobInfo, state: JobState, **step: Any) -> JobRecord:
    """The record of one step: the job's identity from ``info``, the step's own fields."""
    return JobRecord(
        kind,
        info.job_id,
        info.attempt,
        info.name,
        state,
        info.queue,
        info.system,
        info.parent_job_id,
        info.root_job_id,
        info.depth,
        info.trace_id,
        info.span_id,
        **step,
    )


RecordSink = Callable[[JobRecord], None]

_sinks: tuple[RecordSink, ...] = ()
_sinks_lock = threading.Lock()


def add_sink(sink: RecordSink) -> None:
    """Subscribe ``sink`` to every record emitted in this process."""
    global _sinks
    with _sinks_lock:
        if sink not in _sinks:
            _sinks = (*_sinks, sink)


def remove_sink(sink: RecordSink) -> None:
    """Unsubscribe ``sink``; unknown sinks are ignored."""
    global _sinks
    with _sinks_lock:
        _sinks = tuple(s for s in _sinks if s != sink)


def has_sinks() -> bool:
    """Whether anyone listens, so callers can skip building records nobody reads."""
    return bool(_sinks)


def emit(record: JobRecord) -> None:
    """Hand ``record`` to every sink; a failing sink costs a warning, never the job."""
    for sink in _sinks:
        try:
            sink(record)
        except Exception:
            logger.warning("jobtrace: record sink %r failed", sink, exc_info=True)


def flush(timeout: float) -> None:
    """Ask every sink that buffers (it has a ``flush(timeout)`` method) to write out now."""
    for sink in _sinks:
        sink_flush = getattr(sink, "flush", None)
        if sink_flush is None:
            continue
        try:
            sink_flush(timeout)
        except Exception:
            logger.warning("jobtrace: flushing record sink %r failed", sink, exc_info=True)
