"""Prune: whole runs deleted once old, never part of one, beside writers and another prune."""

from __future__ import annotations

import itertools
import math
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event, insert, select, update

from jobtrace import records
from jobtrace.exceptions import StoreError
from jobtrace.lineage.models import Attempt, Job
from jobtrace.lineage.prune import PruneResult, format_duration, parse_duration, prune
from jobtrace.lineage.recorder import Recorder
from jobtrace.lineage.store import create_store_engine, upgrade
from jobtrace.records import JobInfo, JobState
from tests.lineage.builders import T0, TreeBuilder, create_schema

DAY = 86_400.0
NOW = T0 + timedelta(days=100)


def ago(days: float) -> float:
    """The builder offset (seconds after T0) of ``days`` before NOW."""
    return (100 - days) * DAY


def run(
    builder: TreeBuilder,
    days_ago: float,
    *,
    name: str = "SyncJob",
    states: tuple[str, str, str] = ("succeeded", "succeeded", "succeeded"),
) -> list[str]:
    """A root, two children and a grandchild, last written ``days_ago``, an attempt row each."""
    at = ago(days_ago)

    def job(job_name: str, parent: str | None, state: str) -> str:
        return builder.job(
            job_name, parent, state=state, enqueued=at, updated_at=builder.at(at + 3)
        )

    root = job(name, None, "succeeded")
    first = job("PageJob", root, states[0])
    second = job("PageJob", root, states[1])
    ids = [root, first, second, job("DetailJob", first, states[2])]
    for job_id in ids:
        builder.attempt(job_id, 1, builder.jobs[job_id]["state"])
    return ids


def store(url: str, builder: TreeBuilder) -> None:
    """The schema at its latest revision, and the built rows in it."""
    upgrade(url)
    engine = create_schema(url)
    builder.insert(engine)
    engine.dispose()


def stored(url: str) -> tuple[dict[str, dict[str, Any]], set[tuple[str, int]]]:
    """Every job row by id, and every attempt key."""
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            jobs = {row.job_id: dict(row._mapping) for row in conn.execute(select(Job.__table__))}
            attempts = {
                (row.job_id, row.attempt)
                for row in conn.execute(select(Attempt.job_id, Attempt.attempt))
            }
    finally:
        engine.dispose()
    return jobs, attempts


def test_old_runs_go_whole_while_recent_and_active_ones_stay(store_url: str) -> None:
    """An old run loses every job and attempt; a recent, an active or a lately touched one stays."""
    builder = TreeBuilder()
    old = run(builder, 10)
    recent = run(builder, 2)
    active = run(builder, 30, states=("succeeded", "running", "succeeded"))
    stalled = run(builder, 30, states=("stalled", "succeeded", "succeeded"))
    touched = run(builder, 10)
    builder.jobs[touched[3]]["finished_at"] = builder.at(ago(1))  # one late time is activity
    store(store_url, builder)

    result = prune(store_url, keep=7 * DAY, now=NOW, pause=0)

    jobs, attempts = stored(store_url)
    assert not set(old) & set(jobs)
    assert not {key for key in attempts if key[0] in old}
    assert set(jobs) == {*recent, *active, *stalled, *touched}
    assert len(attempts) == 16
    assert (result.runs, result.jobs, result.attempts) == (1, 4, 4)


def test_runs_with_failures_are_kept_longer(store_url: str) -> None:
    """A failing run outlives a clean one of the same age; lost track counts as failing."""
    builder = TreeBuilder()
    clean = run(builder, 20)
    failed = run(builder, 20, states=("succeeded", "failed", "succeeded"))
    crashed = run(builder, 20, states=("crashed", "succeeded", "succeeded"))
    lost = run(builder, 20, states=("succeeded", "succeeded", "unknown"))
    old_failed = run(builder, 40, states=("discarded", "succeeded", "succeeded"))
    store(store_url, builder)

    result = prune(store_url, keep=7 * DAY, keep_failing=30 * DAY, now=NOW, pause=0)

    jobs, _ = stored(store_url)
    assert set(jobs) == {*failed, *crashed, *lost}
    counts = {(rule.outcome, rule.runs, rule.jobs) for rule in result.by_rule}
    assert counts == {("clean", 1, 4), ("failing", 1, 4)}
    assert not set(clean) & set(jobs)
    assert not set(old_failed) & set(jobs)


