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
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from types import TracebackType
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Subquery,
    Table,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine

from jobtrace.lineage import joblist, stagetimes
from jobtrace.lineage._merge import safe_id
from jobtrace.lineage.joblist import Cursor, JobFilter, JobPage, QueueView
from jobtrace.lineage.models import ID_LENGTH, Attempt, Base, Job
from jobtrace.lineage.stagetimes import StageTimes
from jobtrace.records import DONE_STATES, FAILED_STATES, JobState

__all__ = [
    "ACTIVE",
    "DONE",
    "FAILURES",
    "PENDING",
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
    "RunDiff",
    "RunReport",
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
#: Not a stored state: how per-stage counts show queued jobs whose ``due_at`` is still ahead
#: (defined beside the job lists, which filter on it).
SCHEDULED = joblist.SCHEDULED
#: What the store cannot tell: a job only named as a parent or root, or one it lost track of.
#: Neither active nor a failure nor done.
UNKNOWN = JobState.UNKNOWN.value
#: The name of a job the store knows only because another job named it (as the writer puts it).
PLACEHOLDER_NAME = "?"
#: The ``depth`` of a stage (or a cut path) whose jobs no record gave a depth.
UNKNOWN_DEPTH = -1

#: Ancestors a path walks up by default before it stops and says it was truncated.
MAX_DEPTH = 10_000
#: Seconds without progress after which a stage with active jobs counts as stuck.
STUCK_AFTER = 300.0


class JobNotFoundError(LookupError):
    """No job with this id is recorded in the store."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} in the lineage store")
        self.job_id = job_id


#: The ending of a shortened id as the docs and the tree print it (``7d1e…``).
ELLIPSIS = "\u2026"


class AmbiguousJobIdError(LookupError):
    """An id prefix that several jobs start with (see :meth:`LineageStore.resolve`).

    Attributes:
        prefix: The prefix searched, without its ``…``.
        candidates: The first jobs it matches, by id.
        more: Whether more jobs match than ``candidates`` holds.
    """

    def __init__(self, prefix: str, candidates: tuple[JobRow, ...], more: bool) -> None:
        listed = ", ".join(job.job_id for job in candidates) + (", …" if more else "")
        super().__init__(f"job id prefix {prefix!r} matches several jobs: {listed}")
        self.prefix = prefix
        self.candidates = candidates
        self.more = more


@dataclass(frozen=True)
class JobRow:
    """One job as the store holds it: its latest attempt and its place in the tree.

    ``root_job_id`` and ``depth`` are ``None`` while no record of the job said them.
    """

    job_id: str
    name: str
    queue: str | None
    system: str | None
    state: str
    attempt: int
    parent_job_id: str | None
    root_job_id: str | None
    depth: int | None
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
    def is_placeholder(self) -> bool:
        """Whether the store knows this job only because another job named it (never recorded)."""
        return self.state == UNKNOWN and self.attempt == 0

    @property
    def lost_track(self) -> bool:
        """Whether the job was recorded but the store lost track of how it went on."""
        return self.state == UNKNOWN and self.attempt > 0

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
    """A job's subtree collapsed per stage: the anchor job, then one entry per ``(depth, name)``.

    Stages at :data:`UNKNOWN_DEPTH` hang under no stage.
    """

    root: JobRow
    stages: tuple[Stage, ...]

    def children_of(self, stage: Stage) -> list[Stage]:
        """The stages drawn under ``stage``: one level deeper, mostly spawned by jobs named like it.

        A stage none of whose parents is known (under a placeholder, say) hangs under the only stage
        one level up, when there is one.
        """
        return list(self._children.get((stage.depth, stage.name), ()))

    @cached_property
    def _children(self) -> dict[tuple[int, str], list[Stage]]:
        """``(depth, name)`` to the stages drawn under it: one pass, for trees thousands deep."""
        at_depth: dict[int, list[Stage]] = defaultdict(list)
        for stage in self.stages:
            at_depth[stage.depth].append(stage)
        children: dict[tuple[int, str], list[Stage]] = defaultdict(list)
        for stage in self.stages:
            if stage.depth == UNKNOWN_DEPTH or stage.depth - 1 == UNKNOWN_DEPTH:
                continue
            above = at_depth.get(stage.depth - 1, [])
            if stage.parent_names:
                name = stage.parent_names[0]
            elif len(above) == 1:
                name = above[0].name
            else:
                continue
            if any(parent.name == name for parent in above):
                children[(stage.depth - 1, name)].append(stage)
        return children


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
    ``unknown`` children (never recorded, or lost track of) are none of pending, running and done:
    nobody can say whether they will run again, so they keep the parent from being complete.
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
    unknown: int = 0

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
        path: From the root down to the job itself; where it starts lower, ``cycle_at`` or
            ``truncated_at`` says why (as on :class:`Ancestors`).
        relation: How ``cause`` relates to the job.
        attempts: The job's attempts, first to latest.
    """

    job: JobRow
    path: tuple[JobRow, ...]
    cause: JobRow | None
    relation: Relation | None
    attempts: tuple[AttemptRow, ...]
    cycle_at: str | None = None
    truncated_at: int | None = None


class Ancestors(list[JobRow]):
    """The jobs above a job, root first: a plain list, plus why the walk up stopped where it did.

    The walk normally ends at the root, a job without a parent; both fields are then ``None``.

    Attributes:
        cycle_at: The job id whose parent link led back to a job already on the path (the job
            itself, or the first job listed): a parent cycle in the metadata.
        truncated_at: The depth of the first job listed when the walk stopped at its limit with
            more ancestors above (:data:`UNKNOWN_DEPTH` if that job has no depth).

    A parent or root named but never recorded appears as a placeholder row (see
    :attr:`JobRow.is_placeholder`). When the walk ends at a job whose parent is not known but whose
    root is another job, the path goes on at that root.
    """

    cycle_at: str | None = None
    truncated_at: int | None = None


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
    def unknown(self) -> int:
        """Jobs the store cannot tell about: never recorded (a placeholder) or lost track of."""
        return self.states.get(UNKNOWN, 0)

    @property
    def health(self) -> Literal["failing", "active", "ok"]:
        """``failing`` when anything failed, else ``active`` while jobs remain, else ``ok``.

        Unknown jobs count as neither: see :attr:`unknown`.
        """
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


@dataclass(frozen=True)
class RunReport:
    """A run's :class:`Overview` and its stage times (see :meth:`LineageStore.run_report`)."""

    overview: Overview
    times: dict[tuple[int, str], StageTimes]


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
            return _resolve(conn, typed, max(candidates, 1))

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
            return _ancestors(conn, _job(conn, job_id), _limit(limit))

    def runs(self, limit: int = 20, *, name: str | None = None) -> list[RunSummary]:
        """The latest runs, each with its counts per state.

        Roots are ordered by when they were enqueued, else started, else first heard of (a
        placeholder root, which no record of its own ever reached).
        """
        with self.engine.connect() as conn:
            return _runs(conn, limit, name)

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
                return _stage_stats(conn, str(root_id))
            # No row, or a row that never said its root: find the run by walking up.
            anchor = _run_anchor(conn, _job(conn, job_id))
            if anchor.is_root:
                return _stage_stats(conn, anchor.job_id)
            counts = _state_counts(conn, _scope(anchor))
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
            groups = _RunGroups.read(conn, jobs, now, samples)
            return _overview(
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
            groups = _RunGroups.read(conn, jobs, now, samples)
            overview = _overview(
                conn, anchor, jobs, groups, now, stuck_after, min_failures, min_ratio, samples
            )
            root_id = anchor.job_id if anchor.is_root else None
            times = stagetimes.stage_times(conn, jobs, root_id=root_id, bounds=groups.bounds)
            return RunReport(overview, times)

    def progress(self, parent_id: str, *, limit: int = 50) -> Progress:
        """A parent's children as pending / running / done, listing up to ``limit`` problems."""
        with self.engine.connect() as conn:
            return _progress(conn, _job(conn, parent_id), limit)

    def why(self, job_id: str, *, now: datetime | None = None, limit: int | None = None) -> Why:
        """The path from the root to ``job_id`` and the earliest failure related to it.

        Args:
            limit: Most ancestors on the path, as for :meth:`ancestors`.
        """
        with self.engine.connect() as conn:
            return _why(conn, _job(conn, job_id), now or _now(), _limit(limit))

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
            root_a = _run_anchor(conn, _job(conn, run_a))
            root_b = _run_anchor(conn, _job(conn, run_b))
            sides_a = _stage_sides(conn, root_a)
            sides_b = _stage_sides(conn, root_b)
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
    """One job by id, else a placeholder if another job names it; raises :class:`JobNotFoundError`."""
    row = conn.execute(select(JOBS).where(JOBS.c.job_id == job_id)).first()
    if row is not None:
        return JobRow(**row._mapping)
    # A store written before the writer kept placeholders: the job exists only as a name.
    roles: tuple[tuple[Any, Literal["root", "parent"]], ...] = (
        (JOBS.c.root_job_id, "root"),
        (JOBS.c.parent_job_id, "parent"),
    )
    for column, role in roles:
        named = _job_rows(conn, select(JOBS).where(column == job_id).limit(1))
        if named:
            return _placeholder(job_id, named[0], role)
    raise JobNotFoundError(job_id)


def _resolve(conn: Connection, typed: str, candidates: int) -> str:
    """See :meth:`LineageStore.resolve`: an exact id first, then a prefix."""
    # Ids are stored as the metadata contract repairs them (control characters and lone
    # surrogates escaped), so look up what the store would have filed ``typed`` under.
    exact = safe_id(typed) or ""
    if exact:
        try:
            return _job(conn, exact).job_id
        except JobNotFoundError:
            pass
    prefix = safe_id(typed.removesuffix(ELLIPSIS)) or ""
    if not prefix:
        raise JobNotFoundError(typed)
    column = JOBS.c.job_id
    if _orders_by_code_point(conn):
        # Ids compare by their UTF-8 bytes, i.e. by code point: a range on the primary key's
        # index. (SQLite's LIKE ignores ASCII case and cannot use that index.)
        match = column >= prefix
        upper = _prefix_upper(prefix)
        if upper is not None:
            match = and_(match, column < upper)
    else:
        # Under a language collation a range is not a prefix; LIKE is, in any collation.
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        match = column.like(escaped + "%", escape="\\")
    stmt = select(JOBS).where(match).order_by(column).limit(candidates + 1)
    found = [job for job in _job_rows(conn, stmt) if job.job_id.startswith(prefix)]
    if not found:
        raise JobNotFoundError(typed)
    if len(found) == 1:
        return found[0].job_id
    raise AmbiguousJobIdError(prefix, tuple(found[:candidates]), len(found) > candidates)


def _job_page(
    conn: Connection, where: JobFilter, after: Cursor | None, limit: int, now: datetime
) -> JobPage:
    page = joblist.job_page(conn, JOBS, where, after=after, limit=limit, now=now)
    rows = tuple(JobRow(**row._mapping) for row in page.jobs)
    return dataclasses.replace(page, jobs=rows)


def _orders_by_code_point(conn: Connection) -> bool:
    """Whether the store compares ids by code point (SQLite; PostgreSQL under C collations)."""
    if conn.dialect.name == "sqlite":
        return True
    if conn.dialect.name != "postgresql":
        return False
    # The columns of pg_database vary by version (15 adds the provider, 17 ``datlocale``).
    found = conn.execute(
        text("SELECT to_jsonb(d) FROM pg_database d WHERE datname = current_database()")
    ).scalar()
    database: dict[str, Any] = found if isinstance(found, dict) else {}
    provider = database.get("datlocprovider", "c")
    locale = database.get("datlocale") if provider == "b" else database.get("datcollate")
    return provider in ("b", "c") and str(locale).lower() in _CODE_POINT_LOCALES


#: Locales whose collation is the order of code points (UTF-8 bytes).
_CODE_POINT_LOCALES = frozenset({"c", "posix", "c.utf-8", "c.utf8"})


def _prefix_upper(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (``None``: there is none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:
            code = 0xE000  # surrogates are not characters
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _placeholder(job_id: str, child: JobRow, role: Literal["parent", "root"]) -> JobRow:
    """The row the writer keeps for a job ``child`` names as its parent or root (see _merge)."""
    if role == "root":
        root: str | None = job_id
        depth: int | None = 0
    else:
        root = child.root_job_id
        depth = None if child.depth is None else max(child.depth - 1, 0)
    empty: dict[str, Any] = dict.fromkeys(f.name for f in dataclasses.fields(JobRow))
    values = {
        "job_id": job_id,
        "name": PLACEHOLDER_NAME,
        "system": child.system,
        "state": UNKNOWN,
        "attempt": 0,
        "root_job_id": root,
        "depth": depth,
        "reason": f"named as the {role} of {child.job_id}; never recorded",
    }
    return JobRow(**{**empty, **values})


def _limit(limit: int | None) -> int:
    """The walk's limit: ``MAX_DEPTH`` read at call time, so a test (or a caller) can lower it."""
    return MAX_DEPTH if limit is None else max(limit, 0)


def _ancestors(conn: Connection, job: JobRow, limit: int) -> Ancestors:
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


def _runs(conn: Connection, limit: int, name: str | None = None) -> list[RunSummary]:
    """The latest ``limit`` root jobs with their counts per state over the whole run."""
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


def _run_anchor(conn: Connection, job: JobRow) -> JobRow:
    """The root of ``job``'s run; for a job no record gave a root, the nearest known one above.

    Without any known root above, the topmost job reachable: its subtree stands for the run.
    """
    if job.root_job_id is not None:
        return job if job.is_root else _job(conn, job.root_job_id)
    path = _ancestors(conn, job, _limit(None))
    for above in reversed(path):
        if above.root_job_id is not None:
            return above if above.is_root else _job(conn, above.root_job_id)
    return path[0] if path else job


def _stage_stats(conn: Connection, root_id: str) -> StageStats:
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


def _overview(
    conn: Connection,
    anchor: JobRow,
    jobs: Subquery,
    groups: _RunGroups,
    now: datetime,
    stuck_after: float,
    min_failures: int,
    min_ratio: float,
    samples: int,
) -> Overview:
    """The tree, the stuck, the failing and the failures, all from one grouped read."""
    return Overview(
        tree=_stage_tree(conn, anchor, jobs, now, groups),
        stuck=tuple(_stuck_stages(conn, jobs, stuck_after, now, samples, groups)),
        failing=tuple(_failing_stages(conn, jobs, min_failures, min_ratio, groups)),
        failures=tuple(_failures(conn, jobs, samples, groups)),
    )


@dataclass
class _RunGroups:
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
    def read(cls, conn: Connection, jobs: Subquery, now: datetime, samples: int = 3) -> _RunGroups:
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
        error = _error(jobs).label("error")
        by_error = _error(jobs)
        first_jobs = (c.finished_at.asc().nulls_last(), c.job_id)
        parent = JOBS.alias("parent")
        # Per stage with failures, so each is an index range of its failed jobs only: one read
        # for the counts per error, their first and last finish and their first jobs.
        for depth, name in sorted(failed_stages):
            ranked = (
                select(
                    *(c[column] for column in _SAMPLE_COLUMNS),
                    error,
                    func.count().over(partition_by=by_error).label("jobs"),
                    func.min(c.finished_at).over(partition_by=by_error).label("first_at"),
                    func.max(c.finished_at).over(partition_by=by_error).label("last_at"),
                    func.row_number().over(partition_by=by_error, order_by=first_jobs).label("n"),
                )
                .where(_at_depth(jobs, depth), c.name == name, c.state.in_(FAILURES))
                .subquery("ranked")
            )
            failed_stmt = (
                select(
                    ranked,
                    parent.c.name.label("parent_name"),
                    parent.c.args.label("parent_args"),
                )
                .outerjoin(parent, parent.c.job_id == ranked.c.parent_job_id)
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


def _stage_tree(
    conn: Connection,
    anchor: JobRow,
    jobs: Subquery,
    now: datetime | None = None,
    groups: _RunGroups | None = None,
) -> StageTree:
    """The subtree in ``jobs`` collapsed per ``(depth, name)``, with each stage's parent stages.

    The children are grouped per parent first, and only those groups meet their parent's row:
    one join per parent, not one per job.
    """
    groups = groups or _RunGroups.read(conn, jobs, now or _now())
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


def _stuck_stages(
    conn: Connection,
    jobs: Subquery,
    threshold: float,
    now: datetime,
    samples: int,
    groups: _RunGroups | None = None,
) -> list[StuckStage]:
    """Stage and queue groups with active jobs whose last progress is older than ``threshold``."""
    # A job scheduled for later is not waiting yet: it counts from when it is due.
    not_scheduled = or_(jobs.c.due_at.is_(None), jobs.c.due_at <= now)
    groups = groups or _RunGroups.read(conn, jobs, now)
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


def _failing_stages(
    conn: Connection,
    jobs: Subquery,
    min_failures: int,
    min_ratio: float,
    groups: _RunGroups | None = None,
) -> list[FailingStage]:
    """Stages whose failed, discarded and crashed jobs pass both thresholds."""
    groups = groups or _RunGroups.read(conn, jobs, _now())
    failing = []
    for (depth, name), states in groups.states.items():
        by_error = groups.errors.get((depth, name), Counter())
        failed = sum(by_error.values())
        total = sum(states.values())
        if failed >= max(1, min_failures) and failed / total >= min_ratio:
            top = tuple(ErrorCount(e, c) for e, c in _most_common(by_error))
            failing.append(FailingStage(depth, name, total, failed, failed / total, top))
    return failing


def _failures(
    conn: Connection, jobs: Subquery, samples: int, groups: _RunGroups | None = None
) -> list[FailureGroup]:
    """Failures per ``(depth, name, error)``, each with its first jobs and their parents."""
    groups = groups or _RunGroups.read(conn, jobs, _now(), samples)
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
        unknown=states.get(UNKNOWN, 0),
    )


def _why(conn: Connection, job: JobRow, now: datetime, limit: int) -> Why:
    """See :class:`Why` for which failures count as related."""
    ancestors = _ancestors(conn, job, limit)
    path = (*ancestors, job)
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
    return Why(job, path, cause, relation, attempts, ancestors.cycle_at, ancestors.truncated_at)


# Helpers.


def _not_due(jobs: Table | Subquery, now: datetime) -> ColumnElement[bool]:
    """Queued and scheduled for after ``now``: what the per-stage counts call :data:`SCHEDULED`."""
    return and_(jobs.c.state == JobState.QUEUED.value, jobs.c.due_at > now)


def _depth(value: int | None) -> int:
    """A stage's depth: the stored one, or :data:`UNKNOWN_DEPTH` where no record said it."""
    return UNKNOWN_DEPTH if value is None else int(value)


def _at_depth(jobs: Subquery, depth: int) -> ColumnElement[bool]:
    """The jobs of a stage at ``depth`` (from :func:`_depth`)."""
    return jobs.c.depth.is_(None) if depth == UNKNOWN_DEPTH else jobs.c.depth == depth


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


def _scope(anchor: JobRow) -> Subquery:
    """The rows under ``anchor`` (itself included) as a subquery with every job column.

    A root's run is one indexed filter on ``root_job_id``; any other job's subtree is a recursive
    walk down ``parent_job_id`` (also indexed), to any depth. It is a ``UNION`` of job ids, not a
    ``UNION ALL``: a job met again adds no row, so each job is in the subtree once and a parent
    cycle ends the walk instead of repeating it. The walk starts from the id, so the subtree of a
    job known only by name (no row) is what hangs under it.
    """
    if anchor.is_root:
        return _run(anchor.job_id)
    start = cast(literal(anchor.job_id), String(ID_LENGTH)).label("job_id")
    down = select(start).cte("subtree", recursive=True)
    down = down.union(select(JOBS.c.job_id).join(down, JOBS.c.parent_job_id == down.c.job_id))
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
        counts.setdefault((_depth(depth), name), {})[state_name] = int(count)
    return dict(sorted(counts.items()))  # unknown depths first on every database


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


def _stage_sides(conn: Connection, anchor: JobRow) -> dict[tuple[int, str], StageSide]:
    """Per stage of one run (see :func:`_run_anchor`): counts, duration median and mean, errors."""
    run = _scope(anchor)
    durations: dict[tuple[int, str], list[float]] = defaultdict(list)
    timing = select(run.c.depth, run.c.name, run.c.started_at, run.c.finished_at).where(
        run.c.started_at.is_not(None), run.c.finished_at.is_not(None)
    )
    for depth, name, started, finished in conn.execute(timing):
        durations[(_depth(depth), name)].append((finished - started).total_seconds())
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
