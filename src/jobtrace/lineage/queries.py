"""Questions about pipeline runs, each answered by one call on a :class:`LineageStore`.

A *run* is everything under one root job (``root_job_id``); a *stage* is one ``(depth, job name)``
of a run, the row of the per-stage table. Run-wide questions filter on ``root_job_id`` and never
recurse, so they stay fast on a run of 100k jobs; questions about the subtree of a job that is not a
root walk ``parent_job_id`` with a recursive CTE. All of it is portable SQL that SQLite and
PostgreSQL both run. Results are frozen dataclasses; states are the plain strings of
:class:`~jobtrace.JobState` so a store written by a newer jobtrace still reads.

    store = LineageStore("postgresql+psycopg://localhost/jobs")
    store.overview(root_id)   # the stage tree, stuck and failing stages, failures
    store.progress(parent_id) # a parent's children: done / total, crashed ones with their args
    store.why(job_id)         # the path from the root and the earliest related failure
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    Subquery,
    Table,
    and_,
    case,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine

from jobtrace.lineage.models import Attempt, Base, Job
from jobtrace.records import DONE_STATES, FAILED_STATES, JobState

__all__ = [
    "ACTIVE",
    "DONE",
    "FAILURES",
    "PENDING",
    "STUCK_AFTER",
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
    "RunDiff",
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

JOBS: Table = Base.metadata.tables[Job.__tablename__]
ATTEMPTS: Table = Base.metadata.tables[Attempt.__tablename__]

#: Waiting for a worker: not started, or started again later.
PENDING = (JobState.QUEUED.value, JobState.STALLED.value, JobState.RETRYING.value)
#: Not done yet: a stage holding these jobs is expected to make progress.
ACTIVE = (*PENDING, JobState.RUNNING.value)
#: A bad ending: what makes a stage "failing".
FAILURES = tuple(sorted(state.value for state in FAILED_STATES))
DONE = tuple(sorted(state.value for state in DONE_STATES))
#: Not a stored state: how per-stage counts show queued jobs whose ``due_at`` is still ahead.
SCHEDULED = "scheduled"

#: Deepest tree walked by the recursive queries: a guard against a parent cycle in bad data.
MAX_DEPTH = 1000
#: Seconds without progress after which a stage with active jobs counts as stuck.
STUCK_AFTER = 300.0


class JobNotFoundError(LookupError):
    """No job with this id is recorded in the store."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} in the lineage store")
        self.job_id = job_id


@dataclass(frozen=True)
class JobRow:
    """One job as the store holds it: its latest attempt and its place in the tree."""

    job_id: str
    name: str
    queue: str | None
    system: str | None
    state: str
    attempt: int
    parent_job_id: str | None
    root_job_id: str
    depth: int
    trace_id: str | None
    span_id: str | None
    args: str | None
    items_total: int | None
    items_processed: int | None
    items_failed: int | None
    items_skipped: int | None
    progress: float | None
    error_type: str | None
    error_message: str | None
    reason: str | None
    host: str | None
    pid: int | None
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    updated_at: datetime | None
    due_at: datetime | None = None
    heartbeat_interval: float | None = None
    lost_at: datetime | None = None

    @property
    def is_root(self) -> bool:
        """Whether this job starts its own run."""
        return self.root_job_id == self.job_id

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish of the latest attempt, when both are known."""
        return _seconds(self.started_at, self.finished_at)

    @property
    def error(self) -> str | None:
        """What went wrong, in one word: the error type, else the reason, for a failed job."""
        if self.state not in FAILURES:
            return None
        return self.error_type or self.reason or self.state


@dataclass(frozen=True)
class AttemptRow:
    """One attempt of one job, from the audit trail."""

    job_id: str
    attempt: int
    state: str
    trace_id: str | None
    span_id: str | None
    error_type: str | None
    error_message: str | None
    reason: str | None
    host: str | None
    pid: int | None
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    heartbeat_interval: float | None = None


@dataclass(frozen=True)
class StageCount:
    """How many jobs of one stage are in one state."""

    depth: int
    name: str
    state: str
    count: int


@dataclass(frozen=True)
class StageStats:
    """The per-stage table of one run: ``(depth, name, state, count)`` rows in that order."""

    root_job_id: str
    rows: tuple[StageCount, ...]

    @property
    def total(self) -> int:
        """Jobs in the run."""
        return sum(row.count for row in self.rows)

    def by_stage(self) -> dict[tuple[int, str], dict[str, int]]:
        """Counts per state for each ``(depth, name)``, in table order."""
        stages: dict[tuple[int, str], dict[str, int]] = {}
        for row in self.rows:
            stages.setdefault((row.depth, row.name), {})[row.state] = row.count
        return stages


@dataclass(frozen=True)
class Stage:
    """One ``(depth, name)`` of a tree, with where it hangs in the collapsed hierarchy.

    Attributes:
        parents: Distinct parent jobs that spawned this stage's jobs (scenario 1: did every page
            that ran spawn its detail job?).
        parent_names: Names of those parents, the most frequent first; the stage is drawn under
            the first.
    """

    depth: int
    name: str
    total: int
    states: Mapping[str, int]
    parents: int
    parent_names: tuple[str, ...]


@dataclass(frozen=True)
class StageTree:
    """A job's subtree collapsed per stage: the anchor job, then one entry per ``(depth, name)``."""

    root: JobRow
    stages: tuple[Stage, ...]

    def children_of(self, stage: Stage) -> list[Stage]:
        """The stages drawn under ``stage``: one level deeper, mostly spawned by jobs named like it."""
        return [
            child
            for child in self.stages
            if child.depth == stage.depth + 1 and child.parent_names[:1] == (stage.name,)
        ]


