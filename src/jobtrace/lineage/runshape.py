"""The shape of a run (or subtree) per stage: the stage tree, stuck and failing stages, failures.

A *stage* is one ``(depth, job name)``. A run's questions filter on ``root_job_id`` and never
recurse; :class:`RunGroups` reads a run once, grouped by stage, queue and state, and the tree,
the stuck check, the failing stages and the failures are all derived from that read (the run
page). Each function takes an open connection and a scope.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Subquery,
    and_,
    case,
    func,
    literal,
    null,
    or_,
    select,
)
from sqlalchemy.engine import Connection

from jobtrace.lineage import stagetimes
from jobtrace.lineage._sql import (
    JOBS,
    _at_depth,
    _depth,
    _earliest,
    _error,
    _latest,
    _most_common,
    _not_due,
    _now,
    _same_queue,
)
from jobtrace.lineage.results import (
    ACTIVE,
    FAILURES,
    SCHEDULED,
    ErrorCount,
    FailingStage,
    FailureGroup,
    FailureSample,
    JobRow,
    Overview,
    Stage,
    StageCount,
    StageStats,
    StageTree,
    StuckStage,
)
from jobtrace.records import JobState

__all__ = [
    "RunGroups",
    "failing_stages",
    "failures",
    "overview",
    "stage_stats",
    "stage_tree",
    "state_counts",
    "stuck_stages",
]


def overview(
    conn: Connection,
    anchor: JobRow,
    jobs: Subquery,
    groups: RunGroups,
    now: datetime,
    stuck_after: float,
    min_failures: int,
    min_ratio: float,
    samples: int,
) -> Overview:
    """The tree, the stuck, the failing and the failures, all from one grouped read."""
    return Overview(
        tree=stage_tree(conn, anchor, jobs, now, groups),
        stuck=tuple(stuck_stages(conn, jobs, stuck_after, now, samples, groups)),
        failing=tuple(failing_stages(conn, jobs, min_failures, min_ratio, groups)),
        failures=tuple(failures(conn, jobs, samples, groups)),
    )


@dataclass
class RunGroups:
    """One grouped read of a run (or subtree): what the tree, stuck, failing and failures need.

    The jobs grouped by stage, queue and state, each group with its count, how many are due later,
    the earliest time one due now could run (due, else enqueued) and their latest start and
    finish: on a run, a range of the ``(root_job_id, depth, name, queue, state, due_at, ...)``
    index in its order (revision 0007), so no job is read and nothing sorted. Every count of the
    run page is a sum over these few rows. Then two kinds of small reads: the latest heartbeat of
    each stage and queue with jobs waiting or running (heartbeats are not in the index), and the
    failures per error of each stage with failures (an index range of its failed jobs).
    """

    #: ``(depth, name)`` → state (``scheduled`` split from ``queued``) → jobs.
    states: dict[tuple[int, str], dict[str, int]]
    #: ``(depth, name, queue)`` of jobs due now → what the stuck check needs.
    queues: dict[tuple[int, str, str | None], _QueueGroup]
    #: ``(depth, name)`` → error → failed jobs.
    errors: dict[tuple[int, str], Counter[str]]
    #: ``(depth, name, error)`` → ``[count, first finish, last finish]`` of failed jobs.
    failures: dict[tuple[int, str, str], list[Any]]
    #: ``(depth, name, error)`` → its first failed jobs (by finish), with their parents.
    samples: dict[tuple[int, str, str], tuple[FailureSample, ...]] = field(default_factory=dict)
    #: ``(depth, name)`` → jobs, first enqueue, first start, last finish: the stage times' bounds.
    bounds: stagetimes.Bounds = field(default_factory=dict)

    @classmethod
    def read(cls, conn: Connection, jobs: Subquery, now: datetime, samples: int = 3) -> RunGroups:
        c = jobs.c
        later = c.due_at > now
        # Jobs due later are few (the partial due index finds them at once): without any, the
        # grouped read needs no CASE per job, which was most of its time on SQLite.
        any_later = conn.execute(select(c.job_id).where(later).limit(1)).first() is not None

        def due_now(value: ColumnElement[Any]) -> ColumnElement[Any]:
            return case((later, null()), else_=value) if any_later else value

        # The ``(root_job_id, depth, name, queue, state, due_at, ...)`` index covers all of it.
        stmt = select(
            c.depth,
            c.name,
            c.queue,
            c.state,
            func.count(),
            func.sum(case((later, literal(1)), else_=literal(0))) if any_later else literal(0),
            func.min(due_now(func.coalesce(c.due_at, c.enqueued_at))),
            func.max(due_now(c.started_at)),
            func.max(due_now(c.finished_at)),
            # The stage times' first and last times, of every job (scheduled ones included).
            func.min(c.enqueued_at),
            func.min(c.started_at),
            func.max(c.finished_at) if any_later else literal(None),
        ).group_by(c.depth, c.name, c.queue, c.state)
        states: dict[tuple[int, str], dict[str, int]] = {}
        queues: dict[tuple[int, str, str | None], _QueueGroup] = {}
        bounds: stagetimes.Bounds = {}
        failed_stages: set[tuple[int, str]] = set()
        for row in conn.execute(stmt):
            stored, name, queue, state, count, due_later, could_run, started, finished = row[:9]
            first_enqueued, first_started, last_finished = row[9:]
            depth, count, due_later = _depth(stored), int(count), int(due_later or 0)
            jobs_before, *times = bounds.get((depth, name), (0, None, None, None))
            bounds[(depth, name)] = (
                jobs_before + count,
                _earliest(times[0], first_enqueued),
                _earliest(times[1], first_started),
                _latest(times[2], last_finished if any_later else finished),
            )
            stage = states.setdefault((depth, name), {})
            scheduled = due_later if state == JobState.QUEUED.value else 0
            for shown, jobs_in in ((state, count - scheduled), (SCHEDULED, scheduled)):
                if jobs_in:
                    stage[shown] = stage.get(shown, 0) + jobs_in
            if state in FAILURES:
                failed_stages.add((depth, name))
            if count == due_later:
                continue  # all scheduled for later: not waiting yet
            group = queues.setdefault((depth, name, queue), _QueueGroup())
            group.last_progress = _latest(group.last_progress, started, finished)
            if state in ACTIVE:
                group.states[state] = group.states.get(state, 0) + count - due_later
                group.oldest = _earliest(group.oldest, could_run)
        # Heartbeats are not in the index: read them only where jobs wait or run.
        for (depth, name, queue), group in queues.items():
            if group.states:
                beat = select(func.max(c.heartbeat_at)).where(
                    _at_depth(jobs, depth),
                    c.name == name,
                    _same_queue(jobs, queue),
                    or_(c.due_at.is_(None), c.due_at <= now),
                )
                group.last_progress = _latest(group.last_progress, conn.execute(beat).scalar())
        errors: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
        failures: dict[tuple[int, str, str], list[Any]] = {}
        picked: dict[tuple[int, str, str], list[FailureSample]] = defaultdict(list)
        parent = JOBS.alias("parent")
        # Per stage with failures, so each is an index range of its failed jobs only: one read
        # for the counts per error, their first and last finish and their first jobs.
        for depth, name in sorted(failed_stages):
            # Narrow rows to rank (the failed jobs' ids, errors and finishes); only the first
            # few of each error are joined back for what a sample shows. The error is a column
            # of the narrow rows, so every window partitions by the same column: written out
            # in each window, its bound parameters made SQLite see four different partitions
            # and sort the failed jobs four times (SQLite 14 -> 8.5 ms on 1,980 failures).
            errored = (
                select(c.job_id, _error(jobs).label("error"), c.finished_at)
                .where(_at_depth(jobs, depth), c.name == name, c.state.in_(FAILURES))
                .subquery("errored")
            )
            e = errored.c
            first_jobs = (e.finished_at.asc().nulls_last(), e.job_id)
            ranked = select(
                e.job_id.label("ranked_id"),
                e.error,
                func.count().over(partition_by=e.error).label("jobs"),
                func.min(e.finished_at).over(partition_by=e.error).label("first_at"),
                func.max(e.finished_at).over(partition_by=e.error).label("last_at"),
                func.row_number().over(partition_by=e.error, order_by=first_jobs).label("n"),
            ).subquery("ranked")
            failed = JOBS.alias("failed")
            failed_stmt = (
                select(
                    ranked,
                    *(failed.c[column] for column in _SAMPLE_COLUMNS),
                    parent.c.name.label("parent_name"),
                    parent.c.args.label("parent_args"),
                )
                .join(failed, failed.c.job_id == ranked.c.ranked_id)
                .outerjoin(parent, parent.c.job_id == failed.c.parent_job_id)
                .where(ranked.c.n <= max(samples, 1))
                .order_by(ranked.c.error, ranked.c.n)
            )
            for row in conn.execute(failed_stmt):
                key = (depth, name, row.error)
                errors[(depth, name)][row.error] = int(row.jobs)
                failures[key] = [int(row.jobs), row.first_at, row.last_at]
                if row.n <= samples:
                    sample = {k: row._mapping[k] for k in _SAMPLE_COLUMNS}
                    picked[key].append(
                        FailureSample(
                            **sample, parent_name=row.parent_name, parent_args=row.parent_args
                        )
                    )
        samples_of = {key: tuple(found) for key, found in picked.items()}
        ordered = {stage: dict(sorted(counts.items())) for stage, counts in sorted(states.items())}
        return cls(ordered, queues, errors, failures, samples_of, bounds)


@dataclass
class _QueueGroup:
    """What the stuck query gathers per ``(depth, name, queue)``."""

    states: dict[str, int] = field(default_factory=dict)
    oldest: datetime | None = None
    last_progress: datetime | None = None


def stage_tree(
    conn: Connection,
    anchor: JobRow,
    jobs: Subquery,
    now: datetime | None = None,
    groups: RunGroups | None = None,
) -> StageTree:
    """The subtree in ``jobs`` collapsed per ``(depth, name)``, with each stage's parent stages.

    The children are grouped per parent first, and only those groups meet their parent's row:
    one join per parent, not one per job.
    """
    groups = groups or RunGroups.read(conn, jobs, now or _now())
    parent = JOBS.alias("parent")
    # A lookup per parent (a correlated subquery), whatever the planner guesses of the groups:
    # PostgreSQL, guessing far too many, would hash the whole table to join them.
    parent_name = (
        select(parent.c.name)
        .where(parent.c.job_id == jobs.c.parent_job_id)
        .scalar_subquery()
        .label("parent_name")
    )
    per_parent = (
        select(jobs.c.depth, jobs.c.name, parent_name, func.count().label("jobs"))
        .where(jobs.c.parent_job_id.is_not(None), *_not_anchor(jobs, anchor))
        .group_by(jobs.c.depth, jobs.c.name, jobs.c.parent_job_id)
        .subquery("per_parent")
    )
    spawners = select(
        per_parent.c.depth,
        per_parent.c.name,
        per_parent.c.parent_name,
        func.sum(per_parent.c.jobs),
        func.count(),
    ).group_by(per_parent.c.depth, per_parent.c.name, per_parent.c.parent_name)
    parent_jobs: Counter[tuple[int, str]] = Counter()
    parent_names: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
    for depth, name, parent_name, count, distinct in conn.execute(spawners):
        if parent_name is None:
            # A parent without a row: not counted. Left out here, not in SQL, where PostgreSQL
            # looked each parent up twice (once for the filter, once for the name).
            continue
        parent_names[(_depth(depth), name)][parent_name] += int(count)
        parent_jobs[(_depth(depth), name)] += int(distinct)
    stages = tuple(
        Stage(
            depth=depth,
            name=name,
            total=sum(states.values()),
            states=states,
            parents=parent_jobs[(depth, name)],
            parent_names=tuple(n for n, _ in _most_common(parent_names[(depth, name)])),
        )
        for (depth, name), states in groups.states.items()
    )
    return StageTree(anchor, stages)


def _not_anchor(jobs: Subquery, anchor: JobRow) -> list[ColumnElement[bool]]:
    """Leave the anchor out of its parents' count; a root without a parent needs no test (and
    its test would read every job's row: the job id is not in the stage indexes)."""
    if anchor.is_root and anchor.parent_job_id is None:
        return []
    return [jobs.c.job_id != anchor.job_id]