def test_root_job_names_have_ages_of_their_own(store_url: str) -> None:
    """--keep-for and --keep-failing-for apply to the runs of one root job name only."""
    builder = TreeBuilder()
    report = run(builder, 20, name="ReportJob")
    old_report = run(builder, 40, name="ReportJob")
    failing_report = run(builder, 40, name="ReportJob", states=("failed",) * 3)
    sync = run(builder, 20)
    failing_sync = run(builder, 40, states=("failed",) * 3)
    store(store_url, builder)

    result = prune(
        store_url,
        keep=7 * DAY,
        keep_failing=30 * DAY,
        keep_by_name={"ReportJob": 30 * DAY},
        keep_failing_by_name={"ReportJob": 365 * DAY},
        now=NOW,
        pause=0,
    )

    jobs, _ = stored(store_url)
    assert set(jobs) == {*report, *failing_report}
    assert not set(old_report + sync + failing_sync) & set(jobs)
    labels = {rule.label: rule.runs for rule in result.by_rule}
    assert labels == {
        "clean runs idle for 7d": 1,
        "failing runs idle for 30d": 1,
        "clean runs of ReportJob idle for 30d": 1,
        "failing runs of ReportJob idle for 1y": 0,
    }


def test_placeholders_and_jobs_without_a_root_go_with_their_run(store_url: str) -> None:
    """A placeholder root, jobs no record gave a root, and orphan subtrees are pruned whole."""
    builder = TreeBuilder()
    old = run(builder, 10)
    loose = builder.job("ForeignJob", old[3], enqueued=ago(10), updated_at=builder.at(ago(10)))
    below = builder.job("ForeignJob", loose, enqueued=ago(10), updated_at=builder.at(ago(10)))
    for job_id in (loose, below):
        builder.jobs[job_id].update(root_job_id=None, depth=None)
        builder.attempt(job_id, 1, "succeeded")
    kept = run(builder, 2)
    kept_loose = builder.job(
        "ForeignJob", kept[1], enqueued=ago(10), updated_at=builder.at(ago(10))
    )
    builder.jobs[kept_loose].update(root_job_id=None, depth=None)
    # A run whose job without a root is still busy stays whole.
    busy = run(builder, 10)
    busy_loose = builder.job("ForeignJob", busy[1], state="running", enqueued=ago(10))
    builder.jobs[busy_loose].update(root_job_id=None, depth=None, updated_at=builder.at(ago(10)))
    placeholder = builder.placeholder("ext-root", heard=ago(10))
    child = builder.job("PageJob", None, enqueued=ago(10), updated_at=builder.at(ago(10)))
    builder.jobs[child].update(root_job_id=placeholder, parent_job_id=placeholder, depth=1)
    orphan = builder.job("ForeignJob", None, enqueued=ago(10), updated_at=builder.at(ago(10)))
    orphan_child = builder.job("ForeignJob", orphan, enqueued=ago(10))
    builder.jobs[orphan].update(root_job_id=None, depth=None, parent_job_id="never-stored")
    builder.jobs[orphan_child].update(root_job_id=None, depth=None, updated_at=builder.at(ago(10)))
    fresh_orphan = builder.job("ForeignJob", None, enqueued=ago(1), updated_at=builder.at(ago(1)))
    builder.jobs[fresh_orphan].update(root_job_id=None, depth=None)
    store(store_url, builder)

    result = prune(store_url, keep=7 * DAY, now=NOW, pause=0)

    jobs, attempts = stored(store_url)
    assert set(jobs) == {*kept, kept_loose, *busy, busy_loose, fresh_orphan}
    assert not {key for key in attempts if key[0] in (loose, below)}
    assert (result.runs, result.jobs) == (3, 6 + 2 + 2)


def test_a_dry_run_counts_per_rule_and_deletes_nothing(store_url: str) -> None:
    """--dry-run reports what each rule would delete, attempts included, and leaves the store."""
    builder = TreeBuilder()
    run(builder, 10)
    run(builder, 40, states=("failed", "succeeded", "succeeded"))
    builder.attempt(run(builder, 12)[1], 2, "succeeded")
    store(store_url, builder)
    before = stored(store_url)

    dry = prune(store_url, keep=7 * DAY, keep_failing=30 * DAY, now=NOW, dry_run=True)
    assert stored(store_url) == before
    real = prune(store_url, keep=7 * DAY, keep_failing=30 * DAY, now=NOW, pause=0)

    assert dry.dry_run
    assert not real.dry_run
    assert (dry.runs, dry.jobs, dry.attempts) == (3, 12, 13)
    assert dry.by_rule == real.by_rule


def test_prune_is_idempotent(store_url: str) -> None:
    """A second prune with the same rules (another cron host) finds nothing left to delete."""
    builder = TreeBuilder()
    for days in (10, 11, 12, 2):
        run(builder, days)
    store(store_url, builder)
    first = prune(store_url, keep=7 * DAY, now=NOW, pause=0)
    second = prune(store_url, keep=7 * DAY, now=NOW, pause=0)
    assert first.runs == 3
    assert (second.runs, second.jobs, second.attempts) == (0, 0, 0)


