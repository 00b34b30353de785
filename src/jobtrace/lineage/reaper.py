"""The reaper: running jobs whose heartbeats stopped are ``crashed``; jobs queued too long, ``stalled``.

A worker killed outright (SIGKILL, OOM, a segfault) runs no handler: its jobs stay ``running``
forever unless someone notices that their heartbeats stopped. :func:`reap` is that someone. It is
idempotent and safe to run from cron on any machine, several at once: every update re-checks its
condition, so a job that finished or heartbeated in the meantime is left alone. A heartbeat or an
outcome that arrives later wins over ``crashed`` (see :mod:`jobtrace.lineage._merge`).

Times are compared with this machine's clock; keep worker clocks in sync (NTP) and the timeout
well above the heartbeat interval (10 s by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import ColumnElement, Table, and_, func, not_, or_, select, true, update
from sqlalchemy.engine import Connection, Engine

from jobtrace.lineage.models import Attempt, Base, Job
from jobtrace.lineage.store import create_store_engine
from jobtrace.records import JobState

HEARTBEAT_TIMEOUT = 60.0
STALLED_AFTER = 3600.0
_CHUNK = 500

JOBS: Table = Base.metadata.tables[Job.__tablename__]
ATTEMPTS: Table = Base.metadata.tables[Attempt.__tablename__]


@dataclass(frozen=True)
class ReapResult:
    """The job ids this call declared crashed and stalled."""

    crashed: tuple[str, ...]
    stalled: tuple[str, ...]


def reap(
    url_or_engine: str | Engine | None = None,
    *,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    stalled_after: float = STALLED_AFTER,
    heartbeat_timeout_by_name: Mapping[str, float] | None = None,
    stalled_after_by_name: Mapping[str, float] | None = None,
    now: datetime | None = None,
) -> ReapResult:
    """Declare silent running jobs crashed and long-queued jobs stalled.

    Args:
        url_or_engine: The store (``None``: ``JOBTRACE_DATABASE_URL``, else the local default).
        heartbeat_timeout: Seconds without a heartbeat after which a running job is crashed.
        stalled_after: Seconds in the queue after which a job that never started is stalled,
            counted from when it was due for a job scheduled for later.
        heartbeat_timeout_by_name: Per job name overrides of ``heartbeat_timeout``.
        stalled_after_by_name: Per job name overrides of ``stalled_after``.
        now: The reaper's "now" (tests); else this machine's clock.
    """
    engine = url_or_engine if isinstance(url_or_engine, Engine) else None
    own_engine = engine is None
    now = now or datetime.now(timezone.utc)
    with suppress_instrumentation():
        if engine is None:
            engine = create_store_engine(url_or_engine if isinstance(url_or_engine, str) else None)
        try:
            with engine.begin() as conn:
                crashed = _mark(
                    conn,
                    since=func.coalesce(JOBS.c.heartbeat_at, JOBS.c.started_at, JOBS.c.updated_at),
                    state=JobState.RUNNING,
                    new_state=JobState.CRASHED,
                    default=heartbeat_timeout,
                    by_name=heartbeat_timeout_by_name or {},
                    now=now,
                    reason="no heartbeat for {:g}s",
                )
                stalled = _mark(
                    conn,
                    since=func.coalesce(JOBS.c.due_at, JOBS.c.enqueued_at, JOBS.c.updated_at),
                    state=JobState.QUEUED,
                    new_state=JobState.STALLED,
                    default=stalled_after,
                    by_name=stalled_after_by_name or {},
                    now=now,
                    reason="queued for more than {:g}s",
                )
        finally:
            if own_engine:
                engine.dispose()
    return ReapResult(crashed=tuple(crashed), stalled=tuple(stalled))


def _mark(
    conn: Connection,
    *,
    since: ColumnElement[datetime],
    state: JobState,
    new_state: JobState,
    default: float,
    by_name: Mapping[str, float],
    now: datetime,
    reason: str,
) -> list[str]:
    """Move jobs in ``state`` whose ``since`` is older than their threshold to ``new_state``."""
    groups: list[tuple[float, ColumnElement[bool]]] = [
        (seconds, JOBS.c.name == name) for name, seconds in by_name.items()
    ]
    groups.append((default, not_(JOBS.c.name.in_(list(by_name))) if by_name else true()))
    marked: list[str] = []
    for seconds, which in groups:
        cutoff = now - timedelta(seconds=seconds)
        condition = and_(JOBS.c.state == state.value, which, since < cutoff)
        found = conn.execute(select(JOBS.c.job_id, JOBS.c.attempt).where(condition)).all()
        for start in range(0, len(found), _CHUNK):
            chunk = found[start : start + _CHUNK]
            ids = [job_id for job_id, _ in chunk]
            _update(conn, condition, ids, chunk, state, new_state, reason.format(seconds), now)
            marked.extend(ids)
    return marked


def _update(
    conn: Connection,
    condition: ColumnElement[bool],
    ids: list[str],
    keys: Sequence[tuple[str, int]],
    state: JobState,
    new_state: JobState,
    reason: str,
    now: datetime,
) -> None:
    values = {"state": new_state.value, "reason": reason, "updated_at": now}
    conn.execute(update(JOBS).where(condition, JOBS.c.job_id.in_(ids)).values(**values))
    attempt_keys = or_(
        *(and_(ATTEMPTS.c.job_id == job_id, ATTEMPTS.c.attempt == n) for job_id, n in keys)
    )
    conn.execute(
        update(ATTEMPTS)
        .where(attempt_keys, ATTEMPTS.c.state == state.value)
        .values(state=new_state.value, reason=reason)
    )