@dataclass(frozen=True)
class StuckStage:
    """Jobs of one stage on one queue that are waiting or running without any progress.

    Progress is a start, a heartbeat or a finish of any job of the same stage and queue. ``since``
    is the later of the last progress and the enqueueing of the oldest job still waiting: the
    moment from which work was there and nothing moved.

    Attributes:
        active: Jobs queued, stalled, retrying or running.
        idle_seconds: Seconds from ``since`` to the time of the question.
    """

    depth: int
    name: str
    queue: str | None
    active: int
    states: Mapping[str, int]
    since: datetime
    idle_seconds: float
    last_progress_at: datetime | None
    oldest_enqueued_at: datetime | None
    sample_job_ids: tuple[str, ...]
    sample_args: tuple[str | None, ...]


@dataclass(frozen=True)
class ErrorCount:
    """How many jobs ended with one error."""

    error: str
    count: int


@dataclass(frozen=True)
class FailingStage:
    """A stage where enough jobs failed, were discarded or crashed."""

    depth: int
    name: str
    total: int
    failures: int
    ratio: float
    errors: tuple[ErrorCount, ...]


@dataclass(frozen=True)
class FailureSample:
    """One failed job, with the parent it hangs under (scenario 1: which page a showtime came from)."""

    job_id: str
    state: str
    args: str | None
    error_message: str | None
    trace_id: str | None
    span_id: str | None
    finished_at: datetime | None
    parent_job_id: str | None
    parent_name: str | None
    parent_args: str | None


@dataclass(frozen=True)
class FailureGroup:
    """Failures of one stage with one error (the error type, else the state, e.g. ``crashed``)."""

    depth: int
    name: str
    error: str
    count: int
    first_at: datetime | None
    last_at: datetime | None
    samples: tuple[FailureSample, ...]


@dataclass(frozen=True)
class Progress:
    """A parent's direct children, counted the way a waiting parent needs them.

    ``done`` counts every child that will not run again, failed and crashed ones included, so
    ``done == total`` means the parent can stop waiting; ``failed`` (failed or discarded) and
    ``crashed`` are parts of ``done``. ``problems`` lists crashed then failed children.
    """

    parent: JobRow
    total: int
    pending: int
    running: int
    done: int
    succeeded: int
    failed: int
    crashed: int
    states: Mapping[str, int]
    problems: tuple[JobRow, ...]

    @property
    def fraction(self) -> float:
        """Share of children done (1.0 for a parent without children)."""
        return self.done / self.total if self.total else 1.0

    @property
    def complete(self) -> bool:
        """Whether no child will run again."""
        return self.done == self.total


Relation = Literal["self", "ancestor", "descendant", "sibling"]