def test_batches_hold_whole_runs_and_a_big_run_goes_in_one(sqlite_url: str) -> None:
    """Each transaction deletes whole runs; a run bigger than a batch is deleted alone, whole."""
    builder = TreeBuilder()
    big = [builder.job("SyncJob", enqueued=ago(10), updated_at=builder.at(ago(10)))]
    for _ in range(40):
        big.append(builder.job("PageJob", big[0], enqueued=ago(10), updated_at=builder.at(ago(10))))
    for days in range(10, 16):
        run(builder, days)
    store(sqlite_url, builder)
    progress: list[PruneResult] = []

    prune(sqlite_url, keep=7 * DAY, now=NOW, batch_size=5, pause=0, on_progress=progress.append)

    totals = [0] + [step.jobs for step in progress]
    steps = [b - a for a, b in itertools.pairwise(totals)]
    assert set(steps) <= {4, 8, 41}  # one or two small runs, or the big one alone
    assert steps.count(41) == 1
    assert stored(sqlite_url)[0] == {}


def write_late(url: str, late: str, target: list[str]) -> None:
    """A late child of ``target`` (``late="child"``) or a late failure of its grandchild."""
    writer = create_store_engine(url)
    try:
        with writer.begin() as conn:
            if late == "child":
                conn.execute(
                    insert(Job).values(
                        job_id="late-child",
                        name="DetailJob",
                        state="succeeded",
                        attempt=1,
                        parent_job_id=target[2],
                        root_job_id=target[0],
                        depth=2,
                        updated_at=NOW,
                    )
                )
            else:
                conn.execute(
                    update(Job)
                    .where(Job.job_id == target[3])
                    .values(state="failed", updated_at=NOW)
                )
    finally:
        writer.dispose()


@pytest.mark.parametrize("late", ["child", "outcome"])
def test_a_run_written_to_during_its_prune_is_kept_whole(store_url: str, late: str) -> None:
    """A late child or outcome landing after the run was judged, before it goes, keeps it whole.

    The write lands at the last moment a writer can get in: on SQLite just before prune takes
    the write lock (``BEGIN IMMEDIATE``), on PostgreSQL just before its first ``DELETE``.
    """
    builder = TreeBuilder()
    target = run(builder, 30)  # the oldest: the first transaction deletes it
    others = [run(builder, days) for days in (10, 11)]
    store(store_url, builder)
    engine = create_store_engine(store_url)
    first = "BEGIN IMMEDIATE" if engine.dialect.name == "sqlite" else "DELETE FROM jobtrace_jobs"
    wrote: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def land_late(*args: Any) -> None:
        statement = args[2]
        if not statement.startswith(first) or wrote:
            return
        wrote.append(statement)
        write_late(store_url, late, target)

    try:
        result = prune(engine, keep=7 * DAY, now=NOW, batch_size=1, pause=0)
    finally:
        engine.dispose()

    assert wrote
    jobs, attempts = stored(store_url)
    expected = {*target, "late-child"} if late == "child" else set(target)
    assert set(jobs) == expected
    assert {key for key in attempts if key[0] in target} == {(job_id, 1) for job_id in target}
    assert (result.runs, result.changed) == (2, 1)
    assert not {job_id for other in others for job_id in other} & set(jobs)


def test_a_write_during_a_sqlite_prune_transaction_waits_for_it(sqlite_url: str) -> None:
    """On SQLite prune holds the write lock from its first statement: a late child sent meanwhile
    waits for the commit (nothing half-deleted, nothing lost) and lands after its run went whole."""
    builder = TreeBuilder()
    target = run(builder, 30)
    store(sqlite_url, builder)
    engine = create_store_engine(sqlite_url)
    writers: list[threading.Thread] = []

    @event.listens_for(engine, "before_cursor_execute")
    def write_meanwhile(*args: Any) -> None:
        if not args[2].startswith("DELETE FROM jobtrace_jobs") or writers:
            return
        writer = threading.Thread(target=write_late, args=(sqlite_url, "child", target))
        writers.append(writer)
        writer.start()
        writer.join(0.3)  # it would land now if prune did not hold the lock
        assert writer.is_alive()

    try:
        result = prune(engine, keep=7 * DAY, now=NOW, batch_size=1, pause=0)
    finally:
        engine.dispose()
        for writer in writers:
            writer.join(30)

    assert len(writers) == 1
    assert not writers[0].is_alive()
    jobs, attempts = stored(sqlite_url)
    assert set(jobs) == {"late-child"}  # the run went whole; the late record starts it anew
    assert not {key for key in attempts if key[0] in target}
    assert (result.runs, result.jobs, result.changed) == (1, 4, 0)


