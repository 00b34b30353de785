"""A run's health in one word, with the share of failures beside it, for the dashboard and the CLI.

One failed job in a run of 380 is worth showing but is not an outage; a run whose jobs wait with
nothing moving for longer than :data:`STUCK_AFTER` is not "running". :func:`run_health` decides,
from a :class:`~jobtrace.lineage.queries.RunSummary` and how many of its stages are stuck (as
``LineageStore.stuck_stages`` finds them); it does no I/O, so any front end can call it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from jobtrace.lineage.queries import FAILURES, SCHEDULED, STUCK_AFTER, RunSummary, StuckStage

__all__ = [
    "FAILING_SHARE",
    "HEALTH_STATES",
    "STUCK_AFTER",
    "Health",
    "HealthState",
    "run_health",
    "stuck_stage_count",
]

HealthState = Literal["ok", "running", "stuck", "failing"]
#: From worst to best: the order a list of runs is read in.
HEALTH_STATES: tuple[HealthState, ...] = ("failing", "stuck", "running", "ok")
#: A run is failing when at least this share of its jobs failed, were discarded or crashed (or
#: when its root job itself did). Below it the failures are shown, as a share, on a run that is
#: otherwise ok or running.
FAILING_SHARE = 0.05


@dataclass(frozen=True)
class Health:
    """How a run is doing, and the numbers behind the word.

    Attributes:
        state: ``failing``, ``stuck`` (active jobs with no progress for :data:`STUCK_AFTER`
            seconds in some stage), ``running`` (jobs still to do, all moving), else ``ok``.
        failures: Jobs that failed, were discarded or crashed.
        total: Jobs in the run.
        stuck_stages: Stages with active jobs and no progress.
    """

    state: HealthState
    failures: int
    total: int
    stuck_stages: int = 0

    @property
    def share(self) -> float:
        """``failures / total`` (0 for an empty run)."""
        return self.failures / self.total if self.total else 0.0

    @property
    def failed_share_text(self) -> str:
        """``12 (3.2%)``, ``0``: the failures and their share, for a column."""
        return f"{self.failures:,} ({_percent(self.share)})" if self.failures else "0"

    @property
    def failed_text(self) -> str:
        """``12 of 380 failed (3.2%)``, ``none failed``: the share as people read it."""
        if not self.failures:
            return "none failed"
        return f"{self.failures:,} of {self.total:,} failed ({_percent(self.share)})"


def run_health(
    summary: RunSummary, *, stuck_stages: int = 0, failing_share: float = FAILING_SHARE
) -> Health:
    """The health of one run.

    Args:
        summary: The run's root and its counts per state (``scheduled`` counts as still to do).
        stuck_stages: How many of its stages are stuck (``len(store.stuck_stages(root))``).
        failing_share: The share of failed jobs from which the run is failing.
    """
    failures = summary.failures
    total = summary.total
    to_do = summary.active + summary.states.get(SCHEDULED, 0)
    state: HealthState
    if summary.root.state in FAILURES or (total and failures / total >= failing_share):
        state = "failing"
    elif stuck_stages and to_do:
        state = "stuck"
    elif to_do:
        state = "running"
    else:
        state = "ok"
    return Health(state, failures, total, stuck_stages if to_do else 0)


def stuck_stage_count(stages: Iterable[StuckStage]) -> int:
    """How many stages are stuck, from ``stuck_stages`` (which lists a stage once per queue)."""
    return len({(stage.depth, stage.name) for stage in stages})


def _percent(share: float) -> str:
    """``3.2%``, and ``<0.1%`` rather than a misleading ``0.0%``."""
    if 0 < share < 0.001:
        return "<0.1%"
    return f"{share:.1%}"
