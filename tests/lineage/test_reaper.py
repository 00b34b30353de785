"""The reaper: silent running jobs become crashed, long-queued ones stalled, idempotently."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from jobtrace.lineage.models import Attempt
from jobtrace.lineage.queries import LineageStore
from jobtrace.lineage.reaper import reap
from jobtrace.lineage.store import upgrade
from tests.lineage.builders import T0, TreeBuilder, create_schema

NOW = T0 + timedelta(seconds=600)


def build(store_url: str) -> tuple[TreeBuilder, dict[str, str]]:
    """A parent with children in every situation the reaper must tell apart."""
    upgrade(store_url)
    builder = TreeBuilder()
    parent = builder.job("UploadJob", state="running", started=0, heartbeat=590)
    ids = {
        "parent": parent,
        "silent": builder.job("BatchJob", parent, state="running", started=1, heartbeat=100),
        "alive": builder.job("BatchJob", parent, state="running", started=1, heartbeat=595),
        "done": builder.job("BatchJob", parent, state="succeeded", started=1, finished=5),
        "slow": builder.job("ReportJob", parent, state="running", started=1, heartbeat=100),
        "waiting": builder.job("BatchJob", parent, state="queued", enqueued=10),
        "fresh": builder.job("BatchJob", parent, state="queued", enqueued=550),
    }
    builder.attempt(ids["silent"], 1, "running")
    engine = create_schema(store_url)
    builder.insert(engine)
    engine.dispose()
    return builder, ids


def test_reap_tells_silent_from_alive_and_stalled_from_fresh(store_url: str) -> None:
    """Only the job without heartbeats crashes, only the long-queued one stalls."""
    _, ids = build(store_url)
    result = reap(
        store_url,
        heartbeat_timeout=60,
        stalled_after=300,
        heartbeat_timeout_by_name={"ReportJob": 3600},
        now=NOW,
    )
    assert set(result.crashed) == {ids["silent"]}
    assert set(result.stalled) == {ids["waiting"]}
    with LineageStore(store_url) as store:
        assert store.job(ids["silent"]).state == "crashed"
        assert store.job(ids["slow"]).state == "running"  # its own, longer timeout
        assert store.job(ids["alive"]).state == "running"
        assert store.job(ids["fresh"]).state == "queued"
        progress = store.progress(ids["parent"])
    assert (progress.crashed, progress.done, progress.total) == (1, 2, 6)


def test_reap_is_idempotent(store_url: str) -> None:
    """A second run (another cron host) finds nothing left to declare."""
    build(store_url)
    first = reap(store_url, heartbeat_timeout=60, stalled_after=300, now=NOW)
    second = reap(store_url, heartbeat_timeout=60, stalled_after=300, now=NOW)
    assert first.crashed
    assert first.stalled
    assert (second.crashed, second.stalled) == ((), ())


def test_reap_marks_the_attempt_row_too(sqlite_url: str) -> None:
    """The audit trail of attempts shows the crashed attempt, with the reason."""
    builder, ids = build(sqlite_url)
    reap(sqlite_url, heartbeat_timeout=60, now=NOW)
    query = select(Attempt.state, Attempt.reason).where(Attempt.job_id == ids["silent"])
    with LineageStore(sqlite_url) as store, store.engine.connect() as conn:
        rows = [tuple(row) for row in conn.execute(query)]
    assert rows == [("crashed", "no heartbeat for 60s")]
    assert builder.jobs[ids["silent"]]["state"] == "running"  # the builder's copy is untouched


def test_a_job_scheduled_for_later_stalls_only_once_it_is_due(sqlite_url: str) -> None:
    """Queued since long ago but due in the future: scheduled, not stalled; overdue: stalled."""
    upgrade(sqlite_url)
    builder = TreeBuilder()
    later = builder.job("ReportJob", state="queued", enqueued=0, due_at=builder.at(3600))
    overdue = builder.job("ReportJob", state="queued", enqueued=0, due_at=builder.at(60))
    engine = create_schema(sqlite_url)
    builder.insert(engine)
    engine.dispose()
    result = reap(sqlite_url, stalled_after=300, now=NOW)
    assert result.stalled == (overdue,)
    assert later not in result.stalled


def test_a_job_is_not_crashed_before_it_missed_its_own_heartbeats(store_url: str) -> None:
    """A timeout shorter than the worker's interval waits for three missed heartbeats."""
    upgrade(store_url)
    builder = TreeBuilder()
    slow_beats = builder.job(
        "BatchJob", state="running", started=0, heartbeat=580, heartbeat_interval=10.0
    )
    long_gone = builder.job(
        "BatchJob", state="running", started=0, heartbeat=560, heartbeat_interval=10.0
    )
    unknown_interval = builder.job("BatchJob", state="running", started=0, heartbeat=590)
    engine = create_schema(store_url)
    builder.insert(engine)
    engine.dispose()
    result = reap(store_url, heartbeat_timeout=3, now=NOW)
    assert set(result.crashed) == {long_gone, unknown_interval}
    with LineageStore(store_url) as store:
        assert store.job(slow_beats).state == "running"
        assert store.job(long_gone).reason == "no heartbeat for 30s"
    assert reap(store_url, heartbeat_timeout=3, missed_heartbeats=1, now=NOW).crashed == (
        slow_beats,
    )


def test_a_job_whose_records_were_lost_is_lost_track_not_crashed(store_url: str) -> None:
    """Silent jobs of a writer that dropped records become unknown, with a reason that says so."""
    from jobtrace.lineage.models import Gap

    upgrade(store_url)
    builder = TreeBuilder()
    marked = builder.job("BatchJob", state="running", started=0, heartbeat=100)
    builder.jobs[marked]["lost_at"] = builder.at(300)
    in_gap = builder.job("BatchJob", state="running", started=0, heartbeat=100, host="w1", pid=7)
    other_host = builder.job(
        "BatchJob", state="running", started=0, heartbeat=100, host="w2", pid=7
    )
    queued_lost = builder.job("BatchJob", state="queued", enqueued=10)
    builder.jobs[queued_lost]["lost_at"] = builder.at(300)
    engine = create_schema(store_url)
    builder.insert(engine)
    with engine.begin() as conn:
        conn.execute(
            Gap.__table__.insert().values(
                host="w1",
                pid=7,
                started_at=builder.at(90),
                ended_at=builder.at(200),
                records_dropped=40,
                jobs_redelivered=0,
            )
        )
    engine.dispose()
    result = reap(store_url, heartbeat_timeout=60, stalled_after=300, now=NOW)
    assert result.crashed == (other_host,)
    assert set(result.lost) == {marked, in_gap, queued_lost}
    with LineageStore(store_url) as store:
        row = store.job(in_gap)
    assert row.state == "unknown"
    assert row.reason is not None
    assert row.reason.startswith("lost track")
