"""What the lineage store's questions answer: frozen result rows, their errors, the state groups.

Results are frozen dataclasses; states are the plain strings of :class:`~jobtrace.JobState` so a
store written by a newer jobtrace still reads. :class:`~jobtrace.lineage.queries.LineageStore`
returns them (and re-exports them, so ``from jobtrace.lineage.queries import JobRow`` works).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Literal

from jobtrace.lineage import joblist
from jobtrace.lineage.stagetimes import StageTimes
from jobtrace.records import DONE_STATES, FAILED_STATES, JobState

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
    def scheduled(self) -> int:
        """Queued jobs not due yet (``scheduled``, as the stage tree counts them): not active,
        still to do."""
        return self.states.get(SCHEDULED, 0)

    @property
    def unknown(self) -> int:
        """Jobs the store cannot tell about: never recorded (a placeholder) or lost track of."""
        return self.states.get(UNKNOWN, 0)

    @property
    def health(self) -> Literal["failing", "active", "ok"]:
        """``failing`` when anything failed, else ``active`` while jobs remain (scheduled ones
        too), else ``ok``.

        Unknown jobs count as neither: see :attr:`unknown`.
        """
        if self.failures:
            return "failing"
        return "active" if self.active or self.scheduled else "ok"


@dataclass(frozen=True)
class RunStatus:
    """One run of the runs list with its stuck stages, what its health is judged from.

    Attributes:
        stuck: Its stuck stages per queue, as :meth:`LineageStore.stuck_stages` lists them (with
            one sample job each); empty for a run with no job waiting or running.
    """

    summary: RunSummary
    stuck: tuple[StuckStage, ...]


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


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()
