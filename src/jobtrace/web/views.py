"""What each page shows, read from one snapshot of the store and shared by its HTML and its JSON twin.

Gathering the data apart from drawing it keeps the two forms of a page from drifting: the JSON twin
is the view itself, plus the derived numbers and trace links the HTML shows. Every view carries
``as_of`` (the moment its snapshot shows) and ``live`` (whether work is still in progress, so the
page keeps polling).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from jobtrace.display import state_order
from jobtrace.display.health import Health, run_health, stuck_stage_count
from jobtrace.lineage.export import jsonable
from jobtrace.lineage.joblist import Cursor, JobFilter, JobPage, QueueView
from jobtrace.lineage.queries import (
    ACTIVE,
    FAILURES,
    SCHEDULED,
    STUCK_AFTER,
    JobRow,
    LineageStore,
    Overview,
    Progress,
    RunDiff,
    RunSummary,
    Stage,
    Why,
)
from jobtrace.lineage.stagetimes import StageTimes
from jobtrace.web.links import Links
from jobtrace.web.traces import RunTraces, previous_run, run_traces

__all__ = [
    "CompareView",
    "JobListView",
    "JobView",
    "QueuesView",
    "RunEntry",
    "RunView",
    "RunsView",
    "StageRow",
    "Thresholds",
    "View",
    "compare_view",
    "job_list_view",
    "job_view",
    "queues_view",
    "run_view",
    "runs_view",
    "to_json",
]

Flag = Literal["stuck", "failing"]
_STILL_TO_DO = frozenset((*ACTIVE, SCHEDULED))


@dataclass(frozen=True)
class Thresholds:
    """What makes a stage stuck or failing: the ``--stuck-after``, ``--min-failures`` and
    ``--fail-ratio`` of ``jobtrace tree``, as query parameters."""

    stuck_after: float = STUCK_AFTER
    min_failures: int = 1
    fail_ratio: float = 0.0


@dataclass(frozen=True)
class RunEntry:
    """One run of the front page and its health."""

    summary: RunSummary
    health: Health


@dataclass(frozen=True)
class RunsView:
    """The front page: the latest runs."""

    runs: tuple[RunEntry, ...]
    limit: int
    name: str | None
    as_of: datetime

    @property
    def live(self) -> bool:
        """Always: a new run may start at any time."""
        return True


@dataclass(frozen=True)
class StageRow:
    """One row of the per-stage table, as ``jobtrace stats`` prints it."""

    depth: int
    name: str
    state: str
    count: int
    flag: Flag | None


@dataclass(frozen=True)
class RunView:
    """One run: its overview and the per-stage table derived from it (one snapshot, not two)."""

    overview: Overview
    rows: tuple[StageRow, ...]
    thresholds: Thresholds
    health: Health
    as_of: datetime
    times: dict[tuple[int, str], StageTimes] = dataclasses.field(default_factory=dict)
    traces: RunTraces = dataclasses.field(default_factory=lambda: RunTraces((), 0))
    #: The latest run of the same root job name before this one.
    previous: JobRow | None = None

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages, by depth then name, each with its "from N parents"."""
        return tuple(sorted(self.overview.tree.stages, key=lambda s: (s.depth, s.name)))

    @property
    def total(self) -> int:
        """Jobs in the run."""
        return sum(row.count for row in self.rows)

    @property
    def live(self) -> bool:
        """Whether some job of the run is still to do."""
        return any(row.state in _STILL_TO_DO and row.count for row in self.rows)

    @property
    def stage_count(self) -> int:
        """Stages in the run."""
        return len({(row.depth, row.name) for row in self.rows})

    @property
    def failing_keys(self) -> frozenset[tuple[int, str]]:
        """``(depth, name)`` of the failing stages."""
        return frozenset((stage.depth, stage.name) for stage in self.overview.failing)

    def stage_total(self, depth: int, name: str) -> int:
        """Jobs of one stage (the share a failure group is of its stage)."""
        return sum(row.count for row in self.rows if (row.depth, row.name) == (depth, name))

    @property
    def window(self) -> tuple[datetime | None, datetime | None]:
        """When the run went on: its first enqueue (or start) to its last finish, or now if live."""
        root = self.overview.root
        starts = [t.first_enqueued_at or t.first_started_at for t in self.times.values()]
        start = min([s for s in starts if s is not None], default=None)
        start = start or root.enqueued_at or root.started_at
        ends = [t.last_finished_at for t in self.times.values() if t.last_finished_at]
        end = None if self.live else max(ends, default=root.finished_at)
        return start, end

    def trace_url(self, links: Links, trace_id: str | None) -> str | None:
        """A trace of the run, over the run's time range."""
        return links.trace(trace_id, *self.window, now=self.as_of)


