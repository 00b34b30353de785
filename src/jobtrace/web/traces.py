"""The traces of a run and the run before it: two small reads the dashboard makes itself.

A run whose fan-out passed ``link_after_fanout`` is split into several traces (see
``docs/lineage.md``): the run page lists the first few with their time ranges and says how many
there are. Both reads take the store a view hands them, so they run in the page's snapshot
(:mod:`jobtrace.web.snapshot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, and_, func, literal_column, or_, select

from jobtrace.lineage.models import Base, Job
from jobtrace.lineage.queries import JobRow, LineageStore

__all__ = ["COUNT_CAP", "LISTED", "RunTrace", "RunTraces", "previous_run", "run_traces"]

JOBS: Table = Base.metadata.tables[Job.__tablename__]
#: Traces of a run listed by name on its page.
LISTED = 5
#: Distinct trace ids counted at most: past this the page says "10,000+ traces".
COUNT_CAP = 10_000


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

    ``count`` stops at :data:`COUNT_CAP` (then ``capped``).
    """

    traces: tuple[RunTrace, ...]
    count: int
    capped: bool

    @property
    def split(self) -> bool:
        """Whether the run's jobs carry more than one trace id."""
        return self.count > 1


def run_traces(store: LineageStore, root_id: str, limit: int = LISTED) -> RunTraces:
    """The distinct trace ids of the run rooted at ``root_id``: the first ``limit`` and the count."""
    in_run = and_(
        or_(JOBS.c.root_job_id == root_id, JOBS.c.job_id == root_id),
        JOBS.c.trace_id.is_not(None),
    )
    first = func.min(func.coalesce(JOBS.c.enqueued_at, JOBS.c.started_at))
    listed = (
        select(
            JOBS.c.trace_id,
            func.count().label("jobs"),
            func.min(JOBS.c.enqueued_at).label("enqueued_at"),
            func.min(JOBS.c.started_at).label("started_at"),
            func.max(JOBS.c.finished_at).label("finished_at"),
        )
        .where(in_run)
        .group_by(JOBS.c.trace_id)
        .order_by(first.is_(None), first, JOBS.c.trace_id)
        .limit(limit)
    )
    distinct = select(JOBS.c.trace_id).where(in_run).distinct().limit(COUNT_CAP + 1).subquery()
    with store.engine.connect() as conn:
        traces = tuple(
            RunTrace(
                str(row.trace_id), int(row.jobs), row.enqueued_at, row.started_at, row.finished_at
            )
            for row in conn.execute(listed)
        )
        count = int(conn.execute(select(func.count()).select_from(distinct)).scalar_one())
    return RunTraces(traces, min(count, COUNT_CAP), count > COUNT_CAP)


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
