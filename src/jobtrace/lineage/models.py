"""The lineage schema: one row per job and one row per attempt, in portable SQL types.

``jobtrace_jobs`` holds each job's latest attempt and its place in the tree (parent, root, depth), so
the hot per-stage queries filter on ``root_job_id`` and never recurse. ``jobtrace_attempts`` keeps
the history of every attempt (retries, crashes) for audit.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, Float, Index, Integer, MetaData, String, Text, func, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ID_LENGTH = 255
NAME_LENGTH = 255


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            value = datetime.fromtimestamp(value, timezone.utc)
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value  # type: ignore[no-any-return]

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Job(Base):
    """A job and its latest attempt."""

    __tablename__ = "jobtrace_jobs"

    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    queue: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    system: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    parent_job_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    #: ``None`` while no record said it (the writer never invents a root or a depth).
    root_job_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    depth: Mapped[int | None] = mapped_column(Integer)
    trace_id: Mapped[str | None] = mapped_column(String(32))
    span_id: Mapped[str | None] = mapped_column(String(16))
    args: Mapped[str | None] = mapped_column(Text)
    items_total: Mapped[int | None] = mapped_column(Integer)
    items_processed: Mapped[int | None] = mapped_column(Integer)
    items_failed: Mapped[int | None] = mapped_column(Integer)
    items_skipped: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[float | None] = mapped_column(Float)
    error_type: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    error_message: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    pid: Mapped[int | None] = mapped_column(Integer)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When a delayed job may run: it is scheduled, not waiting, until then.
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Seconds between the heartbeats its worker promised: the reaper waits for several missed.
    heartbeat_interval: Mapped[float | None] = mapped_column(Float)
    #: When a writer re-delivered this job's records after it had to drop some of them.
    lost_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(None, "parent_job_id", "state"),
        # The runs list: roots only (revision 0010), so a job below the root costs it nothing.
        Index(
            None,
            "depth",
            "enqueued_at",
            sqlite_where=text("depth = 0"),
            postgresql_where=text("depth = 0"),
        ),
        # Prune finds the runs whose rows are old from this index alone.
        Index(None, "updated_at", "root_job_id"),
        # Few jobs are delayed: a partial index finds a run's not-yet-due jobs without a scan.
        Index(
            None,
            "root_job_id",
            "due_at",
            sqlite_where=text("due_at IS NOT NULL"),
            postgresql_where=text("due_at IS NOT NULL"),
        ),
        # The runs of one root job name, newest first: only roots are in it (one row per run).
        # ``depth`` is there for SQLite, to prefer it to ``(depth, enqueued_at)``.
        Index(
            None,
            "name",
            "depth",
            "enqueued_at",
            sqlite_where=text("depth = 0"),
            postgresql_where=text("depth = 0"),
        ),
    )


#: The states of jobs on a queue (waiting or worked on): the partial index of the queue view and
#: the reaper holds exactly these jobs.
ACTIVE_STATE_VALUES = ("queued", "retrying", "stalled", "running")
#: The states few jobs end in (ended other than succeeding, or nobody knows their fate): the
#: partial index of the lists across runs by state (revision 0010). ``succeeded`` is in neither
#: set, so the bulk of jobs costs neither index anything.
RARE_STATE_VALUES = ("cancelled", "crashed", "discarded", "failed", "skipped", "unknown")


def _any_state(states: tuple[str, ...]) -> str:
    """``(state = 'a' OR state = 'b' ...)``: a partial index's predicate, as its queries repeat it.

    Equalities, not IN: SQLite evaluates a partial index's predicate on every write of a row, and
    an IN list of more than two values builds a lookup table each time. The migrations keep
    literal copies of these strings (a migration does not import the models).
    """
    return "(" + " OR ".join(f"state = '{state}'" for state in states) + ")"


#: The predicate of ``ix_jobtrace_jobs_active_queues``, as the index and the queries that use it
#: write it: literally, so SQLite sees the query implies the index (revision 0010's form).
ACTIVE_QUEUE_STATES = _any_state(ACTIVE_STATE_VALUES)

#: A run's stage in one state, oldest first, in keyset pages: the job lists (revision 0006).
Index(
    "ix_jobtrace_jobs_stage_list",
    Job.root_job_id,
    Job.depth,
    Job.name,
    Job.state,
    Job.enqueued_at,
    Job.job_id,
)
#: What waits or runs on each queue, per run: the queue view reads only this (revision 0006), and
#: the reaper its jobs in one state (revision 0010 dropped ``(state, heartbeat_at)`` for it).
Index(
    "ix_jobtrace_jobs_active_queues",
    Job.state,
    Job.queue,
    Job.root_job_id,
    Job.enqueued_at,
    Job.due_at,
    sqlite_where=text(ACTIVE_QUEUE_STATES),
    postgresql_where=text(ACTIVE_QUEUE_STATES),
)
#: The jobs that ended other than succeeding, or that nobody knows the fate of: the states a list
#: across runs asks for by state (revision 0010; the job lists write this predicate out, as
#: SQLite's planner needs). Few jobs are in them, so a job that succeeds costs it nothing.
RARE_STATES = _any_state(RARE_STATE_VALUES)
Index(
    "ix_jobtrace_jobs_rare_states",
    Job.state,
    Job.enqueued_at,
    Job.job_id,
    sqlite_where=text(RARE_STATES),
    postgresql_where=text(RARE_STATES),
)
#: A run's stage × queue × state with the times the run page needs: its counts, the stuck
#: check and the stage times read this index alone (revision 0007).
Index(
    "ix_jobtrace_jobs_stage_queues",
    Job.root_job_id,
    Job.depth,
    Job.name,
    Job.queue,
    Job.state,
    Job.due_at,
    Job.enqueued_at,
    Job.started_at,
    Job.finished_at,
)
#: A run's stage by parent: "from N parents" without reading the jobs (revision 0007).
Index("ix_jobtrace_jobs_stage_parents", Job.root_job_id, Job.depth, Job.name, Job.parent_job_id)
#: The jobs of one trace (revision 0006).
Index("ix_jobtrace_jobs_trace_id", Job.trace_id)
#: A run's trace ids with their jobs' times: the run page's trace list reads this index alone
#: (revision 0008).
Index(
    "ix_jobtrace_jobs_run_traces",
    Job.root_job_id,
    Job.trace_id,
    Job.enqueued_at,
    Job.started_at,
    Job.finished_at,
)

#: Roots without an enqueue time (a placeholder, a job whose enqueue was not recorded) by when
#: they were first heard of, as the runs list orders them. ``depth`` leads although the
#: predicate fixes it, so SQLite prefers it to ``(depth, enqueued_at)``.
Index(
    "ix_jobtrace_jobs_heard_roots",
    Job.depth,
    func.coalesce(Job.started_at, Job.updated_at),
    Job.job_id,
    sqlite_where=text("depth = 0 AND enqueued_at IS NULL"),
    postgresql_where=text("depth = 0 AND enqueued_at IS NULL"),
)


class Attempt(Base):
    """One attempt of one job: the audit trail of retries and crashes."""

    __tablename__ = "jobtrace_attempts"

    job_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    trace_id: Mapped[str | None] = mapped_column(String(32))
    span_id: Mapped[str | None] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    error_message: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    pid: Mapped[int | None] = mapped_column(Integer)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_interval: Mapped[float | None] = mapped_column(Float)


class Gap(Base):
    """A stretch of time in which one writer dropped records: where the store lost track.

    Jobs whose records the writer still held were re-delivered (their ``lost_at`` is set); a job
    left silent on this host and process after ``started_at`` is "lost track", not "crashed".
    """

    __tablename__ = "jobtrace_gaps"

    gap_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime)
    records_dropped: Mapped[int] = mapped_column(Integer)
    jobs_redelivered: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index(None, "host", "pid"),)