def stuck_stages(
    conn: Connection,
    jobs: Subquery,
    threshold: float,
    now: datetime,
    samples: int,
    groups: RunGroups | None = None,
) -> list[StuckStage]:
    """Stage and queue groups with active jobs whose last progress is older than ``threshold``."""
    # A job scheduled for later is not waiting yet: it counts from when it is due.
    not_scheduled = or_(jobs.c.due_at.is_(None), jobs.c.due_at <= now)
    groups = groups or RunGroups.read(conn, jobs, now)
    stuck = []
    for (depth, name, queue), group in sorted(groups.queues.items(), key=_group_order):
        if not group.states:
            continue
        since = _latest(group.last_progress, group.oldest)
        if since is None:
            continue  # nothing tells when the work arrived: no ground to call it stuck
        idle = (now - since).total_seconds()
        if idle <= threshold:
            continue
        active = and_(jobs.c.state.in_(sorted(group.states)), not_scheduled)
        sample_stmt = (
            select(jobs.c.job_id, jobs.c.args)
            .where(_at_depth(jobs, depth), jobs.c.name == name, _same_queue(jobs, queue), active)
            .order_by(jobs.c.enqueued_at.asc().nulls_last(), jobs.c.job_id)
            .limit(samples)
        )
        picked = conn.execute(sample_stmt).all()
        stuck.append(
            StuckStage(
                depth=depth,
                name=name,
                queue=queue,
                active=sum(group.states.values()),
                states=dict(sorted(group.states.items())),
                since=since,
                idle_seconds=idle,
                last_progress_at=group.last_progress,
                oldest_enqueued_at=group.oldest,
                sample_job_ids=tuple(job_id for job_id, _ in picked),
                sample_args=tuple(args for _, args in picked),
            )
        )
    return stuck


