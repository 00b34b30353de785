"""The reaper: running jobs whose heartbeats stopped are ``crashed``; jobs queued too long, ``stalled``.

A worker killed outright (SIGKILL, OOM, a segfault) runs no handler: its jobs stay ``running``
forever unless someone notices that their heartbeats stopped. :func:`reap` is that someone. It is
idempotent and safe to run from cron on any machine, several at once: every update re-checks its
condition, so a job that finished or heartbeated in the meantime is left alone. A heartbeat or an
outcome that arrives later wins over ``crashed`` (see :mod:`jobtrace.lineage._merge`).

A running attempt is crashed only once it missed ``missed_heartbeats`` of the heartbeats its
writer promised (each attempt records its interval) and the timeout passed, whichever is later: a
configured timeout shorter than the workers' interval cannot declare live jobs crashed. A job the
store lost track of (its writer dropped records: ``lost_at`` is set, or a gap of its host and
process covers its silence) becomes ``unknown`` with a "lost track" reason instead of crashed or
stalled: an outage of the store is not a crash of the job.

Times are compared with this machine's clock; keep worker clocks in sync (NTP).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import ColumnElement, Table, and_, func, not_, or_, select, text, true, update
from sqlalchemy.engine import Connection, Engine

from jobtrace.lineage.models import ACTIVE_QUEUE_STATES, Attempt, Base, Gap, Job
from jobtrace.lineage.store import create_store_engine
from jobtrace.records import JobState

HEARTBEAT_TIMEOUT = 60.0
MISSED_HEARTBEATS = 3
STALLED_AFTER = 3600.0
_CHUNK = 500

JOBS: Table = Base.metadata.tables[Job.__tablename__]
ATTEMPTS: Table = Base.metadata.tables[Attempt.__tablename__]
GAPS: Table = Base.metadata.tables[Gap.__tablename__]


@dataclass(frozen=True)
class ReapResult:
    """The job ids this call declared crashed and stalled, and those it lost track of."""

    crashed: tuple[str, ...]
    stalled: tuple[str, ...]
    #: Silent or long-queued jobs whose records the store lost: state ``unknown``, not a verdict.
    lost: tuple[str, ...] = ()


def reap(
    url_or_engine: str | Engine | None = None,
    *,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    stalled_after: float = STALLED_AFTER,
    heartbeat_timeout_by_name: Mapping[str, float] | None = None,
    stalled_after_by_name: Mapping[str, float] | None = None,
    missed_heartbeats: int = MISSED_HEARTBEATS,
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
        missed_heartbeats: Heartbeats an attempt must have missed (at the interval its writer
            recorded) before it is crashed, whatever the timeout.
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
                gaps = _gaps(conn)
                crashed, lost_running = _mark(
                    conn,
                    since=func.coalesce(JOBS.c.heartbeat_at, JOBS.c.started_at, JOBS.c.updated_at),
                    state=JobState.RUNNING,
                    new_state=JobState.CRASHED,
                    default=heartbeat_timeout,
                    by_name=heartbeat_timeout_by_name or {},
                    now=now,
                    reason="no heartbeat for {:g}s",
                    missed_heartbeats=missed_heartbeats,
                    gaps=gaps,
                )
                stalled, lost_queued = _mark(
                    conn,
                    since=func.coalesce(JOBS.c.due_at, JOBS.c.enqueued_at, JOBS.c.updated_at),
                    state=JobState.QUEUED,
                    new_state=JobState.STALLED,
                    default=stalled_after,
                    by_name=stalled_after_by_name or {},
                    now=now,
                    reason="queued for more than {:g}s",
                    missed_heartbeats=0,
                    gaps={},
                )
        finally:
            if own_engine:
                engine.dispose()
    return ReapResult(
        crashed=tuple(crashed), stalled=tuple(stalled), lost=(*lost_running, *lost_queued)
    )


Gaps = Mapping[tuple[str | None, int | None], Sequence[tuple[datetime, datetime]]]


def _gaps(conn: Connection) -> Gaps:
    """The outages each writer (host, process) reported, oldest first."""
    found: dict[tuple[str | None, int | None], list[tuple[datetime, datetime]]] = {}
    stmt = select(GAPS.c.host, GAPS.c.pid, GAPS.c.started_at, GAPS.c.ended_at).order_by(
        GAPS.c.started_at
    )
    for host, pid, started, ended in conn.execute(stmt):
        found.setdefault((host, pid), []).append((started, ended))
    return found


def _lost_track(
    lost_at: datetime | None, host: str | None, pid: int | None, since: datetime, gaps: Gaps
) -> bool:
    """Whether the job's silence may be the store's loss rather than the job's end."""
    if lost_at is not None:
        return True
    return any(ended >= since for _, ended in gaps.get((host, pid), ()))


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
    missed_heartbeats: int,
    gaps: Gaps,
) -> tuple[list[str], list[str]]:
    """Move jobs in ``state`` whose ``since`` is older than their threshold to ``new_state``.

    Returns the ids moved to ``new_state``, and those moved to ``unknown`` (lost track).
    """
    groups: list[tuple[float, ColumnElement[bool]]] = [
        (seconds, JOBS.c.name == name) for name, seconds in by_name.items()
    ]
    groups.append((default, not_(JOBS.c.name.in_(list(by_name))) if by_name else true()))
    marked: list[str] = []
    lost: list[str] = []
    columns = (
        JOBS.c.job_id,
        JOBS.c.attempt,
        since.label("since"),
        JOBS.c.heartbeat_interval,
        JOBS.c.lost_at,
        JOBS.c.host,
        JOBS.c.pid,
    )
    for seconds, which in groups:
        cutoff = now - timedelta(seconds=seconds)
        # The active states written out: the partial index of jobs on a queue, which leads with
        # ``state``, is the reaper's (revision 0010), and SQLite uses it only for a query that
        # says its predicate.
        condition = and_(
            JOBS.c.state == state.value, text(ACTIVE_QUEUE_STATES), which, since < cutoff
        )
        verdicts: dict[tuple[JobState, str], list[tuple[str, int]]] = {}
        for job_id, attempt, silent_since, interval, lost_at, host, pid in conn.execute(
            select(*columns).where(condition)
        ):
            silent = (now - _aware(silent_since)).total_seconds()
            promised = missed_heartbeats * (interval or 0.0)
            if silent < promised:
                continue  # it has not missed its own heartbeats yet
            if _lost_track(lost_at, host, pid, _aware(silent_since), gaps):
                key = (JobState.UNKNOWN, _LOST_TRACK.format(reason.format(max(seconds, promised))))
            else:
                key = (new_state, reason.format(max(seconds, promised)))
            verdicts.setdefault(key, []).append((job_id, attempt))
        for (verdict, why), found in verdicts.items():
            for start in range(0, len(found), _CHUNK):
                chunk = found[start : start + _CHUNK]
                ids = [job_id for job_id, _ in chunk]
                _update(conn, condition, ids, chunk, state, verdict, why, now)
                (lost if verdict is JobState.UNKNOWN else marked).extend(ids)
    return marked, lost


_LOST_TRACK = "lost track: {}, but the store lost records of this job (a writer outage)"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


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