@dataclass(frozen=True)
class CompareView:
    """Two runs stage by stage, as ``jobtrace diff`` prints them: run ``a`` against run ``b``."""

    diff: RunDiff
    as_of: datetime

    @property
    def live(self) -> bool:
        """Whether either run still has jobs to do."""
        return any(
            state in _STILL_TO_DO and count
            for stage in self.diff.stages
            for side in (stage.a, stage.b)
            for state, count in side.states.items()
        )

    @property
    def totals(self) -> tuple[int, int]:
        """Jobs in run a and in run b."""
        return (
            sum(stage.a.total for stage in self.diff.stages),
            sum(stage.b.total for stage in self.diff.stages),
        )


@dataclass(frozen=True)
class JobView:
    """One job: where it hangs and why (``why``), its children, and whether more were left out."""

    why: Why
    progress: Progress
    children: tuple[JobRow, ...]
    limit: int
    as_of: datetime

    @property
    def job(self) -> JobRow:
        """The job the page is about."""
        return self.why.job

    @property
    def more_children(self) -> int:
        """Children not listed because of the limit."""
        return max(0, self.progress.total - len(self.children))

    @property
    def live(self) -> bool:
        """Whether the job or one of its children is still to do."""
        p = self.progress
        return self.job.state in _STILL_TO_DO or bool(p.pending or p.running)


@dataclass(frozen=True)
class JobListView:
    """One page of a job list: the filter, its jobs, and where the next page starts.

    ``run_root`` is the run's root when the list is of one run (for the page's heading).
    """

    where: JobFilter
    page: JobPage
    after: Cursor | None
    limit: int
    as_of: datetime
    run_root: JobRow | None = None

    @property
    def jobs(self) -> tuple[JobRow, ...]:
        """The jobs of this page."""
        return self.page.jobs

    @property
    def live(self) -> bool:
        """Whether a job on the page is still to do (so the page may change)."""
        return any(job.state in _STILL_TO_DO for job in self.jobs)


@dataclass(frozen=True)
class QueuesView:
    """Every queue across runs: what waits or runs on it, per run, the longest waiting first.

    ``run`` is the run the visitor came from, marked "this run" (others are older or newer).
    """

    queues: tuple[QueueView, ...]
    run: JobRow | None
    as_of: datetime

    @property
    def live(self) -> bool:
        """Always: queues fill and drain at any time."""
        return True

    def relation(self, root_id: str | None, root_enqueued_at: datetime | None) -> str:
        """``this run``, ``older run`` or ``newer run``, against :attr:`run` (empty without)."""
        if self.run is None or root_id is None:
            return ""
        if root_id == self.run.job_id:
            return "this run"
        mine, theirs = self.run.enqueued_at, root_enqueued_at
        if mine is None or theirs is None:
            return "other run"
        return "older run" if theirs < mine else "newer run"


View = RunsView | RunView | JobView | JobListView | QueuesView | CompareView


def runs_view(store: LineageStore, limit: int, name: str | None, as_of: datetime) -> RunsView:
    """The latest ``limit`` runs, optionally of one root job name, each with its health.

    Only runs with jobs still to do are asked for stuck stages: a finished run cannot be stuck.
    """
    entries = [
        RunEntry(
            status.summary, run_health(status.summary, stuck_stages=stuck_stage_count(status.stuck))
        )
        for status in store.run_statuses(limit, name=name, stuck_after=STUCK_AFTER, now=as_of)
    ]
    return RunsView(tuple(entries), limit, name, as_of)


