"""The recorder: every job in the store off the hot path, whatever the sampling or the store."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError

import jobtrace
from jobtrace import records as records_module
from jobtrace.lineage import recorder as recorder_module
from jobtrace.lineage.models import Attempt, Job
from jobtrace.lineage.queries import JobNotFoundError, LineageStore
from jobtrace.lineage.reaper import reap
from jobtrace.lineage.recorder import Recorder, get_recorder, start_recorder, stop_recorder
from jobtrace.local import LocalQueue
from jobtrace.records import JobRecord, JobState
from jobtrace.testing import capture_telemetry

UNREACHABLE_URL = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2"


@pytest.fixture
def recorder(store_url: str) -> Iterator[Recorder]:
    """The process's recorder on a fresh store, stopped afterwards."""
    started = start_recorder(store_url, heartbeat_interval=0.1)
    assert started.prepare()  # the tables exist before a test reads them
    try:
        yield started
    finally:
        stop_recorder()


def pipeline(queue: LocalQueue, pages: int, details: int) -> str:
    """A four-level run on ``queue``: sync → pages → details → a showtime per detail."""

    def showtime(n: int) -> None:
        jobtrace.count(processed=1)

    def detail(n: int) -> None:
        queue.enqueue(showtime, n)

    def page(n: int) -> None:
        for d in range(details):
            queue.enqueue(detail, d)

    def sync() -> None:
        for p in range(pages):
            queue.enqueue(page, p)

    return queue.enqueue(sync)


def test_lineage_is_complete_with_the_sampler_off(recorder: Recorder) -> None:
    """Sampling always-off: no span is exported, yet every job of every stage is in the store."""
    with capture_telemetry(sampler=ALWAYS_OFF) as telemetry, LocalQueue(4) as queue:
        root = pipeline(queue, pages=5, details=3)
        assert queue.join(30)
    assert recorder.flush(10)
    assert telemetry.spans() == []
    with LineageStore(recorder.url) as store:
        stages = store.stage_stats(root).by_stage()
    assert stages == {
        (0, "sync"): {"succeeded": 1},
        (1, "page"): {"succeeded": 5},
        (2, "detail"): {"succeeded": 15},
        (3, "showtime"): {"succeeded": 15},
    }
    assert recorder.dropped == 0


@pytest.mark.parametrize(("locked_times", "ready"), [(2, True), (99, False)])
def test_a_store_locked_for_a_moment_is_retried_before_a_warning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    locked_times: int,
    ready: bool,
) -> None:
    """SQLite's immediate "database is locked" (another process closing) costs a retry only."""
    caplog.set_level(logging.WARNING, logger="jobtrace")
    calls = []
    real = recorder_module.ensure_schema

    def locked_at_first(engine: Any) -> None:
        calls.append(1)
        if len(calls) <= locked_times:
            raise OperationalError(
                "BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked")
            )
        real(engine)

    monkeypatch.setattr(recorder_module, "ensure_schema", locked_at_first)
    recorder = Recorder(f"sqlite:///{tmp_path / 'lineage.db'}")
    try:
        assert recorder.prepare() is ready
    finally:
        recorder.close()
    assert len(calls) == (locked_times + 1 if ready else 5)
    warned = [r for r in caplog.records if "not reachable" in r.getMessage()]
    assert len(warned) == (0 if ready else 1)


def test_an_unreachable_store_costs_warnings_not_jobs(caplog: pytest.LogCaptureFixture) -> None:
    """With the store down every job still succeeds; the loss is logged and counted."""
    caplog.set_level(logging.WARNING, logger="jobtrace")
    started = start_recorder(UNREACHABLE_URL)
    try:
        with capture_telemetry() as telemetry, LocalQueue(2) as queue:
            pipeline(queue, pages=3, details=2)
            assert queue.join(30)
        started.flush(30)
        outcomes = {span.attributes["jobtrace.job.outcome"] for span in telemetry.process_spans()}  # type: ignore[index]
        assert outcomes == {"succeeded"}
        assert len(telemetry.process_spans()) == 1 + 3 + 6 + 6
        assert started.dropped > 0
        assert any("lineage" in r.getMessage() for r in caplog.records)
    finally:
        stop_recorder()


def test_a_full_buffer_drops_and_counts_instead_of_waiting(sqlite_url: str) -> None:
    """Past ``max_buffered`` records are dropped at once (never blocking the job) and counted."""
    recorder = Recorder(sqlite_url, write_interval=60, max_buffered=3)
    try:
        for n in range(10):
            recorder(JobRecord("enqueued", f"job-{n}", 1, "PageJob", JobState.QUEUED))
        recorder._wake.set()  # the first record started the writer, which may be busy already
        assert recorder.flush(10)
        assert recorder.dropped + recorder.written == 10
        assert recorder.dropped >= 6
    finally:
        recorder.close()


