"""A run's health: ok / running / stuck / failing, the share of failures, and the runs page showing it."""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta, timezone

import pytest

from jobtrace.display import FAILING_SHARE, run_health
from jobtrace.display.health import Health
from jobtrace.lineage.queries import JobRow, RunSummary
from tests.lineage.builders import TreeBuilder, create_schema
from tests.web.support import Page, running

ROOT = JobRow(
    **{
        field.name: None
        for field in dataclasses.fields(JobRow)
        if field.default is dataclasses.MISSING
    }
    | {"job_id": "sync-1", "name": "SyncJob", "state": "succeeded", "attempt": 1}
    | {"root_job_id": "sync-1", "depth": 0}
)


def summary(states: dict[str, int], root_state: str = "succeeded") -> RunSummary:
    return RunSummary(dataclasses.replace(ROOT, state=root_state), sum(states.values()), states)


@pytest.mark.parametrize(
    ("states", "stuck", "expected"),
    [
        ({"succeeded": 379, "discarded": 1}, 0, "ok"),
        ({"succeeded": 300, "discarded": 1, "running": 79}, 0, "running"),
        ({"succeeded": 300, "discarded": 1, "queued": 79}, 1, "stuck"),
        ({"succeeded": 300, "scheduled": 5}, 0, "running"),
        ({"succeeded": 90, "discarded": 10}, 0, "failing"),
        ({"succeeded": 90, "discarded": 10, "queued": 5}, 2, "failing"),
        ({"succeeded": 10}, 3, "ok"),  # nothing left to do cannot be stuck
        ({}, 0, "ok"),
    ],
)
def test_health_weighs_failures_by_their_share(
    states: dict[str, int], stuck: int, expected: str
) -> None:
    """Failing takes a share of failures, stuck takes work to do with a stuck stage, then running."""
    assert run_health(summary(states), stuck_stages=stuck).state == expected


def test_a_failed_root_fails_the_run_whatever_the_share() -> None:
    """The root job failing is an outage even when it is one job of many."""
    health = run_health(summary({"succeeded": 999, "failed": 1}, root_state="failed"))
    assert health.state == "failing"


def test_the_threshold_is_a_named_constant_that_can_be_changed() -> None:
    """Exactly FAILING_SHARE of failures is failing; any less is not, unless asked otherwise."""
    total = 1000
    at = round(FAILING_SHARE * total)
    assert run_health(summary({"succeeded": total - at, "failed": at})).state == "failing"
    below = summary({"succeeded": total - at + 1, "failed": at - 1})
    assert run_health(below).state == "ok"
    assert run_health(below, failing_share=0.001).state == "failing"


def test_the_share_reads_as_a_fraction_of_the_run() -> None:
    """failed_text says how many of how many, with a share that never rounds a failure to 0%."""
    assert Health("ok", 1, 380).failed_text == "1 of 380 failed (0.3%)"
    assert Health("ok", 1, 5_000).failed_text == "1 of 5,000 failed (<0.1%)"
    assert Health("failing", 12, 40).failed_text == "12 of 40 failed (30.0%)"
    assert Health("ok", 0, 40).failed_text == "none failed"
    assert Health("ok", 0, 0).share == 0.0


def test_the_runs_page_tells_a_stray_failure_from_an_outage_and_a_stuck_run(
    sqlite_url: str,
) -> None:
    """One discarded job in 380 reads ok with its share; a run idle for hours reads stuck, not active;
    a run moving now reads running."""
    engine = create_schema(sqlite_url)
    rng = random.Random(4)
    now = datetime.now(timezone.utc)
    old = TreeBuilder(start=now - timedelta(hours=6))
    done = old.job("NightlyJob", enqueued=0, started=1, finished=900)
    for number in range(379):
        old.job("PageJob", done, state="discarded" if number == 17 else "succeeded", enqueued=2)
    stuck = old.job("SyncJob", enqueued=60, started=61, finished=70)
    for _ in range(rng.randint(3, 9)):
        old.job("DetailJob", stuck, state="queued", queue="legacy", enqueued=65)
    old.insert(engine)
    fresh = TreeBuilder(start=now - timedelta(seconds=30))
    moving = fresh.job("ImportJob", enqueued=0, started=1, finished=2)
    for _ in range(rng.randint(2, 6)):
        fresh.job("RowJob", moving, state="running", enqueued=3, started=4, heartbeat=25)
    fresh.insert(engine)
    engine.dispose()
    with running(sqlite_url) as served:
        rows = {row["root"]: row for row in Page.parse(served.get("/").body).rows(0)}
        runs = {run["root"]["job_id"]: run for run in served.get("/api/runs").json()["runs"]}
    assert rows[done]["health"] == "ok"
    assert rows[done]["failed"] == "1 of 380 failed (0.3%)"
    assert rows[stuck]["health"] == "⚠ stuck"
    assert rows[moving]["health"] == "running"
    assert {root: run["health"] for root, run in runs.items()} == {
        done: "ok",
        stuck: "stuck",
        moving: "running",
    }
    assert runs[done]["failure_share"] == pytest.approx(1 / 380)
    assert runs[stuck]["stuck_stages"] == 1
