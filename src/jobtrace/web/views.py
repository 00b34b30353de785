"""What each page shows, fetched from the store once and shared by its HTML and its JSON twin.

Gathering the data apart from drawing it keeps the two forms of a page from drifting: the JSON twin
is the view itself, plus the derived numbers and trace links the HTML shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from jobtrace.cli.render import state_order
from jobtrace.lineage.export import jsonable
from jobtrace.lineage.queries import (
    FAILURES,
    STUCK_AFTER,
    JobRow,
    LineageStore,
    Overview,
    Progress,
    RunSummary,
    Why,
)
from jobtrace.web.links import Links

__all__ = [
    "JobView",
    "RunView",
    "RunsView",
    "StageRow",
    "Thresholds",
    "job_view",
    "run_view",
    "runs_view",
    "to_json",
]

Flag = Literal["stuck", "failing"]


@dataclass(frozen=True)
class Thresholds:
    """What makes a stage stuck or failing: the ``--stuck-after``, ``--min-failures`` and
    ``--fail-ratio`` of ``jobtrace tree``, as query parameters."""

    stuck_after: float = STUCK_AFTER
    min_failures: int = 1
    fail_ratio: float = 0.0


@dataclass(frozen=True)
class RunsView:
    """The front page: the latest runs."""

    runs: tuple[RunSummary, ...]
    limit: int
    name: str | None


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

    @property
    def total(self) -> int:
        """Jobs in the run."""
        return sum(row.count for row in self.rows)

    def stage_total(self, depth: int, name: str) -> int:
        """Jobs of one stage (the share a failure group is of its stage)."""
        return sum(row.count for row in self.rows if (row.depth, row.name) == (depth, name))


@dataclass(frozen=True)
class JobView:
    """One job: where it hangs and why (``why``), its children, and whether more were left out."""

    why: Why
    progress: Progress
    children: tuple[JobRow, ...]
    limit: int

    @property
    def job(self) -> JobRow:
        """The job the page is about."""
        return self.why.job

    @property
    def more_children(self) -> int:
        """Children not listed because of the limit."""
        return max(0, self.progress.total - len(self.children))


def runs_view(store: LineageStore, limit: int, name: str | None) -> RunsView:
    """The latest ``limit`` runs, optionally of one root job name."""
    return RunsView(tuple(store.runs(limit, name=name)), limit, name)


def run_view(store: LineageStore, root_id: str, thresholds: Thresholds) -> RunView:
    """The run rooted at ``root_id``, stuck and failing rows flagged as ``jobtrace stats`` does."""
    overview = store.overview(
        root_id,
        stuck_after=thresholds.stuck_after,
        min_failures=thresholds.min_failures,
        min_ratio=thresholds.fail_ratio,
    )
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
    return RunView(overview, rows, thresholds)


def job_view(store: LineageStore, job_id: str, limit: int) -> JobView:
    """One job with its path, related failure, attempts, and up to ``limit`` children."""
    why = store.why(job_id)
    progress = store.progress(job_id, limit=limit)
    children = tuple(store.children(job_id, limit=limit))
    return JobView(why, progress, children, limit)


def to_json(view: RunsView | RunView | JobView, links: Links) -> Any:
    """The JSON twin of a page: the view's data as ``--json`` shapes it, plus trace URLs."""
    if isinstance(view, RunsView):
        return {
            "runs": [
                {
                    **_with(run, "health", "failures", "active"),
                    "trace_url": links.trace(run.root.trace_id),
                }
                for run in view.runs
            ],
            "limit": view.limit,
            "name": view.name,
        }
    if isinstance(view, RunView):
        root = view.overview.root
        return {
            "root": jsonable(root),
            "trace_url": links.trace(root.trace_id),
            "total": view.total,
            "stages": jsonable(view.rows),
            "overview": jsonable(view.overview),
            "thresholds": jsonable(view.thresholds),
        }
    why = view.why
    return {
        "job": jsonable(view.job),
        "trace_url": links.trace(view.job.trace_id),
        "path": jsonable(why.path),
        "cause": jsonable(why.cause),
        "relation": why.relation,
        "attempts": [
            {**jsonable(attempt), "trace_url": links.trace(attempt.trace_id)}
            for attempt in why.attempts
        ],
        "progress": _with(view.progress, "fraction", "complete"),
        "children": jsonable(view.children),
        "more_children": view.more_children,
    }


def _with(value: Any, *properties: str) -> dict[str, Any]:
    """``value`` as JSON plus some of its derived properties, like the CLI's ``--json``."""
    return {**jsonable(value), **{name: jsonable(getattr(value, name)) for name in properties}}
