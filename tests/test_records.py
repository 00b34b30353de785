"""Job lifecycle records: what the lineage side is told, whatever the tracing side samples."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import jobtrace
from jobtrace import records
from jobtrace.records import JobRecord, JobState
from jobtrace.testing import CapturedTelemetry, capture_telemetry


@pytest.fixture
def telemetry() -> Iterator[CapturedTelemetry]:
    """Spans, metrics and records of this test, with the previous globals back afterwards."""
    with capture_telemetry() as captured:
        yield captured


def _pipeline() -> tuple[str, str]:
    with jobtrace.trace_job(None, name="Parent", job_id="p-1", queue="q"):
        meta = jobtrace.prepare_enqueue("Child", queue="q", job_id="c-1", args={"n": 1})
        jobtrace.count(processed=2)
    with (
        pytest.raises(ValueError, match="bad input"),
        jobtrace.trace_job(meta, name="Child", queue="q"),
    ):
        raise ValueError("bad input")
    return "p-1", "c-1"


def _of(captured: list[JobRecord], job_id: str) -> list[JobRecord]:
    return [record for record in captured if record.job_id == job_id]


def test_records_follow_a_job_through_its_life(telemetry: CapturedTelemetry) -> None:
    """enqueued → started → finished records carry lineage, state and the span's trace ids."""
    parent_id, child_id = _pipeline()
    child = _of(telemetry.records, child_id)
    assert [(r.kind, r.state) for r in child] == [
        ("enqueued", JobState.QUEUED),
        ("started", JobState.RUNNING),
        ("finished", JobState.FAILED),
    ]
    (span,) = telemetry.process_spans("Child")
    trace_id = f"{span.context.trace_id:032x}"
    for record in child:
        assert (record.parent_job_id, record.root_job_id, record.depth) == (parent_id, parent_id, 1)
        assert record.trace_id == trace_id
        assert record.queue == "q"
    enqueued, started, finished = child
    assert enqueued.args == '{"n":1}'
    assert started.span_id == finished.span_id == f"{span.context.span_id:016x}"
    assert started.enqueued_at == pytest.approx(enqueued.enqueued_at)
    assert finished.error_type == "ValueError"
    assert finished.error_message == "bad input"
    assert finished.finished_at is not None
    assert started.started_at is not None
    assert finished.finished_at >= started.started_at
    parent_finished = _of(telemetry.records, parent_id)[-1]
    assert parent_finished.state is JobState.SUCCEEDED
    assert parent_finished.items == {"processed": 2}
    assert parent_finished.depth == 0
    assert parent_finished.root_job_id == parent_id


def test_records_are_emitted_when_nothing_is_sampled() -> None:
    """With the ALWAYS_OFF sampler no span is exported, yet every record is emitted with ids."""
    with capture_telemetry(sampler=ALWAYS_OFF) as telemetry:
        _, child_id = _pipeline()
    assert telemetry.spans() == []
    child = _of(telemetry.records, child_id)
    assert [r.kind for r in child] == ["enqueued", "started", "finished"]
    assert len({r.trace_id for r in child}) == 1
    assert child[0].trace_id is not None
    assert int(child[0].trace_id, 16) != 0
    assert child[-1].state is JobState.FAILED


def test_sink_registry() -> None:
    """Sinks are added once, removed quietly, and ``has_sinks`` tells whether anyone listens."""
    seen: list[JobRecord] = []
    records.add_sink(seen.append)
    records.add_sink(seen.append)
    try:
        assert records.has_sinks()
        records.emit(
            JobRecord(kind="heartbeat", job_id="j", attempt=1, name="J", state=JobState.RUNNING)
        )
    finally:
        records.remove_sink(seen.append)
    records.remove_sink(seen.append)
    assert len(seen) == 1
    assert not records.has_sinks()


def test_a_raising_sink_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """A sink that raises costs a warning; the sinks after it still get the record."""
    seen: list[JobRecord] = []

    def broken(record: JobRecord) -> None:
        raise RuntimeError("queue full")

    records.add_sink(broken)
    records.add_sink(seen.append)
    try:
        with jobtrace.trace_job(None, name="Job"):
            pass
    finally:
        records.remove_sink(broken)
        records.remove_sink(seen.append)
    assert [r.kind for r in seen] == ["started", "finished"]
    assert len([r for r in caplog.records if "record sink" in r.getMessage()]) == 2