def failing_stages(
    conn: Connection,
    jobs: Subquery,
    min_failures: int,
    min_ratio: float,
    groups: RunGroups | None = None,
) -> list[FailingStage]:
    """Stages whose failed, discarded and crashed jobs pass both thresholds."""
    groups = groups or RunGroups.read(conn, jobs, _now())
    failing = []
    for (depth, name), states in groups.states.items():
        by_error = groups.errors.get((depth, name), Counter())
        failed = sum(by_error.values())
        total = sum(states.values())
        if failed >= max(1, min_failures) and failed / total >= min_ratio:
            top = tuple(ErrorCount(e, c) for e, c in _most_common(by_error))
            failing.append(FailingStage(depth, name, total, failed, failed / total, top))
    return failing


def failures(
    conn: Connection, jobs: Subquery, samples: int, groups: RunGroups | None = None
) -> list[FailureGroup]:
    """Failures per ``(depth, name, error)``, each with its first jobs and their parents."""
    groups = groups or RunGroups.read(conn, jobs, _now(), samples)
    ordered = sorted(groups.failures.items(), key=lambda item: (-int(item[1][0]), *item[0]))
    return [
        FailureGroup(
            depth,
            name,
            error_text,
            int(count),
            first_at,
            last_at,
            groups.samples.get((depth, name, error_text), ())[:samples],
        )
        for (depth, name, error_text), (count, first_at, last_at) in ordered
    ]


