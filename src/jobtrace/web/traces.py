"""The traces of a run and the run before it: two small reads the dashboard makes itself.

A run whose fan-out passed ``link_after_fanout`` is split into several traces (see
``docs/lineage.md``): the run page lists the first few with their time ranges and says how many
there are. Both reads take the store a view hands them, so they run in the page's snapshot
(:mod:`jobtrace.web.snapshot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, and_, func, literal_column, or_, select, union_all

from jobtrace.lineage.models import Base, Job
from jobtrace.lineage.queries import JobRow, LineageStore

__all__ = ["LISTED", "SCANNED", "RunTrace", "RunTraces", "previous_run", "run_traces"]

JOBS: Table = Base.metadata.tables[Job.__tablename__]
#: Traces of a run listed by name on its page.
LISTED = 5
#: Jobs of a run read at most to find its traces (a 100k-job run costs no more than a 20k one).
SCANNED = 20_000


@dataclass(frozen=True)
class RunTrace:
    """One trace of a run: its id, how many of the run's jobs it holds, and when they ran."""

    trace_id: str
    jobs: int
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class RunTraces:
    """The first traces of a run by when their jobs were enqueued, and how many there are.

    ``capped``: the run has more jobs than were read, so ``count`` is a lower bound.
    """

    traces: tuple[RunTrace, ...]
    count: int
    capped: bool = False

    @property
    def split(self) -> bool:
        """Whether the run's jobs carry more than one trace id."""
        return self.count > 1


def run_traces(store: LineageStore, root_id: str, limit: int = LISTED) -> RunTraces:
    """The distinct trace ids of the run rooted at ``root_id``: the first ``limit`` and the count.

    One read of at most :data:`SCANNED` of the run's jobs (whichever the database reads first),
    grouped by trace id; past that the count is a lower bound (``capped``).
    """
    columns = (JOBS.c.trace_id, JOBS.c.enqueued_at, JOBS.c.started_at, JOBS.c.finished_at)
    # Two branches, not ``root_job_id = :root OR job_id = :root``, which kept both databases
    # from reading the run as one index range: the run, then the root itself when its row does
    # not name itself as its root (a primary-key lookup).
    run = select(*columns).where(JOBS.c.root_job_id == root_id, JOBS.c.trace_id.is_not(None))
    anchor = select(*columns).where(
        JOBS.c.job_id == root_id,
        or_(JOBS.c.root_job_id.is_(None), JOBS.c.root_job_id != root_id),
        JOBS.c.trace_id.is_not(None),
    )
    jobs = union_all(run, anchor).limit(SCANNED + 1).subquery()
    first = func.min(func.coalesce(jobs.c.enqueued_at, jobs.c.started_at))
    stmt = (
        select(
            jobs.c.trace_id,
            func.count().label("jobs"),
            func.min(jobs.c.enqueued_at).label("enqueued_at"),
            func.min(jobs.c.started_at).label("started_at"),
            func.max(jobs.c.finished_at).label("finished_at"),
            func.count().over().label("traces"),
            func.sum(func.count()).over().label("scanned"),
        )
        .group_by(jobs.c.trace_id)
        .order_by(first.is_(None), first, jobs.c.trace_id)
        .limit(limit)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    traces = tuple(
        RunTrace(str(row.trace_id), int(row.jobs), row.enqueued_at, row.started_at, row.finished_at)
        for row in rows
    )
    if not rows:
        return RunTraces((), 0)
    return RunTraces(traces, int(rows[0].traces), int(rows[0].scanned) > SCANNED)


def previous_run(store: LineageStore, root: JobRow) -> JobRow | None:
    """The latest run of the same root job name enqueued (else started) before ``root``.

    Runs are ordered as the runs page orders them; ties in time go by job id.
    """
    column = JOBS.c.enqueued_at if root.enqueued_at is not None else JOBS.c.started_at
    moment = root.enqueued_at or root.started_at
    if moment is None:
        return None
    stmt = (
        select(JOBS)
        # ``depth = 0`` as a literal, as the runs query writes it (the partial index of roots).
        .where(JOBS.c.depth == literal_column("0"), JOBS.c.name == root.name)
        .where(JOBS.c.job_id != root.job_id)
        .where(or_(column < moment, and_(column == moment, JOBS.c.job_id < root.job_id)))
        .order_by(column.desc(), JOBS.c.job_id.desc())
        .limit(1)
    )
    with store.engine.connect() as conn:
        row = conn.execute(stmt).first()
    return None if row is None else JobRow(**row._mapping)