def test_two_prunes_at_once_delete_each_run_once(store_url: str) -> None:
    """Two prunes started together both finish; together they delete every old run exactly once."""
    builder = TreeBuilder()
    old = [run(builder, 8 + n / 10) for n in range(60)]
    kept = run(builder, 1)
    store(store_url, builder)
    barrier = threading.Barrier(2)
    results: list[PruneResult] = []
    errors: list[BaseException] = []

    def one() -> None:
        barrier.wait()
        try:
            results.append(prune(store_url, keep=7 * DAY, now=NOW, batch_size=8, pause=0))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sum(result.runs for result in results) == len(old)
    assert sum(result.attempts for result in results) == 4 * len(old)
    jobs, attempts = stored(store_url)
    assert set(jobs) == set(kept)
    assert len(attempts) == 4


def test_writers_running_during_a_prune_lose_nothing(store_url: str) -> None:
    """A recorder writing new runs and late children of old runs while prune deletes loses nothing.

    Every job the recorder wrote is there after the prune, and every old run is either gone whole
    or whole (kept because a late child reached it first).
    """
    now = datetime.now(timezone.utc)
    builder = TreeBuilder(start=now - timedelta(days=100))
    old = [run(builder, 30 + n / 100) for n in range(150)]
    store(store_url, builder)
    recorder = Recorder(store_url, write_interval=0.01, batch_size=50)
    written: list[str] = []
    done = threading.Event()

    def write() -> None:
        n = 0
        while not done.is_set() or n < 200:
            at = time.time()
            if n % 3 == 0:  # a late child of an old run
                parent = old[(n * 37) % len(old)]  # all over the store, every run hit
                info = JobInfo(
                    job_id=f"late-{n}",
                    name="DetailJob",
                    root_job_id=parent[0],
                    depth=2,
                    parent_job_id=parent[1],
                )
            else:
                info = JobInfo(job_id=f"new-{n}", name="SyncJob", root_job_id=f"new-{n}", depth=0)
            for record in (
                records.enqueued(info, at=at),
                records.started(info, at=at),
                records.finished(info, JobState.SUCCEEDED, at=at),
            ):
                recorder(record)
            written.append(info.job_id)
            n += 1
            time.sleep(0.001)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        result = prune(store_url, keep=7 * DAY, batch_size=8, pause=0.01)
    finally:
        done.set()
        thread.join(60)
        assert recorder.flush(30)
        recorder.close()

    assert recorder.dropped == 0
    jobs, attempts = stored(store_url)
    assert all(jobs[job_id]["state"] == "succeeded" for job_id in written)
    assert {(job_id, 1) for job_id in written} <= attempts
    whole = 0
    for ids in old:
        present = [job_id for job_id in ids if jobs.get(job_id, {}).get("attempt")]
        assert present in ([], ids), ids
        whole += bool(present)
    assert result.runs == len(old) - whole
    assert result.runs > 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * DAY),
        ("12h", 43_200),
        ("1d12h", 1.5 * DAY),
        ("1.5w", 10.5 * DAY),
        ("1y", 365 * DAY),
    ],
)
def test_durations_read_as_written(text: str, seconds: float) -> None:
    """Ages are numbers with units, several units adding up."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7x", "7", "", "d", "-3d", "0d", "0s", "7 d", "1e3d", "nand"])
def test_nonsense_durations_are_refused(text: str) -> None:
    """A duration without a unit, with an unknown unit, negative or zero is a ValueError."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_durations_print_the_way_they_are_written() -> None:
    """Rule labels show ages in the unit a user would type."""
    assert [format_duration(s) for s in (7 * DAY, 90 * DAY, 3600, 45, 365 * DAY)] == [
        "7d",
        "90d",
        "1h",
        "45s",
        "1y",
    ]


@pytest.mark.parametrize(
    "options",
    [
        {"keep": 0},
        {"keep": -DAY},
        {"keep": math.nan},
        {"keep": DAY, "keep_failing": 0},
        {"keep": DAY, "keep_by_name": {"ReportJob": -1}},
        {"keep": DAY, "batch_size": 0},
        {"keep": DAY, "pause": -1},
    ],
)
def test_ages_that_are_not_more_than_zero_are_refused(sqlite_url: str, options: Any) -> None:
    """Zero, negative or NaN ages, an empty batch or a negative pause delete nothing: ValueError."""
    builder = TreeBuilder()
    ids = run(builder, 10)
    store(sqlite_url, builder)
    with pytest.raises(ValueError, match="must be"):
        prune(sqlite_url, now=NOW, **options)
    assert set(stored(sqlite_url)[0]) == set(ids)


def test_a_store_older_than_prune_needs_asks_for_an_upgrade(sqlite_url: str) -> None:
    """A store at revision 0004 (no prune index) is a StoreError naming `jobtrace db upgrade`."""
    config = Config()
    config.set_main_option("script_location", "jobtrace.lineage:migrations")
    engine = create_store_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0004")
    finally:
        engine.dispose()
    with pytest.raises(StoreError, match="jobtrace db upgrade"):
        prune(sqlite_url, keep=DAY)