@dataclass(frozen=True)
class Why:
    """What a job hangs under and the earliest failure that may explain it.

    The candidates are the job itself, its ancestors and its descendants; when the job did not
    fail itself (it waits, runs, or succeeded), also its earlier siblings: enqueued no later than
    the job and failed before it started (or at all, if it never started), as a dependency that
    failed would be. The earliest failure among them, by finish time, is the ``cause``.

    Attributes:
        path: From the root down to the job itself.
        relation: How ``cause`` relates to the job.
        attempts: The job's attempts, first to latest.
    """

    job: JobRow
    path: tuple[JobRow, ...]
    cause: JobRow | None
    relation: Relation | None
    attempts: tuple[AttemptRow, ...]


@dataclass(frozen=True)
class RunSummary:
    """One run at a glance: its root and how many of its jobs are in each state."""

    root: JobRow
    total: int
    states: Mapping[str, int]

    @property
    def failures(self) -> int:
        """Jobs that failed, were discarded or crashed."""
        return sum(self.states.get(state, 0) for state in FAILURES)

    @property
    def active(self) -> int:
        """Jobs not done yet."""
        return sum(self.states.get(state, 0) for state in ACTIVE)

    @property
    def health(self) -> Literal["failing", "active", "ok"]:
        """``failing`` when anything failed, else ``active`` while jobs remain, else ``ok``."""
        if self.failures:
            return "failing"
        return "active" if self.active else "ok"


@dataclass(frozen=True)
class StageSide:
    """One stage in one run of a diff."""

    total: int
    states: Mapping[str, int]
    median_seconds: float | None
    mean_seconds: float | None
    errors: tuple[ErrorCount, ...]


@dataclass(frozen=True)
class StageDiff:
    """One stage in two runs; a stage missing from a run has an empty side."""

    depth: int
    name: str
    a: StageSide
    b: StageSide

    @property
    def total_delta(self) -> int:
        """Jobs in run b minus jobs in run a."""
        return self.b.total - self.a.total

    @property
    def state_deltas(self) -> dict[str, int]:
        """Per state, run b's count minus run a's, for states present in either."""
        states = sorted({*self.a.states, *self.b.states})
        return {s: self.b.states.get(s, 0) - self.a.states.get(s, 0) for s in states}

    @property
    def median_delta(self) -> float | None:
        """Change of the median duration in seconds, when both runs have one."""
        if self.a.median_seconds is None or self.b.median_seconds is None:
            return None
        return self.b.median_seconds - self.a.median_seconds


@dataclass(frozen=True)
class RunDiff:
    """Two runs side by side, stage by stage."""

    a: JobRow
    b: JobRow
    stages: tuple[StageDiff, ...]


