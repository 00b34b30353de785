"""Questions about pipeline runs, each answered by one call on a :class:`LineageStore`.

A *run* is everything under one root job (``root_job_id``); a *stage* is one ``(depth, job name)``
of a run, the row of the per-stage table. Run-wide questions filter on ``root_job_id`` and never
recurse, so they stay fast on a run of 100k jobs; questions about the subtree of a job that is not a
root walk ``parent_job_id`` with a recursive CTE. All of it is portable SQL that SQLite and
PostgreSQL both run. Results are frozen dataclasses; states are the plain strings of
:class:`~jobtrace.JobState` so a store written by a newer jobtrace still reads.

Lineage comes from metadata other programs write, so every walk is safe on any graph: a subtree
holds each job once however deep or cyclic its ``parent_job_id`` links are, and a path up says
where it stopped (:class:`Ancestors`). A job only named as a parent or a root is a placeholder
(state ``unknown``, attempt 0, see ``docs/lineage.md``), answered like any other job.

    store = LineageStore("postgresql+psycopg://localhost/jobs")
    store.overview(root_id)   # the stage tree, stuck and failing stages, failures
    store.progress(parent_id) # a parent's children: done / total, crashed ones with their args
    store.why(job_id)         # the path from the root and the earliest related failure

This module is the facade: :class:`LineageStore` opens a connection per question and hands it to
the queries, split by what they answer: :mod:`~jobtrace.lineage.results` (the result rows and
state groups, re-exported here), :mod:`~jobtrace.lineage.lookup` (ids and prefixes),
:mod:`~jobtrace.lineage.ancestry` (paths up, ``why``, a parent's progress),
:mod:`~jobtrace.lineage.runshape` (a run's stages: tree, stuck, failing, failures),
:mod:`~jobtrace.lineage.runlist` (the runs list and diffs), :mod:`~jobtrace.lineage.joblist` and
:mod:`~jobtrace.lineage.stagetimes`; what they share is in the internal ``_sql``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime
from types import TracebackType

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.engine import Connection, Engine

from jobtrace.lineage import ancestry, joblist, lookup, runlist, runshape, stagetimes
from jobtrace.lineage._sql import JOBS as JOBS  # re-exported: scripts read the table from here
from jobtrace.lineage._sql import (
    _job,
    _job_rows,
    _limit,
    _not_due,
    _now,
    _scope,
)
from jobtrace.lineage.joblist import Cursor, JobFilter, JobPage, QueueView
from jobtrace.lineage.results import (
    ACTIVE,
    DONE,
    ELLIPSIS,
    FAILURES,
    MAX_DEPTH,
    PENDING,
    PLACEHOLDER_NAME,
    SCHEDULED,
    STUCK_AFTER,
    UNKNOWN,
    UNKNOWN_DEPTH,
    AmbiguousJobIdError,
    Ancestors,
    AttemptRow,
    ErrorCount,
    FailingStage,
    FailureGroup,
    FailureSample,
    JobNotFoundError,
    JobRow,
    Overview,
    Progress,
    Relation,
    RunDiff,
    RunReport,
    RunStatus,
    RunSummary,
    Stage,
    StageCount,
    StageDiff,
    StageSide,
    StageStats,
    StageTree,
    StuckStage,
    Why,
)
from jobtrace.lineage.stagetimes import StageTimes

#: The result types and state groups are re-exported from :mod:`jobtrace.lineage.results`, so
#: imports from here keep working.
__all__ = [
    "ACTIVE",
    "DONE",
    "ELLIPSIS",
    "FAILURES",
    "MAX_DEPTH",
    "PENDING",
    "PLACEHOLDER_NAME",
    "SCHEDULED",
    "STUCK_AFTER",
    "UNKNOWN",
    "UNKNOWN_DEPTH",
    "AmbiguousJobIdError",
    "Ancestors",
    "AttemptRow",
    "ErrorCount",
    "FailingStage",
    "FailureGroup",
    "FailureSample",
    "JobNotFoundError",
    "JobRow",
    "LineageStore",
    "Overview",
    "Progress",
    "Relation",
    "RunDiff",
    "RunReport",
    "RunStatus",
    "RunSummary",
    "Stage",
    "StageCount",
    "StageDiff",
    "StageSide",
    "StageStats",
    "StageTree",
    "StuckStage",
    "Why",
]


class LineageStore:
    """Read-only questions on a lineage store.

    Args:
        url_or_engine: A database URL (``None``: ``JOBTRACE_DATABASE_URL``, else the local
            default), or an engine to share; an engine passed in is never disposed here.
    """

    def __init__(self, url_or_engine: str | Engine | None = None) -> None:
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
            self._owns_engine = False
        else:
            from jobtrace.lineage.store import create_store_engine

            self.engine = create_store_engine(url_or_engine)
            self._owns_engine = True

    def close(self) -> None:
        """Release the connections of an engine this store created."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> LineageStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def job(self, job_id: str) -> JobRow:
        """One job; raises :class:`JobNotFoundError` for an unknown id, like every method here.

        An id some job names as its parent or root without a row of its own (a store written
        before placeholders were) is answered with a placeholder built from that job.
        """
        with self.engine.connect() as conn:
            return _job(conn, job_id)

    def resolve(self, typed: str, *, candidates: int = 10) -> str:
        """The id of the one job ``typed`` names: its id, or a prefix only that job's id starts with.

        A whole id wins over a longer id it prefixes (``job-1`` beside ``job-10``). A trailing
        ``…`` is dropped, so ids shortened as the docs print them (``7d1e…``) resolve. The
        prefix is matched literally (``%`` and ``_`` are not wildcards) and case-sensitively, as
        a range on the primary key where ids compare by code point (SQLite, PostgreSQL under a
        ``C`` collation), else with an escaped ``LIKE``, right under any collation.

        Args:
            candidates: How many matching jobs an ambiguous prefix's error lists.

        Raises:
            JobNotFoundError: No job has this id or starts with it.
            AmbiguousJobIdError: Several jobs start with it.
        """
        with self.engine.connect() as conn:
            return lookup.resolve(conn, typed, max(candidates, 1))

    def tree(self, job_id: str) -> list[JobRow]:
        """Every job of the subtree under ``job_id`` (itself included), each once, by depth."""
        return list(self.iter_tree(job_id))

    def iter_tree(self, job_id: str, *, batch_size: int = 1000) -> Iterator[JobRow]:
        """Like :meth:`tree`, streamed in batches so a 100k-job run never sits in memory."""
        with self.engine.connect() as conn:
            jobs = _scope(_job(conn, job_id))
            stmt = select(jobs).order_by(
                jobs.c.depth, jobs.c.enqueued_at.asc().nulls_first(), jobs.c.job_id
            )
            if conn.dialect.name == "postgresql":
                # Streaming uses a server-side cursor, which PostgreSQL plans for its first rows:
                # against a subtree it underestimates, that is a nested loop rescanning the walk
                # once per job (18 s instead of 0.1 s for 10,000 jobs). Plan for all the rows.
                conn.exec_driver_sql("SET LOCAL cursor_tuple_fraction = 1.0")
            result = conn.execution_options(yield_per=batch_size).execute(stmt)
            for row in result:
                yield JobRow(**row._mapping)

    def count_tree(self, job_id: str) -> int:
        """How many jobs :meth:`tree` returns, without fetching them."""
        with self.engine.connect() as conn:
            jobs = _scope(_job(conn, job_id))
            return int(conn.execute(select(func.count()).select_from(jobs)).scalar_one())

    def children(
        self, job_id: str, *, state: str | None = None, limit: int | None = None
    ) -> list[JobRow]:
        """The jobs ``job_id`` enqueued, oldest first, optionally only those in ``state``.

        ``state`` may also be :data:`SCHEDULED`: the queued children not due yet, as the per-stage
        counts show them.
        """
        with self.engine.connect() as conn:
            _job(conn, job_id)
            stmt = select(JOBS).where(JOBS.c.parent_job_id == job_id)
            if state == SCHEDULED:
                stmt = stmt.where(_not_due(JOBS, _now()))
            elif state is not None:
                stmt = stmt.where(JOBS.c.state == state)
            stmt = stmt.order_by(JOBS.c.enqueued_at.asc().nulls_first(), JOBS.c.job_id)
            return _job_rows(conn, stmt.limit(limit))

    def ancestors(self, job_id: str, *, limit: int | None = None) -> Ancestors:
        """The jobs above ``job_id``, from its root down to its parent (empty for a root).

        Args:
            limit: Most ancestors to return, the nearest ones (default :data:`MAX_DEPTH`); the
                result's ``truncated_at`` says when there were more.
        """
        with self.engine.connect() as conn:
            return ancestry.ancestors(conn, _job(conn, job_id), _limit(limit))

    def runs(
        self, limit: int = 20, *, name: str | None = None, now: datetime | None = None
    ) -> list[RunSummary]:
        """The latest runs, each with its counts per state (queued jobs due after ``now``
        counted as :data:`SCHEDULED`, as in the stage tree).

        Roots are ordered by when they were enqueued, else started, else first heard of (a
        placeholder root, which no record of its own ever reached).
        """
        with self.engine.connect() as conn:
            return runlist.runs(conn, limit, name, now or _now())

    def run_statuses(
        self,
        limit: int = 20,
        *,
        name: str | None = None,
        stuck_after: float = STUCK_AFTER,
        now: datetime | None = None,
    ) -> list[RunStatus]:
        """:meth:`runs`, each with its stuck stages, on one connection: what ``jobtrace runs``
        and the dashboard's runs page judge health from (``jobtrace.display.run_health``)."""
        with self.engine.connect() as conn:
            return runlist.run_statuses(conn, limit, name, stuck_after, now or _now())

    def stage_stats(self, job_id: str) -> StageStats:
        """The per-stage table of the run ``job_id`` belongs to (the hot query: no recursion).

        One ``GROUP BY`` on ``root_job_id`` that the ``(root_job_id, depth, name, state)`` index
        covers entirely.
        """
        with self.engine.connect() as conn:
            root_id = conn.execute(
                select(JOBS.c.root_job_id).where(JOBS.c.job_id == job_id)
            ).scalar()
            if root_id is not None:
                return runshape.stage_stats(conn, str(root_id))
            # No row, or a row that never said its root: find the run by walking up.
            anchor = ancestry.run_anchor(conn, _job(conn, job_id))
            if anchor.is_root:
                return runshape.stage_stats(conn, anchor.job_id)
            counts = runshape.state_counts(conn, _scope(anchor))
            rows = sorted(
                (
                    StageCount(depth, name, state, count)
                    for (depth, name), states in counts.items()
                    for state, count in states.items()
                ),
                key=lambda row: (row.depth, row.name, row.state),
            )
            return StageStats(anchor.job_id, tuple(rows))

    def stage_tree(self, job_id: str) -> StageTree:
        """The subtree under ``job_id`` collapsed per stage, each stage under its parents' stage."""
        with self.engine.connect() as conn:
            anchor = _job(conn, job_id)
            return runshape.stage_tree(conn, anchor, _scope(anchor))

    def stuck_stages(
        self,
        job_id: str,
        threshold: float = STUCK_AFTER,
        *,
        now: datetime | None = None,
        samples: int = 3,
    ) -> list[StuckStage]:
        """Stages (per queue) under ``job_id`` with active jobs and no progress for ``threshold`` s."""
        with self.engine.connect() as conn:
            jobs = _scope(_job(conn, job_id))
            return runshape.stuck_stages(conn, jobs, threshold, now or _now(), samples)

    def failing_stages(
        self, job_id: str, *, min_failures: int = 1, min_ratio: float = 0.0
    ) -> list[FailingStage]:
        """Stages under ``job_id`` with at least ``min_failures`` failures and that share of jobs."""
        with self.engine.connect() as conn:
            jobs = _scope(_job(conn, job_id))
            return runshape.failing_stages(conn, jobs, min_failures, min_ratio)

    def failures(self, job_id: str, *, samples: int = 3) -> list[FailureGroup]:
        """Failures under ``job_id`` per ``(stage, error)``, largest first, with sample jobs."""
        with self.engine.connect() as conn:
            jobs = _scope(_job(conn, job_id))
            return runshape.failures(conn, jobs, samples)

    def overview(
        self,
        job_id: str,
        *,
        stuck_after: float = STUCK_AFTER,
        min_failures: int = 1,
        min_ratio: float = 0.0,
        samples: int = 3,
        now: datetime | None = None,
    ) -> Overview:
        """Scenario 1 in one call: the stage tree, its stuck and failing stages, the failures."""
        now = now or _now()  # one clock for "scheduled" in the tree and for "stuck"
        with self.engine.connect() as conn:
            anchor = _job(conn, job_id)
            jobs = _scope(anchor)
            groups = runshape.RunGroups.read(conn, jobs, now, samples)
            return runshape.overview(
                conn, anchor, jobs, groups, now, stuck_after, min_failures, min_ratio, samples
            )

    def run_report(
        self,
        job_id: str,
        *,
        stuck_after: float = STUCK_AFTER,
        min_failures: int = 1,
        min_ratio: float = 0.0,
        samples: int = 3,
        now: datetime | None = None,
    ) -> RunReport:
        """:meth:`overview` and :meth:`stage_times` from one grouped read of the run (the run
        page): the stage times' counts and first and last times come from the overview's read,
        so only their percentiles are read apart, on the same connection."""
        now = now or _now()
        with self.engine.connect() as conn:
            anchor = _job(conn, job_id)
            jobs = _scope(anchor)
            groups = runshape.RunGroups.read(conn, jobs, now, samples)
            overview = runshape.overview(
                conn, anchor, jobs, groups, now, stuck_after, min_failures, min_ratio, samples
            )
            root_id = anchor.job_id if anchor.is_root else None
            times = stagetimes.stage_times(conn, jobs, root_id=root_id, bounds=groups.bounds)
            return RunReport(overview, times)

    def progress(self, parent_id: str, *, limit: int = 50) -> Progress:
        """A parent's children as pending / running / done, listing up to ``limit`` problems."""
        with self.engine.connect() as conn:
            return ancestry.progress(conn, _job(conn, parent_id), limit)

    def why(self, job_id: str, *, now: datetime | None = None, limit: int | None = None) -> Why:
        """The path from the root to ``job_id`` and the earliest failure related to it.

        Args:
            limit: Most ancestors on the path, as for :meth:`ancestors`.
        """
        with self.engine.connect() as conn:
            return ancestry.why(conn, _job(conn, job_id), now or _now(), _limit(limit))

    def jobs(
        self,
        where: JobFilter,
        *,
        after: Cursor | None = None,
        limit: int = 50,
        now: datetime | None = None,
    ) -> JobPage:
        """One page of the jobs ``where`` matches, oldest enqueued first (keyset-paged).

        See :mod:`jobtrace.lineage.joblist`: ``after`` is the previous page's ``next``.
        """
        with self.engine.connect() as conn:
            return _job_page(conn, where, after, limit, now or _now())

    def iter_jobs(
        self, where: JobFilter, *, now: datetime | None = None, batch_size: int = 1000
    ) -> Iterator[JobRow]:
        """Every job ``where`` matches, in the order of :meth:`jobs`, fetched page by page."""
        with self.engine.connect() as conn:
            rows = joblist.iter_jobs(conn, JOBS, where, now=now or _now(), batch_size=batch_size)
            for row in rows:
                yield JobRow(**row._mapping)

    def queues(self, *, now: datetime | None = None) -> list[QueueView]:
        """Every queue with jobs waiting or running, per run, the longest waiting first."""
        with self.engine.connect() as conn:
            return joblist.queues(conn, JOBS, now=now or _now())

    def stage_times(self, job_id: str) -> dict[tuple[int, str], StageTimes]:
        """Per stage under ``job_id``: p50/p95 duration and queue wait, first and last times.

        See :mod:`jobtrace.lineage.stagetimes` (exact on PostgreSQL; on SQLite, a stage of a
        run past :data:`~jobtrace.lineage.stagetimes.SAMPLE` jobs is sampled).
        """
        with self.engine.connect() as conn:
            anchor = _job(conn, job_id)
            root_id = anchor.job_id if anchor.is_root else None
            return stagetimes.stage_times(conn, _scope(anchor), root_id=root_id)

    def diff(self, run_a: str, run_b: str) -> RunDiff:
        """Two runs (any job of each) stage by stage: counts, durations, top errors."""
        with self.engine.connect() as conn:
            root_a = ancestry.run_anchor(conn, _job(conn, run_a))
            root_b = ancestry.run_anchor(conn, _job(conn, run_b))
            sides_a = runlist.stage_sides(conn, root_a)
            sides_b = runlist.stage_sides(conn, root_b)
        empty = StageSide(0, {}, None, None, ())
        stages = tuple(
            StageDiff(
                depth, name, sides_a.get((depth, name), empty), sides_b.get((depth, name), empty)
            )
            for depth, name in sorted({*sides_a, *sides_b})
        )
        return RunDiff(root_a, root_b, stages)


def _job_page(
    conn: Connection, where: JobFilter, after: Cursor | None, limit: int, now: datetime
) -> JobPage:
    page = joblist.job_page(conn, JOBS, where, after=after, limit=limit, now=now)
    rows = tuple(JobRow(**row._mapping) for row in page.jobs)
    return dataclasses.replace(page, jobs=rows)
