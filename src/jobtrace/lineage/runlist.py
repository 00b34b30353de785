"""Runs side by side: the latest runs with their counts, and two runs' stages for a diff."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import datetime, timezone

from sqlalchemy import (
    Subquery,
    func,
    literal_column,
    select,
)
from sqlalchemy.engine import Connection

from jobtrace.lineage import runshape
from jobtrace.lineage._sql import (
    JOBS,
    _depth,
    _error,
    _job_rows,
    _most_common,
    _not_due,
    _now,
    _scope,
)
from jobtrace.lineage.results import (
    FAILURES,
    SCHEDULED,
    ErrorCount,
    JobRow,
    RunStatus,
    RunSummary,
    StageSide,
    StuckStage,
)
from jobtrace.records import JobState

__all__ = [
    "run_statuses",
    "runs",
    "stage_sides",
]


def runs(
    conn: Connection, limit: int, name: str | None = None, now: datetime | None = None
) -> list[RunSummary]:
    """The latest ``limit`` root jobs with their counts per state over the whole run.

    Queued jobs not due yet (at ``now``) count as :data:`SCHEDULED`, as in the stage tree.
    """
    # ``depth = 0`` as a literal: the partial indexes of roots (revision 0005) must see it.
    roots_stmt = select(JOBS).where(JOBS.c.depth == literal_column("0"))
    if name is not None:
        roots_stmt = roots_stmt.where(JOBS.c.name == name)
    # Two steps instead of one ORDER BY a coalesce or NULLS LAST, either of which would keep
    # PostgreSQL off the (depth, enqueued_at) index: the newest roots with an enqueue time, then
    # the newest without one (started, or first heard of: a placeholder), merged in Python.
    heard = func.coalesce(JOBS.c.started_at, JOBS.c.updated_at)
    roots = _job_rows(
        conn,
        roots_stmt.where(JOBS.c.enqueued_at.is_not(None))
        .order_by(JOBS.c.enqueued_at.desc(), JOBS.c.job_id.desc())
        .limit(limit),
    )
    unenqueued = roots_stmt.where(JOBS.c.enqueued_at.is_(None))
    heard_of = unenqueued.where(heard.is_not(None))  # in the order of ix_jobtrace_jobs_heard_roots
    if roots and len(roots) == limit:  # only those newer than the oldest listed can make it
        heard_of = heard_of.where(heard >= roots[-1].enqueued_at)
    roots += _job_rows(conn, heard_of.order_by(heard.desc(), JOBS.c.job_id.desc()).limit(limit))
    if len(roots) < limit:  # roots no record gave a time come last
        roots += _job_rows(
            conn, unenqueued.where(heard.is_(None)).order_by(JOBS.c.job_id.desc()).limit(limit)
        )
    roots = sorted(roots, key=_run_order, reverse=True)[:limit]
    if not roots:
        return []
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    stmt = (
        select(JOBS.c.root_job_id, JOBS.c.state, func.count())
        .where(JOBS.c.root_job_id.in_([root.job_id for root in roots]))
        .group_by(JOBS.c.root_job_id, JOBS.c.state)
    )
    for root_id, state, count in conn.execute(stmt):
        counts[root_id][state] = int(count)
    if any(JobState.QUEUED.value in states for states in counts.values()):
        _split_scheduled(conn, counts, now or _now())
    return [
        RunSummary(
            root, sum(counts[root.job_id].values()), dict(sorted(counts[root.job_id].items()))
        )
        for root in roots
    ]


_NEVER = datetime.min.replace(tzinfo=timezone.utc)


def _run_order(root: JobRow) -> tuple[bool, datetime, str]:
    """Newest first by enqueue, else start, else first word of it; roots without a time last."""
    moment = root.enqueued_at or root.started_at or root.updated_at
    return moment is not None, moment or _NEVER, root.job_id


def stage_sides(conn: Connection, anchor: JobRow) -> dict[tuple[int, str], StageSide]:
    """Per stage of one run (see :func:`ancestry.run_anchor`): counts, duration median and mean, errors."""
    run = _scope(anchor)
    durations: dict[tuple[int, str], list[float]] = defaultdict(list)
    timing = select(run.c.depth, run.c.name, run.c.started_at, run.c.finished_at).where(
        run.c.started_at.is_not(None), run.c.finished_at.is_not(None)
    )
    for depth, name, started, finished in conn.execute(timing):
        durations[(_depth(depth), name)].append((finished - started).total_seconds())
    errors = _error_counts(conn, run)
    sides = {}
    for key, states in runshape.state_counts(conn, run).items():
        times = durations.get(key, [])
        sides[key] = StageSide(
            total=sum(states.values()),
            states=states,
            median_seconds=statistics.median(times) if times else None,
            mean_seconds=statistics.fmean(times) if times else None,
            errors=tuple(ErrorCount(e, c) for e, c in _most_common(errors[key])[:3]),
        )
    return sides


def _error_counts(conn: Connection, jobs: Subquery) -> dict[tuple[int, str], Counter[str]]:
    """Failed jobs of each ``(depth, name)`` counted per error."""
    error = _error(jobs)
    stmt = (
        select(jobs.c.depth, jobs.c.name, error, func.count())
        .where(jobs.c.state.in_(FAILURES))
        .group_by(jobs.c.depth, jobs.c.name, error)
    )
    errors: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
    for depth, name, error_text, count in conn.execute(stmt):
        errors[(_depth(depth), name)][error_text] = int(count)
    return errors


def _split_scheduled(conn: Connection, counts: dict[str, dict[str, int]], now: datetime) -> None:
    """Move each run's queued jobs not due yet to :data:`SCHEDULED`, in ``counts``: a small read
    of the partial ``(root_job_id, due_at)`` index, as for the stage table."""
    not_due = (
        select(JOBS.c.root_job_id, func.count())
        .where(JOBS.c.root_job_id.in_(sorted(counts)), _not_due(JOBS, now))
        .group_by(JOBS.c.root_job_id)
    )
    queued = JobState.QUEUED.value
    for root_id, count in conn.execute(not_due):
        states = counts[root_id]
        scheduled = min(int(count), states.get(queued, 0))  # never below zero
        if scheduled:
            states[SCHEDULED] = scheduled
            states[queued] -= scheduled
            if not states[queued]:
                del states[queued]


def run_statuses(
    conn: Connection, limit: int, name: str | None, stuck_after: float, now: datetime
) -> list[RunStatus]:
    """The latest runs (:func:`runs`), each with its stuck stages: the runs list of the CLI and
    of the dashboard. Only runs with jobs waiting or running are checked (one sample each)."""
    statuses = []
    for summary in runs(conn, limit, name, now):
        stuck: tuple[StuckStage, ...] = ()
        if summary.active:
            jobs = _scope(summary.root)
            stuck = tuple(runshape.stuck_stages(conn, jobs, stuck_after, now, 1))
        statuses.append(RunStatus(summary, stuck))
    return statuses
