"""The lineage queries on SQLite and PostgreSQL, on trees built row by row with random counts."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from jobtrace.lineage.models import Job
from jobtrace.lineage.queries import (
    ACTIVE,
    FAILURES,
    SCHEDULED,
    UNKNOWN_DEPTH,
    AmbiguousJobIdError,
    JobNotFoundError,
    JobRow,
    LineageStore,
)
from tests.lineage.builders import CinemaRun, TreeBuilder, cinema_run, create_schema
from tests.services import POSTGRES_ADMIN_URL, require


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """The lineage tables on the backend under test."""
    engine = create_schema(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> LineageStore:
    """Queries on the backend under test."""
    return LineageStore(engine)


@pytest.fixture(params=[3, 17])
def rng(request: pytest.FixtureRequest) -> random.Random:
    """Two different random shapes per test."""
    return random.Random(request.param)


@pytest.fixture
def built(engine: Engine, rng: random.Random) -> tuple[TreeBuilder, CinemaRun]:
    """A cinema run stored beside two other runs, so every query must stay inside its run."""
    builder = TreeBuilder()
    cinema_run(builder, random.Random(rng.random()), start=-7200)
    run = cinema_run(builder, rng)
    cinema_run(builder, random.Random(rng.random()), start=3600)
    builder.insert(engine)
    return builder, run


def ids(rows: list[JobRow]) -> list[str]:
    return [row.job_id for row in rows]


def deepest(builder: TreeBuilder, root: str) -> dict[str, object]:
    return max(builder.under(root), key=lambda row: int(str(row["depth"])))


def test_job_row_mirrors_every_column() -> None:
    """JobRow has exactly the columns of jobtrace_jobs, so rows convert without loss."""
    columns = [column.name for column in Job.__table__.columns]
    assert sorted(f.name for f in dataclasses.fields(JobRow)) == sorted(columns)


def test_stage_stats_counts_every_state_per_stage(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """stage_stats has one row per (depth, name, state) of the run, counted exactly, in order."""
    builder, run = built
    stats = store.stage_stats(run.root)
    got = {(r.depth, r.name, r.state): r.count for r in stats.rows}
    assert got == dict(builder.counts(builder.under(run.root)))
    keys = [(r.depth, r.name, r.state) for r in stats.rows]
    assert keys == sorted(keys)
    assert stats.total == len(builder.under(run.root))
    assert max(r.depth for r in stats.rows) >= 4


def test_stage_stats_resolves_the_root_of_any_job(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """Asking with a deep job's id gives the table of its whole run."""
    builder, run = built
    leaf = deepest(builder, run.root)
    assert store.stage_stats(str(leaf["job_id"])) == store.stage_stats(run.root)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.job("nope"),
        lambda s: s.tree("nope"),
        lambda s: s.children("nope"),
        lambda s: s.ancestors("nope"),
        lambda s: s.stage_stats("nope"),
        lambda s: s.overview("nope"),
        lambda s: s.progress("nope"),
        lambda s: s.why("nope"),
        lambda s: s.diff("nope", "nope"),
    ],
)
def test_unknown_job_raises(store: LineageStore, call: object) -> None:
    """Every question about an id the store never saw raises JobNotFoundError naming it."""
    with pytest.raises(JobNotFoundError, match="nope"):
        call(store)  # type: ignore[operator]