@dataclass(frozen=True)
class Overview:
    """Everything ``jobtrace tree`` shows: the stage tree and what is wrong in it."""

    tree: StageTree
    stuck: tuple[StuckStage, ...]
    failing: tuple[FailingStage, ...]
    failures: tuple[FailureGroup, ...]

    @property
    def root(self) -> JobRow:
        """The job the overview is about."""
        return self.tree.root


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
        """One job; raises :class:`JobNotFoundError` for an unknown id, like every method here."""
        with self.engine.connect() as conn:
            return _job(conn, job_id)

    def tree(self, job_id: str) -> list[JobRow]:
        """Every job of the subtree under ``job_id`` (itself included), parents before children."""
        return list(self.iter_tree(job_id))

    def iter_tree(self, job_id: str, *, batch_size: int = 1000) -> Iterator[JobRow]:
        """Like :meth:`tree`, streamed in batches so a 100k-job run never sits in memory."""
        with self.engine.connect() as conn:
            jobs = _scope(_job(conn, job_id))
            stmt = select(jobs).order_by(
                jobs.c.depth, jobs.c.enqueued_at.asc().nulls_first(), jobs.c.job_id
            )
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

    def ancestors(self, job_id: str) -> list[JobRow]:
        """The jobs above ``job_id``, from its root down to its parent (empty for a root)."""
        with self.engine.connect() as conn:
            return _ancestors(conn, _job(conn, job_id))

    def runs(self, limit: int = 20, *, name: str | None = None) -> list[RunSummary]:
        """The latest runs (root jobs by enqueue time), each with its counts per state."""
        with self.engine.connect() as conn:
            return _runs(conn, limit, name)

    def stage_stats(self, job_id: str) -> StageStats:
        """The per-stage table of the run ``job_id`` belongs to (the hot query: no recursion).

        One ``GROUP BY`` on ``root_job_id`` that the ``(root_job_id, depth, name, state)`` index
        covers entirely.
        """
        with self.engine.connect() as conn:
            return _stage_stats(conn, _root_id(conn, job_id))

    def stage_tree(self, job_id: str) -> StageTree:
        """The subtree under ``job_id`` collapsed per stage, each stage under its parents' stage."""
        with self.engine.connect() as conn:
            anchor = _job(conn, job_id)
            return _stage_tree(conn, anchor, _scope(anchor))

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
            return _stuck_stages(conn, jobs, threshold, now or _now(), samples)

    def failing_stages(
        self, job_id: str, *, min_failures: int = 1, min_ratio: float = 0.0
    ) -> list[FailingStage]:
        """Stages under ``job_id`` with at least ``min_failures`` failures and that share of jobs."""
        with self.engine.connect() as conn:
            jobs = _scope(_job(conn, job_id))
            return _failing_stages(conn, jobs, min_failures, min_ratio)

    def failures(self, job_id: str, *, samples: int = 3) -> list[FailureGroup]:
        """Failures under ``job_id`` per ``(stage, error)``, largest first, with sample jobs."""
        with self.engine.connect() as conn:
            jobs = _scope(_job(conn, job_id))
            return _failures(conn, jobs, samples)

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
            return Overview(
                tree=_stage_tree(conn, anchor, jobs, now),
                stuck=tuple(_stuck_stages(conn, jobs, stuck_after, now, samples)),
                failing=tuple(_failing_stages(conn, jobs, min_failures, min_ratio)),
                failures=tuple(_failures(conn, jobs, samples)),
            )

    def progress(self, parent_id: str, *, limit: int = 50) -> Progress:
        """A parent's children as pending / running / done, listing up to ``limit`` problems."""
        with self.engine.connect() as conn:
            return _progress(conn, _job(conn, parent_id), limit)

    def why(self, job_id: str, *, now: datetime | None = None) -> Why:
        """The path from the root to ``job_id`` and the earliest failure related to it."""
        with self.engine.connect() as conn:
            return _why(conn, _job(conn, job_id), now or _now())

    def diff(self, run_a: str, run_b: str) -> RunDiff:
        """Two runs (any job of each) stage by stage: counts, durations, top errors."""
        with self.engine.connect() as conn:
            root_a = _job(conn, _root_id(conn, run_a))
            root_b = _job(conn, _root_id(conn, run_b))
            sides_a = _stage_sides(conn, root_a.job_id)
            sides_b = _stage_sides(conn, root_b.job_id)
        empty = StageSide(0, {}, None, None, ())
        stages = tuple(
            StageDiff(
                depth, name, sides_a.get((depth, name), empty), sides_b.get((depth, name), empty)
            )
            for depth, name in sorted({*sides_a, *sides_b})
        )
        return RunDiff(root_a, root_b, stages)


# The queries, on one connection. ``jobs`` is a scope (see ``_scope``): a run or a subtree.


def _job(conn: Connection, job_id: str) -> JobRow:
    """One job by id; raises :class:`JobNotFoundError`."""
    row = conn.execute(select(JOBS).where(JOBS.c.job_id == job_id)).first()
    if row is None:
        raise JobNotFoundError(job_id)
    return JobRow(**row._mapping)


def _ancestors(conn: Connection, job: JobRow) -> list[JobRow]:
    """The jobs above ``job``, root first, walking ``parent_job_id`` upwards."""
    if job.parent_job_id is None:
        return []
    up = (
        select(JOBS.c.job_id, JOBS.c.parent_job_id, literal(1).label("level"))
        .where(JOBS.c.job_id == job.parent_job_id)
        .cte("ancestors", recursive=True)
    )
    up = up.union_all(
        select(JOBS.c.job_id, JOBS.c.parent_job_id, (up.c.level + 1).label("level"))
        .join(up, JOBS.c.job_id == up.c.parent_job_id)
        .where(up.c.level < MAX_DEPTH)
    )
    stmt = select(JOBS).join(up, JOBS.c.job_id == up.c.job_id).order_by(up.c.level.desc())
    return _job_rows(conn, stmt)


