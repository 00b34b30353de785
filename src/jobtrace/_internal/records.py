"""Job lifecycle records: what the tracing side tells the lineage side.

The wrapper and the producer emit one :class:`JobRecord` at each step of a job's life. Sinks (the
lineage recorder, a test) subscribe with :func:`add_sink`. Emitting never raises and never blocks on
I/O: a sink must hand the record to its own queue and return.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Literal, NamedTuple

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

RecordKind = Literal["enqueued", "started", "heartbeat", "finished"]


class JobRecord(NamedTuple):
    """One step of one attempt of one job, as the lineage store needs it.

    Times are Unix epoch seconds. ``None`` means "not known at this step": a sink merges records of
    the same ``(job_id, attempt)`` and keeps what earlier records said. A named tuple: immutable,
    cheap to build three times per job on the job's own thread, and picklable (a sink may hand
    records to another process).
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
    depth: int = 0
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