def test_tree_of_a_root_is_its_whole_run(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """tree(root) returns every job of the run, parents before their children."""
    builder, run = built
    rows = store.tree(run.root)
    assert sorted(ids(rows)) == sorted(row["job_id"] for row in builder.under(run.root))
    seen: set[str] = set()
    for row in rows:
        assert row.parent_job_id is None or row.parent_job_id in seen
        seen.add(row.job_id)
    assert store.count_tree(run.root) == len(rows)


def test_tree_of_an_inner_job_is_its_subtree(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """tree(page) walks down from a non-root job and returns its descendants only."""
    builder, run = built
    page = run.pages[1]
    rows = store.tree(page)
    assert sorted(ids(rows)) == sorted(row["job_id"] for row in builder.subtree(page))
    assert {row.depth for row in rows} == {1, 2, 3, 4}
    assert store.count_tree(page) == len(rows)


def test_children_are_direct_children_oldest_first(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """children() lists only the jobs a job enqueued, filtered by state and limited on request."""
    builder, run = built
    page = run.pages[0]
    expected = [row for row in builder.jobs.values() if row["parent_job_id"] == page]
    got = store.children(page)
    assert sorted(ids(got)) == sorted(row["job_id"] for row in expected)
    assert [row.enqueued_at for row in got] == sorted(row.enqueued_at for row in got)  # type: ignore[type-var]
    discarded = store.children(page, state="discarded")
    assert {row.state for row in discarded} == {"discarded"}
    assert len(discarded) == sum(row["state"] == "discarded" for row in expected)
    assert len(store.children(page, limit=1)) == 1


def test_ancestors_walk_up_to_the_root(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """ancestors() of a depth-4 job returns its four ancestors, root first; a root has none."""
    builder, run = built
    leaf = deepest(builder, run.root)
    expected = []
    parent = leaf["parent_job_id"]
    while parent is not None:
        expected.insert(0, parent)
        parent = builder.jobs[str(parent)]["parent_job_id"]
    got = store.ancestors(str(leaf["job_id"]))
    assert ids(got) == expected
    assert [row.depth for row in got] == list(range(len(expected)))
    assert store.ancestors(run.root) == []


def test_runs_lists_the_latest_roots_with_their_health(store: LineageStore, engine: Engine) -> None:
    """runs() returns roots newest first with exact counts per state over each whole run."""
    builder = TreeBuilder()
    healthy = builder.job("SyncJob", enqueued=100)
    for _ in range(random.Random(2).randint(2, 5)):
        builder.job("PageJob", healthy, enqueued=101)
    failing = builder.job("SyncJob", enqueued=200)
    page = builder.job("PageJob", failing, enqueued=201)
    builder.job("DetailJob", page, state="failed", enqueued=202, error_type="TimeoutError")
    active = builder.job("ImportJob", enqueued=300, state="running")
    builder.job("PageJob", active, state="queued", enqueued=301)
    builder.job("CronJob", enqueued=None, started=50)
    builder.insert(engine)
    runs = store.runs(3)
    assert [run.root.job_id for run in runs] == [active, failing, healthy]
    assert [run.health for run in runs] == ["active", "failing", "ok"]
    assert runs[2].total == len(builder.under(healthy))
    assert runs[1].states == {"failed": 1, "succeeded": 2}
    assert len(store.runs(10)) == 4, "a root without an enqueue time is listed last"
    assert [run.root.job_id for run in store.runs(10, name="SyncJob")] == [failing, healthy]


def test_stage_tree_hangs_each_stage_under_its_parent_stage(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """stage_tree() counts each stage and the distinct parents that spawned it."""
    builder, run = built
    tree = store.stage_tree(run.root)
    rows = builder.under(run.root)
    by_name = {stage.name: stage for stage in tree.stages}
    for stage in tree.stages:
        mine = [r for r in rows if (r["depth"], r["name"]) == (stage.depth, stage.name)]
        assert stage.total == len(mine)
        assert stage.states == dict(Counter(str(r["state"]) for r in mine))
        if stage.depth:
            assert stage.parents == len({r["parent_job_id"] for r in mine})
    root_stage = by_name["SyncJob"]
    assert [s.name for s in tree.children_of(root_stage)] == ["MoviePageJob"]
    assert {s.name for s in tree.children_of(by_name["MoviePageJob"])} == {
        "MovieDetailJob",
        "ShowtimeProcessJob",
    }
    assert [s.name for s in tree.children_of(by_name["PriceJob"])] == ["NotifyJob"]


def test_stuck_stages_name_the_dead_queue_with_samples(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """Detail jobs waiting on a queue nobody serves are stuck; the served queue is not."""
    builder, run = built
    now = builder.start + timedelta(hours=1)
    stuck = store.stuck_stages(run.root, 300, now=now)
    details = [s for s in stuck if s.name == "MovieDetailJob"]
    assert [s.queue for s in details] == [run.stuck_queue]
    waiting = [
        r
        for r in builder.under(run.root)
        if r["name"] == "MovieDetailJob" and r["queue"] == run.stuck_queue
    ]
    assert details[0].active == len(waiting)
    assert details[0].states == {"queued": len(waiting)}
    assert details[0].since == min(r["enqueued_at"] for r in waiting)
    assert details[0].idle_seconds == (now - details[0].since).total_seconds()
    assert set(details[0].sample_job_ids) <= {r["job_id"] for r in waiting}
    assert json.loads(str(details[0].sample_args[0]))["movie_id"].startswith("m-")
    for stage in stuck:
        assert any(
            r["name"] == stage.name and r["state"] in ACTIVE for r in builder.under(run.root)
        )


def test_stuck_stages_wait_for_the_threshold(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """A stage is not stuck before the threshold has passed since its last progress."""
    builder, run = built
    stuck = store.stuck_stages(run.root, 300, now=builder.start + timedelta(hours=1))
    earliest = min(stage.since for stage in stuck)
    latest = max(stage.since for stage in stuck)
    soon = store.stuck_stages(run.root, 300, now=earliest + timedelta(seconds=299))
    assert soon == []
    later = store.stuck_stages(run.root, 300, now=latest + timedelta(seconds=301))
    assert [(s.name, s.queue) for s in later] == [(s.name, s.queue) for s in stuck]


def test_stuck_stages_see_progress_by_heartbeat(store: LineageStore, engine: Engine) -> None:
    """A running job that keeps sending heartbeats keeps its stage from being stuck."""
    builder = TreeBuilder()
    root = builder.job("BatchJob", state="running", heartbeat=3590)
    builder.job("ChunkJob", root, state="running", enqueued=1, heartbeat=3595)
    builder.job("ChunkJob", root, state="queued", enqueued=1)
    builder.insert(engine)
    now = builder.start + timedelta(hours=1)
    assert store.stuck_stages(root, 60, now=now) == []
    assert [s.name for s in store.stuck_stages(root, 1, now=now)] == ["BatchJob", "ChunkJob"]


def _second_pass(engine: Engine, pages: int) -> tuple[TreeBuilder, str]:
    """A finished SyncJob whose ``pages`` pages are queued, due two hours after the run began."""
    builder = TreeBuilder()
    root = builder.job("SyncJob", state="succeeded", enqueued=0, started=1, finished=2)
    for _ in range(pages):
        builder.job("MoviePageJob", root, state="queued", enqueued=2, due_at=builder.at(7200))
    builder.insert(engine)
    return builder, root


def test_jobs_scheduled_for_later_are_not_stuck_until_due(
    store: LineageStore, engine: Engine
) -> None:
    """Pages scheduled for a later pass wait by design; they count from when they are due."""
    builder, root = _second_pass(engine, 3)
    now = builder.start + timedelta(hours=1)
    assert store.stuck_stages(root, 60, now=now) == []
    later = store.stuck_stages(root, 60, now=builder.start + timedelta(hours=3))
    assert [(s.name, s.active) for s in later] == [("MoviePageJob", 3)]
    assert later[0].since == builder.at(7200)


def test_stage_counts_show_jobs_not_due_yet_as_scheduled(
    store: LineageStore, engine: Engine
) -> None:
    """Queued jobs due in the future are counted ``scheduled``; due ones stay ``queued``."""
    builder = TreeBuilder()
    root = builder.job("SyncJob", state="succeeded", enqueued=0, started=1, finished=2)
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    for _ in range(3):
        builder.job("MoviePageJob", root, state="queued", enqueued=2, due_at=future)
    builder.job("MoviePageJob", root, state="queued", enqueued=2, due_at=builder.at(60))
    builder.job("MoviePageJob", root, state="succeeded", enqueued=2, started=3, finished=4)
    builder.insert(engine)
    (stage,) = [s for s in store.stage_tree(root).stages if s.name == "MoviePageJob"]
    assert dict(stage.states) == {SCHEDULED: 3, "queued": 1, "succeeded": 1}
    assert stage.total == 5
    assert store.stage_stats(root).by_stage()[(1, "MoviePageJob")] == dict(stage.states)
    assert len(store.children(root, state=SCHEDULED)) == 3
    assert len(store.children(root, state="queued")) == 4  # the stored state: due or not


def test_runs_count_jobs_not_due_yet_as_scheduled_like_the_tree(
    store: LineageStore, engine: Engine
) -> None:
    """The runs list splits queued jobs due later out as ``scheduled``, as the stage tree does,
    and a run with only those left still has work to do."""
    builder = TreeBuilder()
    root = builder.job("SyncJob", state="succeeded", enqueued=0, started=1, finished=2)
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    for _ in range(2):
        builder.job("MoviePageJob", root, state="queued", enqueued=2, due_at=future)
    builder.insert(engine)
    (run,) = store.runs(5)
    assert dict(run.states) == {SCHEDULED: 2, "succeeded": 1}
    assert (run.scheduled, run.active, run.health) == (2, 0, "active")
    (stage,) = [s for s in store.stage_tree(root).stages if s.name == "MoviePageJob"]
    assert run.states[SCHEDULED] == stage.states[SCHEDULED]


def test_run_statuses_give_each_run_its_stuck_stages_in_one_read(
    store: LineageStore, engine: Engine
) -> None:
    """One store call serves the runs list of the CLI and of the dashboard: each run's summary
    with its stuck stages (only runs with jobs to do are asked)."""
    builder = TreeBuilder()
    done = builder.job("SyncJob", enqueued=0)
    builder.job("PageJob", done, enqueued=1)
    stuck = builder.job("SyncJob", enqueued=10, started=11, finished=12)
    builder.job("PageJob", stuck, state="queued", enqueued=12, queue="dead")
    builder.insert(engine)
    now = builder.start + timedelta(hours=1)
    statuses = store.run_statuses(5, stuck_after=60, now=now)
    assert [status.summary.root.job_id for status in statuses] == [stuck, done]
    assert [s.name for s in statuses[0].stuck] == ["PageJob"]
    assert statuses[1].stuck == ()
    assert [status.summary for status in statuses] == store.runs(5, now=now)


def test_overview_tells_scheduled_and_stuck_by_the_same_clock(
    store: LineageStore, engine: Engine
) -> None:
    """With ``now`` given, the tree's ``scheduled`` and the stuck check agree on what is due."""
    builder, root = _second_pass(engine, 2)

    def pages(now: datetime) -> tuple[dict[str, int], list[str]]:
        overview = store.overview(root, stuck_after=60, now=now)
        (stage,) = [s for s in overview.tree.stages if s.name == "MoviePageJob"]
        return dict(stage.states), [s.name for s in overview.stuck]

    assert pages(builder.start + timedelta(hours=1)) == ({SCHEDULED: 2}, [])
    assert pages(builder.start + timedelta(hours=3)) == ({"queued": 2}, ["MoviePageJob"])


def test_failing_stages_apply_both_thresholds(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """failing_stages() reports stages with enough failures, and none above the ratio asked."""
    builder, run = built
    rows = builder.under(run.root)
    showtimes = [r for r in rows if r["name"] == "ShowtimeProcessJob"]
    failed = sum(r["state"] in FAILURES for r in showtimes)
    failing = store.failing_stages(run.root)
    assert [(s.name, s.failures, s.total) for s in failing] == [
        ("ShowtimeProcessJob", failed, len(showtimes))
    ]
    assert failing[0].errors[0].error == run.failing_error
    assert failing[0].ratio == failed / len(showtimes)
    assert store.failing_stages(run.root, min_failures=failed + 1) == []
    assert store.failing_stages(run.root, min_ratio=failed / len(showtimes) + 0.01) == []


def test_failures_group_by_error_with_parent_samples(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """failures() groups by stage and error and names the parent page of each sample."""
    builder, run = built
    groups = store.failures(run.root, samples=2)
    assert [(g.name, g.error) for g in groups] == [("ShowtimeProcessJob", run.failing_error)]
    discarded = [r for r in builder.under(run.root) if r["state"] == "discarded"]
    assert groups[0].count == len(discarded)
    assert 1 <= len(groups[0].samples) <= 2
    for sample in groups[0].samples:
        row = builder.jobs[sample.job_id]
        assert sample.parent_job_id == row["parent_job_id"]
        assert sample.parent_name == "MoviePageJob"
        assert sample.parent_args == builder.jobs[str(row["parent_job_id"])]["args"]
        assert sample.trace_id == row["trace_id"]


def test_failures_of_crashes_without_error_type_use_the_state(
    store: LineageStore, engine: Engine
) -> None:
    """A crashed job with no error type is grouped under 'crashed', apart from real errors."""
    builder = TreeBuilder()
    root = builder.job("UploadJob", state="running")
    crashes = random.Random(4).randint(1, 4)
    for _ in range(crashes):
        builder.job("BatchJob", root, state="crashed", enqueued=1, finished=9)
    builder.job("BatchJob", root, state="failed", enqueued=1, error_type="ValueError")
    builder.insert(engine)
    groups = store.failures(root)
    assert [(g.error, g.count) for g in groups] == [("crashed", crashes), ("ValueError", 1)]


def test_failures_ignore_an_empty_error_type_as_the_job_row_does(
    store: LineageStore, engine: Engine
) -> None:
    """An empty error type (a producer in another language, say) falls back to the reason."""
    builder = TreeBuilder()
    root = builder.job("UploadJob", state="running")
    failed = builder.job(
        "BatchJob", root, state="discarded", enqueued=1, error_type="", reason="movie_not_ready"
    )
    builder.insert(engine)
    (group,) = store.failures(root)
    assert group.error == "movie_not_ready"
    assert group.error == store.job(failed).error


def test_failures_pin_counts_bounds_and_first_jobs_per_error(
    store: LineageStore, engine: Engine
) -> None:
    """The run page's failures read, pinned on a small store: per stage and error its count,
    first and last finish, and its first jobs by finish (a job without one last, ties by id),
    each with its parent; a stage's errors are ranked apart from another stage's."""
    builder = TreeBuilder()
    root = builder.job("SyncJob", state="running", args={"run": 1})
    page_a = builder.job("PageJob", root, args={"page": "a"}, job_id="page-a")
    page_b = builder.job("PageJob", root, args={"page": "b"}, job_id="page-b")
    builder.job("DetailJob", page_a, job_id="ok-1")

    def failed(job_id: str, parent: str, finished: float | None, **columns: Any) -> None:
        state = columns.pop("state", "discarded")
        if finished is None:
            columns["finished_at"] = None  # the builder would make one up
        builder.job(
            "DetailJob",
            parent,
            state=state,
            job_id=job_id,
            started=1.0,
            finished=finished,
            args={"id": job_id},
            **columns,
        )

    failed("t-3", page_a, 30, error_type="TimeoutError", error_message="late 3")
    failed("t-1", page_b, 10, error_type="TimeoutError", error_message="late 1")
    failed("t-2b", page_a, 20, error_type="TimeoutError")
    failed("t-2a", page_b, 20, error_type="TimeoutError")
    failed("t-none", page_a, None, error_type="TimeoutError")
    failed("v-1", page_b, 15, state="failed", error_type="ValueError")
    failed("c-1", page_a, 40, state="crashed")
    failed("r-1", page_b, 5, error_type="", reason="not_ready")
    builder.job(
        "PageJob", root, state="failed", job_id="page-c", finished=50, error_type="ValueError"
    )
    builder.insert(engine)
    report = store.run_report(root, samples=3)
    found = [
        (
            g.depth,
            g.name,
            g.error,
            g.count,
            g.first_at,
            g.last_at,
            [(s.job_id, s.state, s.parent_job_id, s.parent_name, s.parent_args) for s in g.samples],
        )
        for g in report.overview.failures
    ]
    at = builder.at
    args_a, args_b = '{"page":"a"}', '{"page":"b"}'
    assert found == [
        (
            2,
            "DetailJob",
            "TimeoutError",
            5,
            at(10),
            at(30),
            [
                ("t-1", "discarded", page_b, "PageJob", args_b),
                ("t-2a", "discarded", page_b, "PageJob", args_b),
                ("t-2b", "discarded", page_a, "PageJob", args_a),
            ],
        ),
        (
            1,
            "PageJob",
            "ValueError",
            1,
            at(50),
            at(50),
            [
                ("page-c", "failed", root, "SyncJob", '{"run":1}'),
            ],
        ),
        (
            2,
            "DetailJob",
            "ValueError",
            1,
            at(15),
            at(15),
            [
                ("v-1", "failed", page_b, "PageJob", args_b),
            ],
        ),
        (
            2,
            "DetailJob",
            "crashed",
            1,
            at(40),
            at(40),
            [
                ("c-1", "crashed", page_a, "PageJob", args_a),
            ],
        ),
        (
            2,
            "DetailJob",
            "not_ready",
            1,
            at(5),
            at(5),
            [
                ("r-1", "discarded", page_b, "PageJob", args_b),
            ],
        ),
    ]
    (one,) = [g for g in report.overview.failures if g.error == "TimeoutError"]
    assert (one.samples[0].error_message, one.samples[0].finished_at) == ("late 1", at(10))
    assert one.samples[0].args == '{"id":"t-1"}'
    # A job without a finish comes after every finished one: all five when asked for five.
    five = store.failures(root, samples=5)[0]
    assert [s.job_id for s in five.samples] == ["t-1", "t-2a", "t-2b", "t-3", "t-none"]
    failing = {
        (f.depth, f.name): (f.failures, [(e.error, e.count) for e in f.errors])
        for f in report.overview.failing
    }
    assert failing == {
        (1, "PageJob"): (1, [("ValueError", 1)]),
        (2, "DetailJob"): (
            8,
            [("TimeoutError", 5), ("ValueError", 1), ("crashed", 1), ("not_ready", 1)],
        ),
    }


def test_progress_counts_crashed_children_as_done(store: LineageStore, engine: Engine) -> None:
    """progress() is exact: crashed and failed children are done, and the crashed batch names its documents."""
    rng = random.Random(11)
    builder = TreeBuilder()
    parent = builder.job("UploadJob", state="running", heartbeat=100)
    states = ["succeeded"] * rng.randint(3, 9) + ["running"] * rng.randint(1, 3)
    states += ["queued"] * rng.randint(1, 3) + ["stalled", "failed", "discarded", "skipped"]
    for number, state in enumerate(states):
        docs = [{"source": "PMC", "id": str(4400000 + number * 500 + i)} for i in range(3)]
        builder.job("BatchJob", parent, state=state, enqueued=1, args={"documents": docs})
    crashed = builder.job(
        "BatchJob",
        parent,
        state="crashed",
        enqueued=1,
        args={"documents": [{"source": "PMC", "id": "4402192"}]},
        reason="no heartbeat for 60s",
    )
    builder.job("OtherJob", state="queued")
    builder.insert(engine)
    progress = store.progress(parent)
    total = len(states) + 1
    counts = Counter(states)
    assert progress.total == total
    assert progress.running == counts["running"]
    assert progress.pending == counts["queued"] + 1
    assert progress.done == total - progress.running - progress.pending
    assert (progress.failed, progress.crashed) == (2, 1)
    assert progress.fraction == progress.done / total
    assert not progress.complete
    assert progress.problems[0].job_id == crashed
    assert "4402192" in str(progress.problems[0].args)
    assert {p.state for p in progress.problems} == {"crashed", "failed", "discarded"}


def test_why_of_a_failed_job_prefers_an_earlier_failed_descendant(
    store: LineageStore, engine: Engine
) -> None:
    """why() returns the root-to-job path and, as cause, a descendant that failed before the job."""
    builder = TreeBuilder()
    root = builder.job("PipelineJob", state="failed", started=1, finished=90)
    mapper = builder.job("MapJob", root, state="failed", started=2, finished=60)
    annotate = builder.job(
        "AnnotateJob", mapper, state="failed", started=3, finished=30, error_type="TimeoutError"
    )
    builder.job("CallJob", annotate, state="succeeded", started=4, finished=5)
    builder.attempt(mapper, 1, "retrying", error_type="ConnectionError")
    builder.attempt(mapper, 2, "failed", error_type="TimeoutError")
    builder.insert(engine)
    why = store.why(mapper)
    assert ids(list(why.path)) == [root, mapper]
    assert why.cause is not None
    assert (why.cause.job_id, why.relation) == (annotate, "descendant")
    assert why.cause.trace_id == builder.jobs[annotate]["trace_id"]
    assert [(a.attempt, a.error_type) for a in why.attempts] == [
        (1, "ConnectionError"),
        (2, "TimeoutError"),
    ]
    assert (store.why(annotate).cause.job_id, store.why(annotate).relation) == (annotate, "self")  # type: ignore[union-attr]


def test_why_of_a_waiting_job_finds_the_failed_dependency(
    store: LineageStore, engine: Engine
) -> None:
    """A job that never ran is explained by the sibling that failed earliest (its dependency)."""
    builder = TreeBuilder()
    root = builder.job("VariantPipeline", state="running")
    builder.job("CreateVariants", root, started=1, finished=5)
    mapping = builder.job("MapVariants", root, state="failed", started=6, finished=8)
    builder.job("LaterFailure", root, state="crashed", started=6, finished=20)
    waiting = builder.job("AnnotateVariants", root, state="queued", enqueued=2)
    builder.insert(engine)
    why = store.why(waiting)
    assert ids(list(why.path)) == [root, waiting]
    assert why.cause is not None
    assert (why.cause.job_id, why.relation) == (mapping, "sibling")


def test_why_of_a_healthy_job_has_no_cause(store: LineageStore, engine: Engine) -> None:
    """A job with nothing failed around it has no cause and a path of itself."""
    builder = TreeBuilder()
    root = builder.job("CronJob")
    builder.insert(engine)
    why = store.why(root)
    assert (why.cause, why.relation, ids(list(why.path))) == (None, None, [root])


def test_diff_puts_two_runs_side_by_side(store: LineageStore, engine: Engine) -> None:
    """diff() compares counts, median durations and top errors per stage, with deltas."""
    rng = random.Random(5)
    builder = TreeBuilder()
    runs = []
    for slow in (1, 3):
        root = builder.job("SyncJob")
        pages = rng.randint(2, 6)
        for number in range(pages):
            page = builder.job("PageJob", root, enqueued=0, started=1, finished=1 + slow * number)
            if slow == 3 and number % 2:
                builder.job("DetailJob", page, state="failed", error_type="HTTPError")
        runs.append((root, pages))
    only_b = builder.job("ExtraJob", runs[1][0])
    builder.insert(engine)
    (a, pages_a), (b, pages_b) = runs
    diff = store.diff(a, only_b)
    assert (diff.a.job_id, diff.b.job_id) == (a, b)
    stages = {(s.depth, s.name): s for s in diff.stages}
    page = stages[(1, "PageJob")]
    assert (page.a.total, page.b.total, page.total_delta) == (pages_a, pages_b, pages_b - pages_a)
    assert page.a.median_seconds == (pages_a - 1) / 2
    assert page.b.median_seconds == 3 * (pages_b - 1) / 2
    assert page.median_delta == page.b.median_seconds - page.a.median_seconds
    detail = stages[(2, "DetailJob")]
    assert detail.a.total == 0
    assert detail.b.errors[0].error == "HTTPError"
    assert detail.state_deltas == {"failed": pages_b // 2}
    assert stages[(1, "ExtraJob")].total_delta == 1


def test_overview_of_an_inner_job_stays_in_its_subtree(
    store: LineageStore, built: tuple[TreeBuilder, CinemaRun]
) -> None:
    """overview(page) counts, marks and samples only the jobs under that page."""
    builder, run = built
    page = run.pages[0]
    overview = store.overview(page, stuck_after=60, now=builder.start + timedelta(hours=1))
    subtree = builder.subtree(page)
    assert overview.root.job_id == page
    assert sum(stage.total for stage in overview.tree.stages) == len(subtree)
    assert [(s.name, s.active) for s in overview.stuck] == [("MovieDetailJob", 1)]
    discarded = [r for r in subtree if r["state"] == "discarded"]
    assert [g.count for g in overview.failures] == [len(discarded)]
    assert {s.job_id for s in overview.failures[0].samples} <= {r["job_id"] for r in discarded}


# Deep and cyclic lineage: parent ids come from other programs' metadata and can be anything.

CHAIN = 10_001


@pytest.fixture
def chain(engine: Engine) -> list[str]:
    """One run that is a single line of 10,001 jobs, root first."""
    builder = TreeBuilder()
    line = builder.chain(CHAIN)
    builder.insert(engine)
    return line


def test_a_deep_chain_is_walked_to_the_end_both_ways(store: LineageStore, chain: list[str]) -> None:
    """Below a job and above it, a 10,001-deep chain is returned whole, not cut at 1,000 levels."""
    assert store.count_tree(chain[1]) == CHAIN - 1
    assert ids(store.tree(chain[1])) == chain[1:]
    path = store.ancestors(chain[-1])
    assert ids(path) == chain[:-1]
    assert (path.cycle_at, path.truncated_at) == (None, None)
    why = store.why(chain[-1])
    assert ids(list(why.path)) == chain
    assert (why.cycle_at, why.truncated_at) == (None, None)


def test_a_path_cut_at_the_limit_says_at_which_depth(
    store: LineageStore, chain: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ancestors and why keep the ancestors nearest the job and name the depth where they stop."""
    path = store.ancestors(chain[-1], limit=50)
    assert ids(path) == chain[-51:-1]
    assert path.truncated_at == CHAIN - 51  # the depth of the topmost job kept
    assert path.cycle_at is None
    why = store.why(chain[-1], limit=50)
    assert ids(list(why.path)) == chain[-51:]
    assert why.truncated_at == CHAIN - 51
    monkeypatch.setattr("jobtrace.lineage.results.MAX_DEPTH", 1000)
    default = store.ancestors(chain[-1])
    assert (len(default), default.truncated_at) == (1000, CHAIN - 1001)


def _cycle(engine: Engine, fan_out: int = 0) -> tuple[TreeBuilder, str, str, str]:
    """A run where A's parent is B and B's parent is A, A with ``fan_out`` children, and a leaf."""
    builder = TreeBuilder()
    root = builder.job("SyncJob")
    a = builder.job("AJob", root)
    b = builder.job("BJob", a)
    builder.reparent(a, b)
    leaf = builder.job("LeafJob", b)
    for _ in range(fan_out):
        builder.job("KidJob", a)
    builder.insert(engine)
    return builder, a, b, leaf


def test_a_parent_cycle_ends_the_path_where_it_closes(store: LineageStore, engine: Engine) -> None:
    """Walking up a cycle lists each job once and says at which job the cycle closed."""
    _, a, b, leaf = _cycle(engine)
    path = store.ancestors(a)
    assert ids(path) == [b]
    assert (path.cycle_at, path.truncated_at) == (a, None)
    path = store.ancestors(leaf)
    assert ids(path) == [a, b]
    assert path.cycle_at == b
    why = store.why(leaf)
    assert ids(list(why.path)) == [a, b, leaf]
    assert why.cycle_at == b


def test_a_cycle_through_a_fan_out_counts_each_job_once(
    store: LineageStore, engine: Engine
) -> None:
    """The subtree of a job on a cycle holds every job reachable from it exactly once."""
    builder, a, b, _ = _cycle(engine, fan_out=2000)
    expected = sorted(row["job_id"] for row in builder.subtree(a))
    assert len(expected) == 2003  # A, B, the leaf under B and A's 2,000 children
    assert store.count_tree(a) == len(expected)
    assert sorted(ids(store.tree(a))) == expected
    assert store.count_tree(b) == len(expected)
    overview = store.overview(a)
    assert sum(stage.total for stage in overview.tree.stages) == len(expected)
    assert store.why(a).cycle_at == a


# Runs whose root or parent jobtrace never saw: the writer keeps a placeholder row for them.


@dataclass
class ForeignRun:
    """A run started by a producer jobtrace never saw, under a parent it never saw either."""

    builder: TreeBuilder
    root: str
    parent: str
    chunks: list[str]
    lost: str


@pytest.fixture
def foreign(engine: Engine) -> ForeignRun:
    """Placeholders for the root and the parent, chunks under the parent, one of them lost track of."""
    builder = TreeBuilder()
    for start in (100, 200, 300):  # older runs jobtrace saw whole
        page = builder.job("PageJob", builder.job("SyncJob", enqueued=start), enqueued=start)
        builder.job("DetailJob", page, enqueued=start)
    root = builder.placeholder("ext-root", heard=400)
    parent = builder.placeholder("ext-parent", root, depth=1, heard=400, named_by="chunk-0")
    states = ["succeeded"] * random.Random(6).randint(2, 5) + ["running", "queued", "failed"]
    chunks = [
        builder.job("ChunkJob", parent, state=state, enqueued=400, job_id=f"chunk-{number}")
        for number, state in enumerate(states)
    ]
    lost = builder.job(
        "ChunkJob",
        parent,
        state="unknown",
        enqueued=400,
        started=401,
        finished_at=None,
        reason="lost track: records dropped while the store was down",
    )
    chunks.append(lost)
    builder.insert(engine)
    return ForeignRun(builder, root, parent, chunks, lost)


def test_runs_list_a_run_whose_root_was_never_recorded_by_when_it_was_heard_of(
    store: LineageStore, foreign: ForeignRun
) -> None:
    """A placeholder root has no enqueue time: it is placed by when it was first heard of."""
    runs = store.runs(2)
    assert [run.root.job_id for run in runs][:1] == [foreign.root]
    assert runs[0].root.is_placeholder
    assert runs[0].total == len(foreign.builder.under(foreign.root))
    assert runs[0].unknown == 2 + 1  # root, parent, and the chunk lost track of
    assert runs[0].health == "failing"
    assert [run.root.name for run in store.runs(10)] == ["?"] + ["SyncJob"] * 3


def test_unknown_is_neither_active_nor_failing(store: LineageStore, engine: Engine) -> None:
    """A run whose only open question is a never-recorded root is ok, and never stuck."""
    builder = TreeBuilder()
    root = builder.placeholder("ext-root", heard=0)
    builder.job("ChunkJob", root, enqueued=1)
    builder.insert(engine)
    (run,) = store.runs()
    assert (run.health, run.active, run.failures, run.unknown) == ("ok", 0, 0, 1)
    assert store.stuck_stages(root, 1, now=builder.start + timedelta(days=1)) == []


def test_stats_and_tree_cover_unrecorded_jobs_like_recorded_ones(
    store: LineageStore, foreign: ForeignRun
) -> None:
    """The stage table of any job of the run counts the placeholders as ``?`` stages, unknown."""
    builder = foreign.builder
    stats = store.stage_stats(foreign.chunks[0])
    assert stats.root_job_id == foreign.root
    got = {(r.depth, r.name, r.state): r.count for r in stats.rows}
    assert got == dict(builder.counts(builder.under(foreign.root)))
    assert got[(0, "?", "unknown")] == got[(1, "?", "unknown")] == 1
    tree = store.stage_tree(foreign.root)
    (top,) = tree.children_of(tree.stages[0])
    assert (top.depth, top.name) == (1, "?")
    assert [s.name for s in tree.children_of(top)] == ["ChunkJob"]


def test_progress_of_an_unrecorded_parent_counts_unknown_children_apart(
    store: LineageStore, foreign: ForeignRun
) -> None:
    """A child lost track of is neither pending, running nor done: the parent is not complete."""
    progress = store.progress(foreign.parent)
    assert progress.parent.is_placeholder
    assert progress.total == len(foreign.chunks)
    assert progress.unknown == 1
    assert progress.total == progress.pending + progress.running + progress.done + progress.unknown
    assert not progress.complete
    assert sorted(ids(store.children(foreign.parent))) == sorted(foreign.chunks)
    assert ids(store.children(foreign.parent, state="unknown")) == [foreign.lost]


def test_why_walks_up_through_unrecorded_jobs(store: LineageStore, foreign: ForeignRun) -> None:
    """The path of a chunk goes through its placeholder parent up to the placeholder root."""
    why = store.why(foreign.chunks[0])
    assert ids(list(why.path)) == [foreign.root, foreign.parent, foreign.chunks[0]]
    assert [row.is_placeholder for row in why.path] == [True, True, False]
    assert why.cause is None, "a placeholder is no failure"
    assert store.why(foreign.parent).job.reason == "named as the parent of chunk-0; never recorded"


def test_jobs_named_as_parent_or_root_without_any_row_still_answer(
    store: LineageStore, engine: Engine
) -> None:
    """A store written before placeholders existed: a parent and root only named still answer."""
    builder = TreeBuilder()
    for number in range(3):
        builder.job(
            "ChunkJob",
            job_id=f"orphan-{number}",
            parent_job_id="ghost-parent",
            root_job_id="ghost-root",
            depth=2,
        )
    builder.insert(engine)
    parent = store.job("ghost-parent")
    assert parent.is_placeholder
    assert (parent.name, parent.state, parent.attempt) == ("?", "unknown", 0)
    assert (parent.root_job_id, parent.depth, parent.parent_job_id) == ("ghost-root", 1, None)
    assert store.progress("ghost-parent").total == 3
    assert len(store.children("ghost-parent")) == 3
    assert store.stage_stats("orphan-0").root_job_id == "ghost-root"
    overview = store.overview("ghost-root")
    assert overview.root.is_placeholder
    assert overview.root.is_root
    assert sum(stage.total for stage in overview.tree.stages) == 3
    assert ids(store.ancestors("orphan-1")) == ["ghost-root", "ghost-parent"]


def test_jobs_whose_records_never_said_root_or_depth_are_answered(
    store: LineageStore, engine: Engine
) -> None:
    """A job without root or depth is a stage of unknown depth; alone, it is a run of its own."""
    builder = TreeBuilder()
    root = builder.job("SyncJob")
    page = builder.job("PageJob", root)
    beat = builder.job("ChunkJob", page, state="running", root_job_id=None, depth=None)
    alone = builder.job("LoneJob", state="running", root_job_id=None, depth=None)
    builder.insert(engine)
    assert store.stage_stats(beat).root_job_id == root
    stats = store.stage_stats(alone)
    assert [(r.depth, r.name, r.state, r.count) for r in stats.rows] == [
        (UNKNOWN_DEPTH, "LoneJob", "running", 1)
    ]
    assert stats.root_job_id == alone
    tree = store.stage_tree(page)
    assert [(s.depth, s.name) for s in tree.stages] == [(UNKNOWN_DEPTH, "ChunkJob"), (1, "PageJob")]
    assert [tree.children_of(s) for s in tree.stages] == [[], []], "no level is known to hang it"
    assert ids(store.ancestors(beat)) == [root, page]
    assert store.overview(alone).tree.stages[0].depth == UNKNOWN_DEPTH
    assert store.diff(alone, beat).a.job_id == alone


# Resolving what a person typed: an id, a unique prefix of one, or a prefix ending in "…".

PREFIX_IDS = [
    "7d1e01aa",
    "7d1e02bb",
    "a%b-1",
    "axb-1",
    "a_b-1",
    "a\\b-1",
    "A-upper",
    "日本-1",
    "日本語-2",
    "🚀-1",
    "z\U0010ffff-1",
    "job-1",
    "job-10",
    "tail…",
    "hex-09ab",
    "az-1",
]


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-icu"])
def id_store(request: pytest.FixtureRequest) -> Iterator[LineageStore]:
    """Jobs whose ids share prefixes and hold LIKE wildcards, backslashes and any unicode.

    Also on a PostgreSQL database ordered by a language (ICU ``en-US``), where ``hex-0:`` sorts
    before ``hex-09ab``, so a prefix is not a range of ids.
    """
    fixture = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}.get(
        request.param, "icu_postgres_url"
    )
    url = str(request.getfixturevalue(fixture))
    engine = create_schema(url)
    builder = TreeBuilder()
    root = builder.job("SyncJob", job_id="root-0")
    for job_id in PREFIX_IDS:
        builder.job("PageJob", root, job_id=job_id)
    builder.insert(engine)
    yield LineageStore(engine)
    engine.dispose()


@pytest.fixture
def icu_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database whose default collation is ICU's en-US, dropped afterwards."""
    require("postgresql")
    name = f"jobtrace_test_icu_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(
                text(
                    f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu'
                    " ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                )
            )
    except DBAPIError as error:  # a server before 15, or built without ICU
        admin.dispose()
        pytest.skip(f"no ICU collation: {error.orig}")
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("7d1e01", "7d1e01aa"),
        ("7d1e01…", "7d1e01aa"),
        ("7d1e02bb", "7d1e02bb"),
        ("a%", "a%b-1"),
        ("a_", "a_b-1"),
        ("ax", "axb-1"),
        ("a\\", "a\\b-1"),
        ("A", "A-upper"),
        ("日本-", "日本-1"),
        ("日本語", "日本語-2"),
        ("🚀", "🚀-1"),
        ("z\U0010ffff", "z\U0010ffff-1"),
        ("job-1", "job-1"),
        ("job-10…", "job-10"),
        ("tail…", "tail…"),
        ("tai…", "tail…"),
        ("roo", "root-0"),
        ("hex-09", "hex-09ab"),
        ("az", "az-1"),
    ],
)
def test_resolve_takes_an_id_or_a_unique_prefix(
    id_store: LineageStore, typed: str, expected: str
) -> None:
    """A full id (even one that prefixes others) or a unique prefix, wildcards literal, resolves."""
    assert id_store.resolve(typed) == expected


def test_resolve_lists_the_candidates_of_an_ambiguous_prefix(id_store: LineageStore) -> None:
    """A prefix of several ids raises a typed error naming them, a few at most."""
    with pytest.raises(AmbiguousJobIdError) as caught:
        id_store.resolve("7d1e…")
    assert caught.value.prefix == "7d1e"
    assert [job.job_id for job in caught.value.candidates] == ["7d1e01aa", "7d1e02bb"]
    assert not caught.value.more
    assert "7d1e01aa" in str(caught.value)
    with pytest.raises(AmbiguousJobIdError) as caught:
        id_store.resolve("日本", candidates=1)
    assert [job.job_id for job in caught.value.candidates] == ["日本-1"]
    assert caught.value.more
    assert isinstance(caught.value, LookupError)


@pytest.mark.parametrize("typed", ["a%x", "a_x", "a", "B", "nope", "", "…", "7d1e0 ", "x\udcff"])
def test_resolve_refuses_what_names_no_job_alone(id_store: LineageStore, typed: str) -> None:
    """No match, an empty prefix or undecodable text is JobNotFoundError; "a" is ambiguous."""
    with pytest.raises((JobNotFoundError, AmbiguousJobIdError)) as caught:
        id_store.resolve(typed)
    assert isinstance(caught.value, AmbiguousJobIdError) == (typed == "a")


def test_resolve_finds_an_id_only_named_by_other_jobs(store: LineageStore, engine: Engine) -> None:
    """A parent that exists only as an id in its children's rows resolves by its full id."""
    builder = TreeBuilder()
    builder.job("ChunkJob", parent_job_id="ghost-parent", root_job_id="ghost-root", depth=2)
    builder.insert(engine)
    assert store.resolve("ghost-parent") == "ghost-parent"


def test_the_run_page_counts_come_from_indexes_alone_on_sqlite(
    store: LineageStore, engine: Engine
) -> None:
    """The overview's grouped read (stage × queue × state with the times the stuck check and the
    stage times need) and its per-parent grouping are covering-index ranges in index order: no job is read and
    nothing is sorted (revision 0007; bench/dashboard.py --explain shows them at 100k jobs)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plans")
    statements = {
        "ix_jobtrace_jobs_stage_queues": (
            "SELECT depth, name, queue, state, count(*), min(coalesce(due_at, enqueued_at)),"
            " max(started_at), max(finished_at), min(enqueued_at), min(started_at)"
            " FROM jobtrace_jobs WHERE root_job_id = 'r' GROUP BY depth, name, queue, state"
        ),
        "ix_jobtrace_jobs_stage_parents": (
            "SELECT depth, name, parent_job_id, count(*) FROM jobtrace_jobs"
            " WHERE root_job_id = 'r' AND parent_job_id IS NOT NULL"
            " GROUP BY depth, name, parent_job_id"
        ),
    }
    with engine.connect() as conn:
        for index, stmt in statements.items():
            plan = " | ".join(
                str(row[-1]) for row in conn.execute(text("EXPLAIN QUERY PLAN " + stmt))
            )
            assert f"COVERING INDEX {index}" in plan, plan
            assert "TEMP B-TREE" not in plan, plan


def test_the_failures_read_sorts_a_stages_failed_jobs_once_on_sqlite(
    store: LineageStore, engine: Engine
) -> None:
    """The failures' windows all partition by one column of the narrow rows: SQLite sorts the
    failed jobs once for all four, not once per window (the error's expression, written out
    in each window with its own bound parameters, looked like four partitions to it)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plans")
    from sqlalchemy import event

    builder = TreeBuilder()
    root = builder.job("SyncJob", state="running")
    for n in range(4):
        builder.job("DetailJob", root, state="discarded", error_type=f"E{n % 2}", finished=n)
    builder.insert(engine)
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, stmt: str, params: Any, context: Any, many: bool) -> None:
        if "ranked" in stmt:
            seen.append((stmt, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        assert [g.count for g in store.run_report(root).overview.failures] == [2, 2]
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    ((stmt, params),) = seen
    with engine.connect() as conn:
        plan = [str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params)]
    sorts = [step for step in plan if step.startswith("USE TEMP B-TREE")]
    # One for the windows, one for the answer's order (the old read had five).
    assert len(sorts) == 2, plan