def _runs(conn: Connection, limit: int, name: str | None = None) -> list[RunSummary]:
    """The latest ``limit`` root jobs with their counts per state over the whole run."""
    roots_stmt = select(JOBS).where(JOBS.c.depth == 0)
    if name is not None:
        roots_stmt = roots_stmt.where(JOBS.c.name == name)
    # Two steps instead of NULLS LAST, which would keep PostgreSQL off the (depth, enqueued_at)
    # index: roots with an enqueue time first, newest first, then the others.
    roots = _job_rows(
        conn,
        roots_stmt.where(JOBS.c.enqueued_at.is_not(None))
        .order_by(JOBS.c.enqueued_at.desc(), JOBS.c.job_id.desc())
        .limit(limit),
    )
    if len(roots) < limit:
        roots += _job_rows(
            conn,
            roots_stmt.where(JOBS.c.enqueued_at.is_(None))
            .order_by(JOBS.c.job_id.desc())
            .limit(limit - len(roots)),
        )
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
    return [
        RunSummary(
            root, sum(counts[root.job_id].values()), dict(sorted(counts[root.job_id].items()))
        )
        for root in roots
    ]


def _stage_stats(conn: Connection, root_id: str) -> StageStats:
    """``(depth, name, state, count)`` of one run, from the covering index alone."""
    stmt = (
        select(JOBS.c.depth, JOBS.c.name, JOBS.c.state, func.count())
        .where(JOBS.c.root_job_id == root_id)
        .group_by(JOBS.c.depth, JOBS.c.name, JOBS.c.state)
    )
    counts = {
        (int(depth), name, state): int(count) for depth, name, state, count in conn.execute(stmt)
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
        queued = (int(depth), name, JobState.QUEUED.value)
        scheduled = min(int(count), counts.get(queued, 0))
        if scheduled:
            counts[(int(depth), name, SCHEDULED)] = scheduled
            counts[queued] -= scheduled
            if not counts[queued]:
                del counts[queued]


def _stage_tree(
    conn: Connection, anchor: JobRow, jobs: Subquery, now: datetime | None = None
) -> StageTree:
    """The subtree in ``jobs`` collapsed per ``(depth, name)``, with each stage's parent stages."""
    parent = JOBS.alias("parent")
    spawners = (
        select(
            jobs.c.depth,
            jobs.c.name,
            parent.c.name,
            func.count(),
            func.count(parent.c.job_id.distinct()),
        )
        .join(parent, parent.c.job_id == jobs.c.parent_job_id)
        .where(jobs.c.job_id != anchor.job_id)
        .group_by(jobs.c.depth, jobs.c.name, parent.c.name)
    )
    parent_jobs: Counter[tuple[int, str]] = Counter()
    parent_names: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
    for depth, name, parent_name, count, distinct in conn.execute(spawners):
        parent_names[(int(depth), name)][parent_name] += int(count)
        parent_jobs[(int(depth), name)] += int(distinct)
    stages = tuple(
        Stage(
            depth=depth,
            name=name,
            total=sum(states.values()),
            states=states,
            parents=parent_jobs[(depth, name)],
            parent_names=tuple(n for n, _ in _most_common(parent_names[(depth, name)])),
        )
        for (depth, name), states in _state_counts(conn, jobs, now).items()
    )
    return StageTree(anchor, stages)


def _stuck_stages(
    conn: Connection, jobs: Subquery, threshold: float, now: datetime, samples: int
) -> list[StuckStage]:
    """Stage and queue groups with active jobs whose last progress is older than ``threshold``."""
    # A job scheduled for later is not waiting yet: it counts from when it is due.
    not_scheduled = or_(jobs.c.due_at.is_(None), jobs.c.due_at <= now)
    active = and_(jobs.c.state.in_(ACTIVE), not_scheduled)
    stmt = (
        select(
            jobs.c.depth,
            jobs.c.name,
            jobs.c.queue,
            jobs.c.state,
            func.count(),
            func.min(func.coalesce(jobs.c.due_at, jobs.c.enqueued_at)),
            func.max(jobs.c.started_at),
            func.max(jobs.c.heartbeat_at),
            func.max(jobs.c.finished_at),
        )
        .where(not_scheduled)
        .group_by(jobs.c.depth, jobs.c.name, jobs.c.queue, jobs.c.state)
    )
    groups: dict[tuple[int, str, str | None], _QueueGroup] = {}
    for depth, name, queue, state, count, enqueued, started, beat, finished in conn.execute(stmt):
        group = groups.setdefault((int(depth), name, queue), _QueueGroup())
        group.last_progress = _latest(group.last_progress, started, beat, finished)
        if state in ACTIVE:
            group.states[state] = int(count)
            group.oldest = _earliest(group.oldest, enqueued)
    stuck = []
    for (depth, name, queue), group in sorted(groups.items(), key=_group_order):
        if not group.states:
            continue
        since = _latest(group.last_progress, group.oldest)
        if since is None:
            continue  # nothing tells when the work arrived: no ground to call it stuck
        idle = (now - since).total_seconds()
        if idle <= threshold:
            continue
        sample_stmt = (
            select(jobs.c.job_id, jobs.c.args)
            .where(jobs.c.depth == depth, jobs.c.name == name, _same_queue(jobs, queue), active)
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


def _failing_stages(
    conn: Connection, jobs: Subquery, min_failures: int, min_ratio: float
) -> list[FailingStage]:
    """Stages whose failed, discarded and crashed jobs pass both thresholds."""
    errors = _error_counts(conn, jobs)
    failing = []
    for (depth, name), states in _state_counts(conn, jobs).items():
        by_error = errors.get((depth, name), Counter())
        failed = sum(by_error.values())
        total = sum(states.values())
        if failed >= max(1, min_failures) and failed / total >= min_ratio:
            top = tuple(ErrorCount(e, c) for e, c in _most_common(by_error))
            failing.append(FailingStage(depth, name, total, failed, failed / total, top))
    return failing


def _failures(conn: Connection, jobs: Subquery, samples: int) -> list[FailureGroup]:
    """Failures per ``(depth, name, error)``, each with its first jobs and their parents."""
    error = _error(jobs)
    stmt = (
        select(
            jobs.c.depth,
            jobs.c.name,
            error,
            func.count(),
            func.min(jobs.c.finished_at),
            func.max(jobs.c.finished_at),
        )
        .where(jobs.c.state.in_(FAILURES))
        .group_by(jobs.c.depth, jobs.c.name, error)
    )
    groups = sorted(conn.execute(stmt).all(), key=lambda r: (-int(r[3]), int(r[0]), r[1], r[2]))
    parent = JOBS.alias("parent")
    result = []
    for depth, name, error_text, count, first_at, last_at in groups:
        sample_stmt = (
            select(
                jobs.c.job_id,
                jobs.c.state,
                jobs.c.args,
                jobs.c.error_message,
                jobs.c.trace_id,
                jobs.c.span_id,
                jobs.c.finished_at,
                jobs.c.parent_job_id,
                parent.c.name.label("parent_name"),
                parent.c.args.label("parent_args"),
            )
            .outerjoin(parent, parent.c.job_id == jobs.c.parent_job_id)
            .where(
                jobs.c.depth == depth,
                jobs.c.name == name,
                jobs.c.state.in_(FAILURES),
                error == error_text,
            )
            .order_by(jobs.c.finished_at.asc().nulls_last(), jobs.c.job_id)
            .limit(samples)
        )
        picked = tuple(FailureSample(**row._mapping) for row in conn.execute(sample_stmt))
        result.append(
            FailureGroup(int(depth), name, error_text, int(count), first_at, last_at, picked)
        )
    return result


def _progress(conn: Connection, parent: JobRow, limit: int) -> Progress:
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
    )


def _why(conn: Connection, job: JobRow, now: datetime) -> Why:
    """See :class:`Why` for which failures count as related."""
    path = (*_ancestors(conn, job), job)
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
    return Why(job, path, cause, relation, attempts)


# Helpers.


def _not_due(jobs: Table | Subquery, now: datetime) -> ColumnElement[bool]:
    """Queued and scheduled for after ``now``: what the per-stage counts call :data:`SCHEDULED`."""
    return and_(jobs.c.state == JobState.QUEUED.value, jobs.c.due_at > now)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _earliest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _failed_at(job: JobRow) -> datetime | None:
    return job.finished_at or job.heartbeat_at or job.updated_at or job.started_at


def _most_common(counts: Counter[str]) -> list[tuple[str, int]]:
    """Largest first, then by name: stable output for equal counts."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _group_order(item: tuple[tuple[int, str, str | None], object]) -> tuple[int, str, str]:
    depth, name, queue = item[0]
    return depth, name, queue or ""


@dataclass
class _QueueGroup:
    """What the stuck query gathers per ``(depth, name, queue)``."""

    states: dict[str, int] = field(default_factory=dict)
    oldest: datetime | None = None
    last_progress: datetime | None = None


def _job_rows(conn: Connection, stmt: Select[Any]) -> list[JobRow]:
    return [JobRow(**row._mapping) for row in conn.execute(stmt)]


def _root_id(conn: Connection, job_id: str) -> str:
    root = conn.execute(select(JOBS.c.root_job_id).where(JOBS.c.job_id == job_id)).scalar()
    if root is None:
        raise JobNotFoundError(job_id)
    return str(root)


def _scope(anchor: JobRow) -> Subquery:
    """The rows under ``anchor`` (itself included) as a subquery with every job column.

    A root's run is one indexed filter on ``root_job_id``; any other job's subtree is a recursive
    walk down ``parent_job_id`` (also indexed).
    """
    if anchor.is_root:
        return _run(anchor.job_id)
    down = (
        select(JOBS.c.job_id, literal(0).label("level"))
        .where(JOBS.c.job_id == anchor.job_id)
        .cte("subtree", recursive=True)
    )
    down = down.union_all(
        select(JOBS.c.job_id, (down.c.level + 1).label("level"))
        .join(down, JOBS.c.parent_job_id == down.c.job_id)
        .where(down.c.level < MAX_DEPTH)
    )
    return select(JOBS).join(down, JOBS.c.job_id == down.c.job_id).subquery("jobs")


def _error(jobs: Subquery) -> ColumnElement[str | None]:
    """A failed job's error in one word (error type, else reason, else state); NULL otherwise.

    Empty strings count as missing, as in :attr:`JobRow.error`.
    """
    return case(
        (
            jobs.c.state.in_(FAILURES),
            func.coalesce(
                func.nullif(jobs.c.error_type, ""), func.nullif(jobs.c.reason, ""), jobs.c.state
            ),
        ),
        else_=None,
    )


def _same_queue(jobs: Subquery, queue: str | None) -> ColumnElement[bool]:
    return jobs.c.queue.is_(None) if queue is None else jobs.c.queue == queue


def _first_failure(conn: Connection, stmt: Select[Any], jobs: Subquery | Table) -> JobRow | None:
    """The earliest finished failure ``stmt`` selects from ``jobs``."""
    picked = stmt.where(jobs.c.state.in_(FAILURES)).order_by(
        jobs.c.finished_at.asc().nulls_last(), jobs.c.job_id
    )
    rows = _job_rows(conn, picked.limit(1))
    return rows[0] if rows else None


def _run(root_id: str) -> Subquery:
    return select(JOBS).where(JOBS.c.root_job_id == root_id).subquery("jobs")


def _state_counts(
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
        counts.setdefault((int(depth), name), {})[state_name] = int(count)
    return counts


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
        errors[(int(depth), name)][error_text] = int(count)
    return errors


def _stage_sides(conn: Connection, root_id: str) -> dict[tuple[int, str], StageSide]:
    """Per stage of one run: counts per state, duration median and mean, top errors."""
    run = _run(root_id)
    durations: dict[tuple[int, str], list[float]] = defaultdict(list)
    timing = select(run.c.depth, run.c.name, run.c.started_at, run.c.finished_at).where(
        run.c.started_at.is_not(None), run.c.finished_at.is_not(None)
    )
    for depth, name, started, finished in conn.execute(timing):
        durations[(int(depth), name)].append((finished - started).total_seconds())
    errors = _error_counts(conn, run)
    sides = {}
    for key, states in _state_counts(conn, run).items():
        times = durations.get(key, [])
        sides[key] = StageSide(
            total=sum(states.values()),
            states=states,
            median_seconds=statistics.median(times) if times else None,
            mean_seconds=statistics.fmean(times) if times else None,
            errors=tuple(ErrorCount(e, c) for e, c in _most_common(errors[key])[:3]),
        )
    return sides