#: The columns of a failed job a :class:`FailureSample` shows, besides its parent's.
_SAMPLE_COLUMNS = (
    "job_id",
    "state",
    "args",
    "error_message",
    "trace_id",
    "span_id",
    "finished_at",
    "parent_job_id",
)


def stage_stats(conn: Connection, root_id: str) -> StageStats:
    """``(depth, name, state, count)`` of one run, from the covering index alone."""
    stmt = (
        select(JOBS.c.depth, JOBS.c.name, JOBS.c.state, func.count())
        .where(JOBS.c.root_job_id == root_id)
        .group_by(JOBS.c.depth, JOBS.c.name, JOBS.c.state)
    )
    counts = {
        (_depth(depth), name, state): int(count) for depth, name, state, count in conn.execute(stmt)
    }
    if any(state == JobState.QUEUED.value for _, _, state in counts):
        _split_scheduled(conn, root_id, counts)
    rows = tuple(StageCount(*key, count) for key, count in sorted(counts.items()))
    return StageStats(root_id, rows)


def _split_scheduled(
    conn: Connection, root_id: str, counts: dict[tuple[int, str, str], int]
) -> None:
    """Move the run's queued jobs not due yet to :data:`SCHEDULED`, in ``counts``.

    A second, small query on the partial ``(root_job_id, due_at)`` index: the big ``GROUP BY``
    keeps to its covering index.
    """
    not_due = (
        select(JOBS.c.depth, JOBS.c.name, func.count())
        .where(JOBS.c.root_job_id == root_id, _not_due(JOBS, _now()))
        .group_by(JOBS.c.depth, JOBS.c.name)
    )
    for depth, name, count in conn.execute(not_due):
        # A job enqueued between the two queries is in the second only: never count below zero.
        queued = (_depth(depth), name, JobState.QUEUED.value)
        scheduled = min(int(count), counts.get(queued, 0))
        if scheduled:
            counts[(_depth(depth), name, SCHEDULED)] = scheduled
            counts[queued] -= scheduled
            if not counts[queued]:
                del counts[queued]


def state_counts(
    conn: Connection, jobs: Subquery, now: datetime | None = None
) -> dict[tuple[int, str], dict[str, int]]:
    """Counts per state of each ``(depth, name)``, stages and states in order.

    Queued jobs not due yet (at ``now``) count as :data:`SCHEDULED`: waiting on purpose, not on a
    worker.
    """
    scheduled = _not_due(jobs, now or _now())
    state = case((scheduled, literal(SCHEDULED)), else_=jobs.c.state).label("state")
    stmt = (
        select(jobs.c.depth, jobs.c.name, state, func.count())
        .group_by(jobs.c.depth, jobs.c.name, state)
        .order_by(jobs.c.depth, jobs.c.name, state)
    )
    counts: dict[tuple[int, str], dict[str, int]] = {}
    for depth, name, state_name, count in conn.execute(stmt):
        counts.setdefault((_depth(depth), name), {})[state_name] = int(count)
    return dict(sorted(counts.items()))  # unknown depths first on every database


def _group_order(item: tuple[tuple[int, str, str | None], object]) -> tuple[int, str, str]:
    depth, name, queue = item[0]
    return depth, name, queue or ""