def test_flush_reaches_buffering_sinks(caplog: pytest.LogCaptureFixture) -> None:
    """``records.flush`` calls each sink's ``flush(timeout)``; one that raises is logged."""
    calls: list[float] = []

    class Buffering:
        def __call__(self, record: JobRecord) -> None:
            return None

        def flush(self, timeout: float) -> None:
            calls.append(timeout)

    class Broken(Buffering):
        def flush(self, timeout: float) -> None:
            raise OSError("disk full")

    sinks: list[Any] = [Broken(), Buffering(), lambda record: None]
    for sink in sinks:
        records.add_sink(sink)
    try:
        records.flush(2.5)
    finally:
        for sink in sinks:
            records.remove_sink(sink)
    assert calls == [2.5]
    assert any("flushing record sink" in r.getMessage() for r in caplog.records)


def test_done_states() -> None:
    """Terminal states are done (crashed included); running, retrying and stalled are not."""
    assert {s for s in JobState if s.is_done} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.DISCARDED,
        JobState.CANCELLED,
        JobState.SKIPPED,
        JobState.CRASHED,
    }
    assert str(JobState.RETRYING) == "retrying"


def test_records_pickle_for_a_sink_in_another_process() -> None:
    """A sink may hand records to another process: every record survives pickling, unchanged."""
    with capture_telemetry() as telemetry:
        metadata = jobtrace.prepare_enqueue("Fetch", queue="io")
        with jobtrace.trace_job(metadata, name="Fetch", queue="io"):
            jobtrace.count(total=2, processed=1)
    assert [r.kind for r in telemetry.records] == ["enqueued", "started", "finished"]
    for record in telemetry.records:
        assert pickle.loads(pickle.dumps(record)) == record
    assert telemetry.records[-1].items == {"total": 2, "processed": 1}


def test_builders_fill_every_field_as_the_keyword_form_would() -> None:
    """enqueued, started and finished (built positionally, for speed) put each value in its field."""
    info = records.JobInfo(
        job_id="j",
        name="J",
        root_job_id="r",
        depth=2,
        queue="q",
        attempt=3,
        parent_job_id="p",
        system="s",
        trace_id="t" * 32,
        span_id="s" * 16,
    )
    identity: dict[str, Any] = {
        "job_id": "j",
        "attempt": 3,
        "name": "J",
        "queue": "q",
        "system": "s",
        "parent_job_id": "p",
        "root_job_id": "r",
        "depth": 2,
        "trace_id": "t" * 32,
        "span_id": "s" * 16,
    }
    assert records.enqueued(info, at=1.0, args="{}", due_at=2.0) == JobRecord(
        kind="enqueued", state=JobState.QUEUED, args="{}", enqueued_at=1.0, due_at=2.0, **identity
    )
    assert records.started(info, at=3.0, args="[]", enqueued_at=1.0, host="h", pid=7) == JobRecord(
        kind="started",
        state=JobState.RUNNING,
        args="[]",
        host="h",
        pid=7,
        enqueued_at=1.0,
        started_at=3.0,
        heartbeat_at=3.0,
        **identity,
    )
    finished = records.finished(
        info,
        JobState.FAILED,
        at=4.0,
        items={"processed": 1},
        progress=0.5,
        error_type="E",
        error_message="m",
        reason="why",
        host="h",
        pid=7,
    )
    assert finished == JobRecord(
        kind="finished",
        state=JobState.FAILED,
        items={"processed": 1},
        progress=0.5,
        error_type="E",
        error_message="m",
        reason="why",
        host="h",
        pid=7,
        finished_at=4.0,
        heartbeat_at=4.0,
        **identity,
    )
    assert records.finished(info, JobState.SUCCEEDED, at=4.0).heartbeat_at is None


def test_the_job_paths_builders_make_what_the_keyword_forms_make() -> None:
    """``job_info`` and ``enqueued_from`` are shortcuts, not other objects."""
    fields = dict(
        job_id="a" * 32,
        name="PageJob",
        root_job_id="b" * 32,
        depth=1,
        queue="pages",
        attempt=1,
        parent_job_id="b" * 32,
        system="celery",
        trace_id="c" * 32,
        span_id=None,
    )
    info = records.JobInfo(**fields)  # type: ignore[arg-type]
    made = records.job_info(*fields.values())  # type: ignore[arg-type]
    assert made == info
    assert hash(made) == hash(info)
    assert type(made) is records.JobInfo
    sent = records.enqueued_from(
        info.job_id,
        info.name,
        info.root_job_id,
        info.depth,
        info.queue,
        info.parent_job_id,
        info.system,
        info.trace_id,
        at=5.0,
        args='{"page": 3}',
        due_at=9.0,
    )
    assert sent == records.enqueued(info, at=5.0, args='{"page": 3}', due_at=9.0)
