"""Where a job hangs: the path up to its root, the failure that may explain it, its children.

Every walk is safe on any graph: a path up says where it stopped (:class:`Ancestors`), a cycle in
the parent links ends it. Each function takes an open connection (the store's facade,
:class:`~jobtrace.lineage.queries.LineageStore`, opens it).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Select,
    Subquery,
    Table,
    case,
    func,
    select,
)
from sqlalchemy.engine import Connection

from jobtrace.lineage._sql import (
    ATTEMPTS,
    JOBS,
    _job,
    _job_rows,
    _limit,
    _placeholder,
    _scope,
)
from jobtrace.lineage.results import (
    DONE,
    FAILURES,
    PENDING,
    UNKNOWN,
    UNKNOWN_DEPTH,
    Ancestors,
    AttemptRow,
    JobRow,
    Progress,
    Relation,
    Why,
)
from jobtrace.records import JobState

__all__ = [
    "ancestors",
    "progress",
    "run_anchor",
    "why",
]


def ancestors(conn: Connection, job: JobRow, limit: int) -> Ancestors:
    """The jobs above ``job``, root first, each once: :class:`Ancestors` says where it stops.

    The order comes from following the parent links in Python over what :func:`_walk_up`
    fetched, which also tells where a cycle closes.
    """
    found, more = (
        ({}, False) if job.parent_job_id is None else _walk_up(conn, job.parent_job_id, limit)
    )
    path = Ancestors()
    seen = {job.job_id}
    current = job
    while True:
        parent_id = current.parent_job_id
        via_root = parent_id is None
        if parent_id is None:
            # No parent known: the job hangs somewhere under its root, if that is another job.
            parent_id = current.root_job_id
            if parent_id is None or parent_id in seen:
                break
        elif parent_id in seen:
            path.cycle_at = parent_id
            break
        if len(path) >= limit:
            path.truncated_at = UNKNOWN_DEPTH if current.depth is None else current.depth
            break
        if via_root:
            found, more = _walk_up(conn, parent_id, limit - len(path))
        parent = found.get(parent_id)
        if parent is None:
            if more:  # fetched as many as the limit allows, and this one was not among them
                path.truncated_at = UNKNOWN_DEPTH if current.depth is None else current.depth
                break
            parent = _placeholder(parent_id, current, "root" if via_root else "parent")
        path.append(parent)
        seen.add(parent_id)
        current = parent
    path.reverse()
    return path


def _walk_up(conn: Connection, job_id: str, limit: int) -> tuple[dict[str, JobRow], bool]:
    """``job_id`` and the jobs above it, at most ``limit``; and whether there were more.

    One recursive CTE up ``parent_job_id`` with ``UNION``, not ``UNION ALL``: a job met again adds
    no row, so the walk ends on a parent cycle, however the metadata links jobs.
    """
    up = (
        select(JOBS.c.job_id, JOBS.c.parent_job_id)
        .where(JOBS.c.job_id == job_id)
        .cte("ancestors", recursive=True)
    )
    up = up.union(
        select(JOBS.c.job_id, JOBS.c.parent_job_id).join(up, JOBS.c.job_id == up.c.parent_job_id)
    )
    nearest = select(up.c.job_id).limit(limit + 1).subquery("nearest")
    rows = _job_rows(conn, select(JOBS).join(nearest, JOBS.c.job_id == nearest.c.job_id))
    return {row.job_id: row for row in rows}, len(rows) > limit


def run_anchor(conn: Connection, job: JobRow) -> JobRow:
    """The root of ``job``'s run; for a job no record gave a root, the nearest known one above.

    Without any known root above, the topmost job reachable: its subtree stands for the run.
    """
    if job.root_job_id is not None:
        return job if job.is_root else _job(conn, job.root_job_id)
    path = ancestors(conn, job, _limit(None))
    for above in reversed(path):
        if above.root_job_id is not None:
            return above if above.is_root else _job(conn, above.root_job_id)
    return path[0] if path else job


def why(conn: Connection, job: JobRow, now: datetime, limit: int) -> Why:
    """See :class:`Why` for which failures count as related."""
    above = ancestors(conn, job, limit)
    path = (*above, job)
    candidates: list[tuple[JobRow, Relation]] = [
        (row, "ancestor") for row in path[:-1] if row.state in FAILURES
    ]
    failed_itself = job.state in FAILURES
    if failed_itself:
        candidates.append((job, "self"))
    subtree = _scope(job)
    first = _first_failure(conn, select(subtree).where(subtree.c.job_id != job.job_id), subtree)
    if first is not None:
        candidates.append((first, "descendant"))
    if not failed_itself and job.parent_job_id is not None:
        siblings = select(JOBS).where(
            JOBS.c.parent_job_id == job.parent_job_id, JOBS.c.job_id != job.job_id
        )
        if job.enqueued_at is not None:
            siblings = siblings.where(JOBS.c.enqueued_at <= job.enqueued_at)
        if job.started_at is not None:
            siblings = siblings.where(JOBS.c.finished_at <= job.started_at)
        sibling = _first_failure(conn, siblings, JOBS)
        if sibling is not None:
            candidates.append((sibling, "sibling"))
    order: tuple[Relation, ...] = ("self", "ancestor", "descendant", "sibling")
    candidates.sort(key=lambda c: (_failed_at(c[0]) or now, order.index(c[1])))
    cause, relation = candidates[0] if candidates else (None, None)
    attempts_stmt = (
        select(ATTEMPTS).where(ATTEMPTS.c.job_id == job.job_id).order_by(ATTEMPTS.c.attempt)
    )
    attempts = tuple(AttemptRow(**row._mapping) for row in conn.execute(attempts_stmt))
    return Why(job, path, cause, relation, attempts, above.cycle_at, above.truncated_at)


def _first_failure(conn: Connection, stmt: Select[Any], jobs: Subquery | Table) -> JobRow | None:
    """The earliest finished failure ``stmt`` selects from ``jobs``."""
    picked = stmt.where(jobs.c.state.in_(FAILURES)).order_by(
        jobs.c.finished_at.asc().nulls_last(), jobs.c.job_id
    )
    rows = _job_rows(conn, picked.limit(1))
    return rows[0] if rows else None


def _failed_at(job: JobRow) -> datetime | None:
    return job.finished_at or job.heartbeat_at or job.updated_at or job.started_at


def progress(conn: Connection, parent: JobRow, limit: int) -> Progress:
    """Counts of ``parent``'s children per category and its crashed and failed children."""
    stmt = (
        select(JOBS.c.state, func.count())
        .where(JOBS.c.parent_job_id == parent.job_id)
        .group_by(JOBS.c.state)
    )
    states = {state: int(count) for state, count in conn.execute(stmt)}
    crashed = JobState.CRASHED.value
    problems_stmt = (
        select(JOBS)
        .where(JOBS.c.parent_job_id == parent.job_id, JOBS.c.state.in_(FAILURES))
        .order_by(
            case((JOBS.c.state == crashed, 0), else_=1),
            JOBS.c.finished_at.asc().nulls_last(),
            JOBS.c.job_id,
        )
        .limit(limit)
    )

    def total(of: Iterable[str]) -> int:
        return sum(states.get(state, 0) for state in of)

    return Progress(
        parent=parent,
        total=sum(states.values()),
        pending=total(PENDING),
        running=states.get(JobState.RUNNING.value, 0),
        done=total(DONE),
        succeeded=states.get(JobState.SUCCEEDED.value, 0),
        failed=total(s for s in FAILURES if s != crashed),
        crashed=states.get(crashed, 0),
        states=dict(sorted(states.items())),
        problems=tuple(_job_rows(conn, problems_stmt)),
        unknown=states.get(UNKNOWN, 0),
    )