def run_view(store: LineageStore, root_id: str, thresholds: Thresholds, as_of: datetime) -> RunView:
    """The run rooted at ``root_id``, stuck and failing rows flagged as ``jobtrace stats`` does."""
    report = store.run_report(
        root_id,
        stuck_after=thresholds.stuck_after,
        min_failures=thresholds.min_failures,
        min_ratio=thresholds.fail_ratio,
        now=as_of,
    )
    overview = report.overview
    # Stuck flags go on active states, failing ones on failure states: a row gets one at most.
    flags: dict[tuple[int, str, str], Flag] = {}
    for stuck in overview.stuck:
        flags.update({(stuck.depth, stuck.name, state): "stuck" for state in stuck.states})
    for failing in overview.failing:
        flags.update({(failing.depth, failing.name, state): "failing" for state in FAILURES})
    rows = tuple(
        StageRow(
            stage.depth,
            stage.name,
            state,
            count,
            flags.get((stage.depth, stage.name, state)),
        )
        for stage in sorted(overview.tree.stages, key=lambda s: (s.depth, s.name))
        for state, count in ((s, stage.states[s]) for s in state_order(stage.states))
    )
    states: dict[str, int] = {}
    for row in rows:
        states[row.state] = states.get(row.state, 0) + row.count
    summary = RunSummary(overview.root, sum(states.values()), states)
    stuck_stages = len({(stage.depth, stage.name) for stage in overview.stuck})
    health = run_health(summary, stuck_stages=stuck_stages)
    times = report.times
    traces = run_traces(store, root_id)
    previous = previous_run(store, overview.root)
    return RunView(overview, rows, thresholds, health, as_of, times, traces, previous)


def compare_view(store: LineageStore, run_a: str, run_b: str, as_of: datetime) -> CompareView:
    """Run ``run_a`` against run ``run_b`` (any job of each, ids already resolved)."""
    return CompareView(store.diff(run_a, run_b), as_of)


def job_view(store: LineageStore, job_id: str, limit: int, as_of: datetime) -> JobView:
    """One job with its path, related failure, attempts, and up to ``limit`` children."""
    why = store.why(job_id, now=as_of)
    progress = store.progress(job_id, limit=limit)
    children = tuple(store.children(job_id, limit=limit))
    return JobView(why, progress, children, limit, as_of)


def job_list_view(
    store: LineageStore,
    where: JobFilter,
    after: Cursor | None,
    limit: int,
    as_of: datetime,
) -> JobListView:
    """One page of the list ``where`` describes (its ``run`` and ``parent`` already resolved)."""
    page = store.jobs(where, after=after, limit=limit, now=as_of)
    root = store.job(where.run) if where.run is not None else None
    return JobListView(where, page, after, limit, as_of, root)


def queues_view(store: LineageStore, run: str | None, as_of: datetime) -> QueuesView:
    """Every queue with work on it, per run; ``run`` (a root id) marked "this run"."""
    found = tuple(store.queues(now=as_of))
    return QueuesView(found, store.job(run) if run is not None else None, as_of)


def to_json(view: View, links: Links) -> dict[str, Any]:
    """The JSON twin of a page: the view's data as ``--json`` shapes it, plus trace URLs.

    ``version`` changes whenever anything but ``as_of`` does: a page polling its twin compares it
    with the version it was drawn from to know when to redraw.
    """
    document = _document(view, links)
    document["live"] = view.live
    document["version"] = _version(document)
    document["as_of"] = view.as_of.isoformat()
    return document