INSTRUMENTED = textwrap.dedent(
    """
    import json, sys
    import sqlalchemy
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import jobtrace
    from jobtrace.lineage.recorder import get_recorder

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    jobtrace.configure(instrument_sqlalchemy=True, database_url=sys.argv[1])
    get_recorder().heartbeat_interval = 0.05
    engine = sqlalchemy.create_engine("sqlite://")
    with jobtrace.trace_job(None, name="ReportJob", job_id="report-1"):
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 42"))
        get_recorder().flush(10)
        get_recorder()._heartbeat()
    get_recorder().flush(10)
    spans = exporter.get_finished_spans()
    job = next(s for s in spans if s.name == "process ReportJob")
    print(json.dumps({
        "queries": sorted(s.name for s in spans if s.kind == trace.SpanKind.CLIENT),
        "statements": [s.attributes.get("db.statement", "") for s in spans],
        "parents": sorted({s.parent.span_id for s in spans if s.kind == trace.SpanKind.CLIENT}),
        "job": job.context.span_id,
    }))
    """
)


def test_the_recorders_sql_makes_no_spans_but_the_jobs_own_queries_do(store_url: str) -> None:
    """With SQLAlchemy instrumentation on, only the job's own queries show, under the job."""
    done = subprocess.run(
        [sys.executable, "-c", INSTRUMENTED, store_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [name for name in report["queries"] if name != "connect"] == ["SELECT"], report
    assert not any("jobtrace_" in statement for statement in report["statements"])
    assert report["parents"] == [report["job"]]
    with LineageStore(store_url) as store:
        assert store.job("report-1").state == "succeeded"


def test_running_jobs_heartbeat_without_user_code(recorder: Recorder) -> None:
    """A job that only sleeps still gets fresh heartbeats in the store while it runs."""
    release = threading.Event()
    with capture_telemetry(), LocalQueue(1) as queue:
        job_id = queue.enqueue(release.wait, 30, name="SleepyJob")
        deadline = time.monotonic() + 20
        seen: list[object] = []
        with LineageStore(recorder.url) as store:
            while time.monotonic() < deadline and len(set(seen) - {None}) < 3:
                with contextlib.suppress(LookupError):
                    seen.append(store.job(job_id).heartbeat_at)
                time.sleep(0.1)
        release.set()
        assert queue.join(10)
    assert len({beat for beat in seen if beat is not None}) >= 3


def test_start_recorder_is_once_per_store(sqlite_url: str, tmp_path: Path) -> None:
    """The same store gives the same recorder; another store replaces it."""
    try:
        first = start_recorder(sqlite_url)
        assert start_recorder(sqlite_url) is first
        assert get_recorder() is first
        other = start_recorder(f"sqlite:///{tmp_path / 'other.db'}")
        assert other is not first
        assert get_recorder() is other
    finally:
        stop_recorder()
    assert get_recorder() is None


def test_a_later_start_without_an_interval_keeps_the_chosen_one(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An integration starting recording after the app chose a heartbeat interval keeps it."""
    monkeypatch.delenv("JOBTRACE_HEARTBEAT_INTERVAL", raising=False)
    try:
        chosen = start_recorder(sqlite_url, heartbeat_interval=0.2)
        assert start_recorder(sqlite_url).heartbeat_interval == 0.2
        assert start_recorder(sqlite_url, heartbeat_interval=3).heartbeat_interval == 3
        assert get_recorder() is chosen
    finally:
        stop_recorder()


WRITER = textwrap.dedent(
    """
    import sys
    import jobtrace
    from jobtrace.lineage.recorder import start_recorder
    from jobtrace.local import LocalQueue

    url, tag, children = sys.argv[1], sys.argv[2], int(sys.argv[3])
    start_recorder(url)
    with LocalQueue(4) as queue:
        def child(n):
            jobtrace.count(processed=1)
        def parent():
            for n in range(children):
                queue.enqueue(child, n)
        queue.enqueue(parent, name="parent-" + tag)
        queue.join(60)
    """
)


def test_four_processes_recording_at_once_lose_and_duplicate_nothing(store_url: str) -> None:
    """Four worker processes write into one store concurrently: every job exactly once."""
    children = 300
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, store_url, str(n), str(children)],
            stderr=subprocess.PIPE,
            # About concurrency, not the exit budget: on two busy cores the last batches of
            # four writers can take longer than the default 3 s to land.
            env={**os.environ, "JOBTRACE_EXIT_TIMEOUT": "60"},
        )
        for n in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, errors
    assert not any("jobtrace" in e for e in errors), errors
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            jobs = conn.execute(select(Job.state, func.count()).group_by(Job.state)).all()
            attempts = conn.execute(select(func.count()).select_from(Attempt)).scalar()
            roots = conn.execute(select(func.count()).where(Job.depth == 0)).scalar()
    finally:
        engine.dispose()
    assert dict(jobs) == {"succeeded": 4 * (children + 1)}
    assert attempts == 4 * (children + 1)
    assert roots == 4


KILLED = textwrap.dedent(
    """
    import sys, time
    import jobtrace
    from jobtrace.lineage.recorder import start_recorder
    from jobtrace.local import LocalQueue

    url, marker = sys.argv[1], sys.argv[2]
    start_recorder(url, heartbeat_interval=0.1)
    queue = LocalQueue(3)
    def quick(n):
        return n
    def hang():
        open(marker, "w").close()
        time.sleep(120)
    def upload():
        queue.enqueue(quick, 1, name="batch")
        queue.enqueue(quick, 2, name="batch")
        queue.enqueue(hang, name="batch")
    print(queue.enqueue(upload, name="upload"), flush=True)
    time.sleep(120)
    """
)


def test_a_worker_killed_mid_job_is_reaped_as_crashed(sqlite_url: str, tmp_path: Path) -> None:
    """SIGKILL mid-job: the reaper declares it crashed; siblings finished; the parent counts it done."""
    marker = tmp_path / "hanging"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED, sqlite_url, str(marker)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        root = process.stdout.readline().strip()
        with LineageStore(sqlite_url) as store:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    progress = store.progress(root)
                except JobNotFoundError:
                    progress = None
                if progress is not None and (progress.succeeded, progress.running) == (2, 1):
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the pipeline never reached two finished and one running batch")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(10)
    assert reap(sqlite_url, heartbeat_timeout=5).crashed == ()  # heartbeats were fresh
    deadline = time.monotonic() + 20
    crashed: tuple[str, ...] = ()
    while not crashed and time.monotonic() < deadline:
        time.sleep(0.3)
        crashed = reap(sqlite_url, heartbeat_timeout=1).crashed
    with LineageStore(sqlite_url) as store:
        progress = store.progress(root)
    assert len(crashed) == 1
    assert (progress.total, progress.done, progress.succeeded, progress.crashed) == (3, 3, 2, 1)
    assert progress.complete
    assert [job.job_id for job in progress.problems] == list(crashed)


def test_a_record_the_store_refuses_costs_only_itself(sqlite_url: str) -> None:
    """One unwritable record (a time out of range) is dropped; the rest of its batch is stored."""
    recorder = Recorder(sqlite_url, write_interval=60)
    try:
        recorder.prepare()
        for n, enqueued_at in enumerate([1.7e9, 1e300, 1.7e9]):
            recorder(
                JobRecord(
                    "enqueued", f"job-{n}", 1, "PageJob", JobState.QUEUED, enqueued_at=enqueued_at
                )
            )
        assert recorder.flush(10)
        assert (recorder.written, recorder.dropped) == (2, 1)
        with LineageStore(sqlite_url) as store:
            assert [store.job(f"job-{n}").state for n in (0, 2)] == ["queued", "queued"]
    finally:
        recorder.close()


def test_jobs_running_at_once_in_one_process_all_heartbeat(
    recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Four jobs on four threads of one process all get fresh heartbeats; none is reaped."""
    release = threading.Event()
    with capture_telemetry(), LocalQueue(4) as queue:
        ids = [queue.enqueue(release.wait, 30, name="SleepyJob") for _ in range(4)]
        deadline = time.monotonic() + 20
        beats: dict[str, set[object]] = {job_id: set() for job_id in ids}
        with LineageStore(recorder.url) as store:
            while time.monotonic() < deadline and min(len(b) for b in beats.values()) < 3:
                for job_id in ids:
                    with contextlib.suppress(LookupError):
                        beat = store.job(job_id).heartbeat_at
                        if beat is not None:
                            beats[job_id].add(beat)
                time.sleep(0.1)
        time.sleep(0.3)
        crashed = reap(recorder.url, heartbeat_timeout=0.5).crashed
        release.set()
        assert queue.join(10)
    assert crashed == ()
    assert all(len(b) >= 3 for b in beats.values()), beats
    assert "heartbeat" not in caplog.text


def test_a_child_reporting_progress_stays_in_its_parents_run(recorder: Recorder) -> None:
    """progress() while children run: they are counted under their root, not as runs of their own."""
    release = threading.Event()
    reported = threading.Barrier(4)

    def batch(n: int) -> None:
        jobtrace.progress(n, 10)
        reported.wait(10)
        release.wait(10)

    def upload() -> None:
        for n in range(3):
            queue.enqueue(batch, n, name="BatchJob")

    with capture_telemetry(), LocalQueue(4) as queue:
        root = queue.enqueue(upload, name="UploadJob")
        reported.wait(10)
        assert recorder.flush(10)
        with LineageStore(recorder.url) as store:
            runs = [run.root.job_id for run in store.runs()]
            counts = store.stage_stats(root).by_stage()
        release.set()
        assert queue.join(10)
    assert runs == [root]
    assert counts[(1, "BatchJob")] == {"running": 3}


def test_records_dropped_in_an_outage_are_redelivered_and_marked_lost(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that refuses for a while: each job's latest record arrives after, marked lost."""
    from sqlalchemy.engine import make_url

    from jobtrace.lineage.models import Gap
    from tests.faults import tcp_proxy

    def rec(job_id: str, kind: str, state: JobState) -> JobRecord:
        info = records_module.JobInfo(job_id=job_id, name="BatchJob", root_job_id="up", depth=1)
        if kind == "started":
            return records_module.started(info, at=time.time(), host="w1", pid=7)
        return records_module.finished(info, state, at=time.time(), host="w1", pid=7)

    real = make_url(postgres_url)
    with tcp_proxy(real.port or 5432) as proxy:
        url = real.set(port=proxy.port).render_as_string(hide_password=False)
        url += "?connect_timeout=2"
        recorder = Recorder(url, write_interval=0.05)
        try:
            assert recorder.prepare()
            recorder(rec("a", "started", JobState.RUNNING))
            recorder(rec("b", "started", JobState.RUNNING))
            assert recorder.flush(10)
            proxy.refuse()
            recorder(rec("a", "finished", JobState.SUCCEEDED))  # lost with the store
            recorder(rec("c", "started", JobState.RUNNING))
            recorder.flush(10)
            assert recorder.dropped == 2
            proxy.heal()
            recorder(rec("d", "started", JobState.RUNNING))
            assert recorder.flush(10)
        finally:
            recorder.close()
    with LineageStore(postgres_url) as store:
        rows = {job_id: store.job(job_id) for job_id in "abcd"}
        with store.engine.connect() as conn:
            gaps = conn.execute(select(Gap.records_dropped, Gap.jobs_redelivered)).all()
    assert {k: row.state for k, row in rows.items()} == {
        "a": "succeeded",
        "b": "running",
        "c": "running",
        "d": "running",
    }
    assert [k for k, row in rows.items() if row.lost_at is not None] == ["a", "c"]
    assert [tuple(gap) for gap in gaps] == [(2, 2)]
    assert "answers again" in caplog.text


def test_each_kind_of_problem_has_its_own_warning_limit(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of one problem (a full buffer) does not hide another (a refused record)."""
    recorder = Recorder(sqlite_url, max_buffered=0)
    try:
        info = records_module.JobInfo(job_id="j", name="Job", root_job_id="j", depth=0)
        for _ in range(3):
            recorder(records_module.started(info, at=time.time()))
        recorder._warn("refused", "the lineage store refused a record of Job")
    finally:
        recorder.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "jobtrace"]
    assert sum("buffer is full" in m for m in messages) == 1
    assert sum("refused a record" in m for m in messages) == 1
    assert recorder.dropped == 3
    summary = recorder.summary()
    assert summary is not None
    assert "3 lineage records were dropped" in summary


def test_a_process_that_lost_records_says_so_once_at_exit(tmp_path: Path) -> None:
    """Exit with the store down: one line says how many records were lost, and exit is prompt."""
    code = textwrap.dedent(
        f"""
        import jobtrace
        from jobtrace.lineage.recorder import start_recorder
        start_recorder({UNREACHABLE_URL!r})
        for n in range(5):
            with jobtrace.trace_job(None, name="Job"):
                pass
        """
    )
    env = {**os.environ, "JOBTRACE_FLUSH_TIMEOUT": "3"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "were dropped" in line]
    assert len(lines) == 1, done.stderr
    assert "10 lineage records were dropped" in lines[0]
    assert "postgres@127.0.0.1:1" in lines[0]


def test_dropped_records_are_a_metric(sqlite_url: str) -> None:
    """jobtrace.lineage.records.dropped is exported, so an outage can be alerted on."""
    with capture_telemetry() as telemetry:
        recorder = start_recorder(sqlite_url)
        try:
            recorder.dropped += 7
            points = telemetry.metric_points(recorder_module.DROPPED_METRIC)
        finally:
            stop_recorder()
    assert [point.value for point in points] == [7]  # type: ignore[union-attr]