def _document(view: View, links: Links) -> dict[str, Any]:
    if isinstance(view, RunsView):
        return {
            "runs": [
                {
                    **_with(entry.summary, "failures", "active", "scheduled"),
                    **_health(entry.health),
                    "trace_url": _run_trace(entry, links, view.as_of),
                }
                for entry in view.runs
            ],
            "limit": view.limit,
            "name": view.name,
        }
    if isinstance(view, RunView):
        root = view.overview.root
        return {
            "root": jsonable(root),
            "trace_url": view.trace_url(links, root.trace_id),
            "traces": {
                "count": view.traces.count,
                "count_capped": view.traces.capped,
                "listed": [
                    {
                        **jsonable(trace),
                        "trace_url": links.trace(
                            trace.trace_id,
                            trace.enqueued_at or trace.started_at,
                            trace.finished_at,
                            now=view.as_of,
                        ),
                    }
                    for trace in view.traces.traces
                ],
            },
            "previous": None if view.previous is None else jsonable(view.previous),
            "total": view.total,
            **_health(view.health),
            "stages": jsonable(view.rows),
            "stage_times": [jsonable(times) for times in view.times.values()],
            "overview": jsonable(view.overview),
            "thresholds": jsonable(view.thresholds),
        }
    if isinstance(view, JobListView):
        page = view.page
        return {
            "filter": view.where.params(),
            "limit": view.limit,
            "after": None if view.after is None else view.after.encode(),
            "jobs": [
                {**jsonable(job), "trace_url": links.job(job, now=view.as_of)} for job in view.jobs
            ],
            "next": None if page.next is None else page.next.encode(),
            "count": page.count,
            "count_capped": page.count_capped,
        }
    if isinstance(view, QueuesView):
        return {
            "run": None if view.run is None else view.run.job_id,
            "queues": [
                {
                    "queue": queue.queue,
                    "total": queue.total,
                    "oldest_enqueued_at": jsonable(queue.oldest_enqueued_at),
                    "runs": [
                        {
                            **jsonable(run),
                            "total": run.total,
                            "relation": view.relation(run.root_job_id, run.root_enqueued_at),
                        }
                        for run in queue.runs
                    ],
                }
                for queue in view.queues
            ],
        }
    if isinstance(view, CompareView):
        diff = view.diff
        return {
            "a": jsonable(diff.a),
            "b": jsonable(diff.b),
            "totals": {"a": view.totals[0], "b": view.totals[1]},
            "stages": [
                {
                    **jsonable(stage),
                    "total_delta": stage.total_delta,
                    "state_deltas": stage.state_deltas,
                    "median_delta": stage.median_delta,
                }
                for stage in diff.stages
            ],
        }
    why = view.why
    return {
        "job": jsonable(view.job),
        "trace_url": links.job(view.job, now=view.as_of),
        "path": jsonable(why.path),
        "cause": jsonable(why.cause),
        "relation": why.relation,
        "attempts": [
            {**jsonable(attempt), "trace_url": links.job(attempt, now=view.as_of)}
            for attempt in why.attempts
        ],
        "progress": _with(view.progress, "fraction", "complete"),
        "children": jsonable(view.children),
        "more_children": view.more_children,
    }


def _run_trace(entry: RunEntry, links: Links, as_of: datetime) -> str | None:
    """The root's trace from when the run began to now (its children may end after the root)."""
    root = entry.summary.root
    return links.trace(root.trace_id, root.enqueued_at or root.started_at, None, now=as_of)


def _health(health: Health) -> dict[str, Any]:
    return {
        "health": health.state,
        "failure_share": health.share,
        "stuck_stages": health.stuck_stages,
    }


def _with(value: Any, *properties: str) -> dict[str, Any]:
    """``value`` as JSON plus some of its derived properties, like the CLI's ``--json``."""
    return {**jsonable(value), **{name: jsonable(getattr(value, name)) for name in properties}}


#: Numbers that grow with the clock alone: no reason to redraw a page. A trace link's range ends
#: "now" while its job runs; everything else it is made of (trace id, times) is in the document.
_CLOCK_ONLY = frozenset({"idle_seconds", "trace_url"})


def _version(document: dict[str, Any]) -> str:
    """A digest of what the store said, leaving out what only the clock changed."""
    text = json.dumps(_without_clock(document), sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _without_clock(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_clock(v) for k, v in value.items() if k not in _CLOCK_ONLY}
    if isinstance(value, list):
        return [_without_clock(item) for item in value]
    return value
