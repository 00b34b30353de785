"""The job side: the process span of a run, its outcome, retries, and what it leaves behind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, StatusCode

import jobtrace
from jobtrace.records import JobState
from jobtrace.testing import CapturedTelemetry


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


class _OpenSpans(SpanProcessor):
    """Counts spans started and not yet ended."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.open.add(span.context.span_id)

    def on_end(self, span: ReadableSpan) -> None:
        assert span.context is not None
        self.open.discard(span.context.span_id)


# -- the span of one run --------------------------------------------------------------------------


def test_process_span_describes_the_run(telemetry: CapturedTelemetry) -> None:
    """A job run is one CONSUMER span with messaging and jobtrace attributes and a JobInfo."""
    meta = jobtrace.prepare_enqueue("Resize", queue="images", job_id="img-1")
    with jobtrace.trace_job(meta, name="Resize", queue="images", system="local") as run:
        info = jobtrace.current_job()
    (span,) = telemetry.process_spans("Resize")
    attributes = _attrs(span)
    assert span.name == "process Resize"
    assert span.kind is SpanKind.CONSUMER
    assert attributes["messaging.system"] == "local"
    assert attributes["messaging.destination.name"] == "images"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["jobtrace.job.id"] == "img-1"
    assert attributes["jobtrace.job.attempt"] == 1
    assert attributes["jobtrace.job.outcome"] == "succeeded"
    assert attributes["jobtrace.job.queue_wait_s"] >= 0
    assert info is not None
    assert info.job_id == "img-1"
    assert info.span_id == f"{span.context.span_id:016x}"
    assert run.state is JobState.SUCCEEDED


def test_explicit_job_id_and_attempt_win_over_metadata(telemetry: CapturedTelemetry) -> None:
    """The queue's own job id and attempt number override what the metadata says."""
    meta = jobtrace.prepare_enqueue("Job", job_id="from-meta")
    with jobtrace.trace_job(meta, name="Job", job_id="from-queue", attempt=4):
        pass
    (span,) = telemetry.process_spans("Job")
    assert _attrs(span)["jobtrace.job.id"] == "from-queue"
    assert _attrs(span)["jobtrace.job.attempt"] == 4
    assert "jobtrace.job.queue_wait_s" not in _attrs(span)


def test_start_and_finish_split_across_hooks(telemetry: CapturedTelemetry) -> None:
    """``start()``/``finish()`` give the same span as ``with``; a second finish is a no-op."""
    run = jobtrace.JobRun(None, name="Hooked").start()
    assert jobtrace.current_job() is not None
    run.finish(state=JobState.CANCELLED, reason="worker shutdown")
    run.finish()
    assert jobtrace.current_job() is None
    (span,) = telemetry.process_spans("Hooked")
    assert _attrs(span)["jobtrace.job.outcome"] == "cancelled"
    assert _attrs(span)["jobtrace.job.outcome_reason"] == "worker shutdown"


# -- async and concurrency ------------------------------------------------------------------------


async def test_async_with_trace_job(telemetry: CapturedTelemetry) -> None:
    """``async with trace_job`` keeps the job current across awaits and ends the span."""
    async with jobtrace.trace_job(None, name="AsyncJob"):
        await asyncio.sleep(0)
        jobtrace.count(processed=1)
        assert jobtrace.current_job() is not None
    assert jobtrace.current_job() is None
    (span,) = telemetry.process_spans("AsyncJob")
    assert _attrs(span)["jobtrace.items.processed"] == 1


async def test_wrap_job_on_a_coroutine_function(telemetry: CapturedTelemetry) -> None:
    """``wrap_job`` keeps a coroutine function async, takes metadata first, records its args."""

    async def fetch(url: str, *, retries: int = 0) -> str:
        await asyncio.sleep(0)
        return url.upper()

    wrapped = jobtrace.wrap_job(fetch, name="Fetch", queue="io")
    meta = jobtrace.prepare_enqueue("Fetch")
    assert asyncio.iscoroutinefunction(wrapped)
    assert await wrapped(meta, "a", retries=2) == "A"
    (span,) = telemetry.process_spans("Fetch")
    assert _attrs(span)["jobtrace.job.args"] == '{"args":["a"],"kwargs":{"retries":2}}'
    (send,) = telemetry.send_spans("Fetch")
    assert span.parent is not None
    assert span.parent.span_id == send.context.span_id


def test_wrap_job_on_a_function_keeps_its_name(telemetry: CapturedTelemetry) -> None:
    """``wrap_job`` on a plain function names the job after it and keeps its metadata."""

    def add(a: int, b: int) -> int:
        return a + b

    wrapped = jobtrace.wrap_job(add)
    assert wrapped(None, 2, 3) == 5
    assert wrapped.__name__ == "add"
    (span,) = telemetry.process_spans()
    assert _attrs(span)["jobtrace.job.name"].endswith("add")
    assert _attrs(span)["jobtrace.job.args"] == "[2,3]"


def _children_of_one_parent(n: int) -> tuple[dict[str, str], list[dict[str, str]]]:
    with jobtrace.trace_job(None, name="Parent") as parent:
        metas = [jobtrace.prepare_enqueue("Worker", job_id=f"w-{i}") for i in range(n)]
    assert parent.info is not None
    return {"job_id": parent.info.job_id}, metas


def _check_isolated(telemetry: CapturedTelemetry, n: int) -> None:
    sends = {_attrs(s)["jobtrace.job.id"]: s for s in telemetry.send_spans("Worker")}
    processes = telemetry.process_spans("Worker")
    assert len(processes) == n
    for span in processes:
        attributes = _attrs(span)
        index = int(attributes["jobtrace.job.id"].split("-")[1])
        assert attributes["jobtrace.items.processed"] == index + 1
        assert attributes["worker.index"] == index
        assert [e.attributes["index"] for e in span.events if e.attributes] == [index]
        assert span.parent is not None
        assert span.parent.span_id == sends[attributes["jobtrace.job.id"]].context.span_id


def test_concurrent_jobs_on_threads_do_not_share_state(telemetry: CapturedTelemetry) -> None:
    """Jobs running at once on threads each get only their own fields and their own parent."""
    n = 8
    _, metas = _children_of_one_parent(n)
    barrier = threading.Barrier(n)

    def work(index: int) -> int:
        with jobtrace.trace_job(metas[index], name="Worker"):
            barrier.wait(timeout=10)  # every job is running now
            for _ in range(index + 1):
                jobtrace.count(processed=1)
                time.sleep(0)
            jobtrace.set_attribute("worker.index", index)
            jobtrace.add_event("mine", {"index": index})
            info = jobtrace.current_job()
            assert info is not None
            assert info.job_id == f"w-{index}"
        assert jobtrace.current_job() is None
        return index

    with ThreadPoolExecutor(max_workers=n) as pool:
        assert sorted(pool.map(work, range(n))) == list(range(n))
    _check_isolated(telemetry, n)


async def test_concurrent_jobs_on_tasks_do_not_share_state(telemetry: CapturedTelemetry) -> None:
    """Jobs interleaved as asyncio tasks each get only their own fields and their own parent."""
    n = 8
    _, metas = _children_of_one_parent(n)

    async def work(index: int) -> int:
        async with jobtrace.trace_job(metas[index], name="Worker"):
            for _ in range(index + 1):
                await asyncio.sleep(0)
                jobtrace.count(processed=1)
            await asyncio.sleep(0)
            jobtrace.set_attribute("worker.index", index)
            jobtrace.add_event("mine", {"index": index})
            info = jobtrace.current_job()
            assert info is not None
            assert info.job_id == f"w-{index}"
        return index

    assert await asyncio.gather(*(work(i) for i in range(n))) == list(range(n))
    assert jobtrace.current_job() is None
    _check_isolated(telemetry, n)


# -- exceptions -----------------------------------------------------------------------------------


def test_exception_marks_the_span_and_is_reraised_unchanged(telemetry: CapturedTelemetry) -> None:
    """A failing job's span has ERROR, error.type and an exception event; the same error escapes."""
    open_spans = _OpenSpans()
    telemetry.tracer_provider.add_span_processor(open_spans)
    outer = trace.get_current_span()
    error = KeyError("movie_not_ready")
    with pytest.raises(KeyError) as caught, jobtrace.trace_job(None, name="Broken") as run:
        raise error
    assert caught.value is error
    assert run.state is JobState.FAILED
    (span,) = telemetry.process_spans("Broken")
    assert span.status.status_code is StatusCode.ERROR
    assert _attrs(span)["error.type"] == "KeyError"
    assert _attrs(span)["jobtrace.job.will_retry"] is False
    (exception,) = [e for e in span.events if e.name == "exception"]
    assert (exception.attributes or {})["exception.type"] == "KeyError"
    assert "jobtrace.failed" in [e.name for e in span.events]
    assert not open_spans.open
    assert trace.get_current_span() is outer
    assert jobtrace.current_job() is None


async def test_async_exception_leaves_nothing_attached(telemetry: CapturedTelemetry) -> None:
    """An async job that raises ends its span and detaches its context before the error escapes."""
    open_spans = _OpenSpans()
    telemetry.tracer_provider.add_span_processor(open_spans)
    outer = trace.get_current_span()

    @jobtrace.wrap_job
    async def explode() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await explode(None)
    (span,) = telemetry.process_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert not open_spans.open
    assert trace.get_current_span() is outer
    assert jobtrace.current_job() is None


def test_job_inside_an_outer_span_restores_it(telemetry: CapturedTelemetry) -> None:
    """After a job raises inside a worker's own span, that span is current again."""
    tracer = telemetry.tracer_provider.get_tracer("worker")
    with tracer.start_as_current_span("worker loop") as outer:
        with pytest.raises(ValueError, match="x"), jobtrace.trace_job(None, name="Inner"):
            raise ValueError("x")
        assert trace.get_current_span() is outer
    (inner,) = telemetry.process_spans("Inner")
    assert inner.parent is not None
    assert inner.parent.span_id == outer.get_span_context().span_id


def test_cancelled_error_is_a_cancellation(telemetry: CapturedTelemetry) -> None:
    """``asyncio.CancelledError`` makes the outcome ``cancelled``, without ERROR status."""
    with pytest.raises(asyncio.CancelledError), jobtrace.trace_job(None, name="Stopped"):
        raise asyncio.CancelledError
    (span,) = telemetry.process_spans("Stopped")
    assert _attrs(span)["jobtrace.job.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.UNSET


# -- exporters and sinks that misbehave -----------------------------------------------------------


class _RaisingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionError("collector unreachable")


class _HangingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(60)
        return SpanExportResult.SUCCESS


def test_raising_exporter_does_not_affect_the_job(telemetry: CapturedTelemetry) -> None:
    """An exporter that raises on every export leaves the job's result and span intact."""
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(_RaisingExporter()))

    @jobtrace.wrap_job
    def job() -> str:
        return "done"

    assert job(None) == "done"
    (span,) = telemetry.process_spans()
    assert _attrs(span)["jobtrace.job.outcome"] == "succeeded"


def test_hanging_exporter_does_not_block_the_job(telemetry: CapturedTelemetry) -> None:
    """With a BatchSpanProcessor whose exporter hangs, jobs still return promptly."""
    exporter = _HangingExporter()
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=1)
    telemetry.tracer_provider.add_span_processor(processor)
    try:
        started = time.monotonic()
        for n in range(3):
            with jobtrace.trace_job(None, name="Quick"):
                result = n * 2
        assert result == 4
        assert time.monotonic() - started < 30  # the exporter hangs for 60 s
        assert len(telemetry.process_spans("Quick")) == 3
    finally:
        exporter.release.set()
        processor.shutdown()  # type: ignore[no-untyped-call]


def test_raising_record_sink_costs_a_warning(
    telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A record sink that raises is logged and skipped; the job and other sinks carry on."""

    def broken_sink(record: object) -> None:
        raise RuntimeError("database is gone")

    from jobtrace import records

    records.add_sink(broken_sink)
    try:
        with jobtrace.trace_job(None, name="Recorded"):
            value = 42
    finally:
        records.remove_sink(broken_sink)
    assert value == 42
    assert [r.kind for r in telemetry.records] == ["started", "finished"]
    assert any("record sink" in r.getMessage() for r in caplog.records if r.name == "jobtrace")


# -- retries --------------------------------------------------------------------------------------


def _run_attempts(
    outcomes: Sequence[BaseException | None], will_retry: Any = True
) -> list[jobtrace.JobRun]:
    """Run one job's attempts as a queue would, merging retry keys into its metadata."""
    metadata: dict[str, str] = jobtrace.prepare_enqueue("Flaky", job_id="f-1")
    runs = []
    for index, error in enumerate(outcomes):
        last = index == len(outcomes) - 1
        run = jobtrace.trace_job(
            dict(metadata), name="Flaky", will_retry=will_retry if not last else False
        )
        if error is None:
            with run:
                pass
        else:
            with pytest.raises(type(error)) as caught, run:
                raise error
            assert caught.value is error
        runs.append(run)
        metadata.update(run.retry_metadata())
    return runs


def _by_attempt(telemetry: CapturedTelemetry) -> list[ReadableSpan]:
    spans = telemetry.process_spans("Flaky")
    return sorted(spans, key=lambda s: _attrs(s)["jobtrace.job.attempt"])


def test_attempts_link_to_the_previous_attempt(telemetry: CapturedTelemetry) -> None:
    """Attempt n+1 links to attempt n with type previous_attempt; all stay under the send span."""
    _run_attempts([ConnectionError("1"), ConnectionError("2"), None])
    first, second, third = _by_attempt(telemetry)
    assert [_attrs(s)["jobtrace.job.attempt"] for s in (first, second, third)] == [1, 2, 3]
    assert not first.links
    for previous, following in ((first, second), (second, third)):
        (link,) = following.links
        assert link.context.span_id == previous.context.span_id
        assert (link.attributes or {})["jobtrace.link.type"] == "previous_attempt"
    (send,) = telemetry.send_spans("Flaky")
    assert {s.parent.span_id for s in (first, second, third) if s.parent} == {send.context.span_id}
    assert _attrs(third)["jobtrace.job.outcome"] == "succeeded"


def test_retried_failure_is_not_an_error_by_default(telemetry: CapturedTelemetry) -> None:
    """A failure that will be retried gets the retry event and will_retry, with status UNSET."""
    runs = _run_attempts([TimeoutError("slow"), TimeoutError("slow again")])
    retried, final = _by_attempt(telemetry)
    assert runs[0].state is JobState.RETRYING
    assert runs[1].state is JobState.FAILED
    assert retried.status.status_code is StatusCode.UNSET
    assert _attrs(retried)["jobtrace.job.will_retry"] is True
    assert _attrs(retried)["jobtrace.job.outcome"] == "retrying"
    assert "jobtrace.retry" in [e.name for e in retried.events]
    assert final.status.status_code is StatusCode.ERROR
    assert _attrs(final)["jobtrace.job.will_retry"] is False
    assert "jobtrace.retry" not in [e.name for e in final.events]


def test_error_on_retry_marks_retried_failures(telemetry: CapturedTelemetry) -> None:
    """With ``error_on_retry`` a retried failure has ERROR status too."""
    jobtrace.configure(error_on_retry=True, record=False)
    _run_attempts([TimeoutError("slow"), None])
    retried, _ = _by_attempt(telemetry)
    assert retried.status.status_code is StatusCode.ERROR
    assert _attrs(retried)["jobtrace.job.will_retry"] is True


def test_will_retry_can_decide_from_the_exception(
    telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A callable ``will_retry`` retries transient errors only; one that raises means no retry."""

    def transient(error: BaseException) -> bool:
        return isinstance(error, (ConnectionError, TimeoutError))

    def broken(error: BaseException) -> bool:
        raise RuntimeError("policy bug")

    states = []
    for decision, error in (
        (transient, ConnectionError()),
        (transient, ValueError()),
        (broken, ConnectionError()),
    ):
        run = jobtrace.trace_job(None, name="Decided", will_retry=decision)
        with pytest.raises(type(error)), run:
            raise error
        states.append(run.state)
    assert states == [JobState.RETRYING, JobState.FAILED, JobState.FAILED]
    assert any("will_retry" in r.getMessage() for r in caplog.records if r.name == "jobtrace")


def test_finish_can_force_the_retry_decision(telemetry: CapturedTelemetry) -> None:
    """``finish(error, will_retry=True)`` from a framework hook overrides the constructor's."""
    run = jobtrace.trace_job(None, name="Hooked", will_retry=False).start()
    run.finish(OSError("disk"), will_retry=True)
    assert run.state is JobState.RETRYING
    assert run.retry_metadata()["jobtrace-attempt"] == "2"


def test_retry_metadata_before_start_is_empty() -> None:
    """A run that never started has no retry keys to hand on."""
    assert jobtrace.trace_job(None, name="Never").retry_metadata() == {}


# -- outcomes chosen by the job -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mark", "state", "status"),
    [
        (jobtrace.skip, JobState.SKIPPED, StatusCode.UNSET),
        (jobtrace.cancel, JobState.CANCELLED, StatusCode.UNSET),
        (jobtrace.discard, JobState.DISCARDED, StatusCode.ERROR),
    ],
)
def test_job_chooses_its_outcome(
    mark: Any, state: JobState, status: StatusCode, telemetry: CapturedTelemetry
) -> None:
    """skip/cancel/discard from inside a job set the outcome, its reason and the status."""
    with jobtrace.trace_job(None, name="Choosy") as run:
        mark("movie_not_ready")
    assert run.state is state
    (span,) = telemetry.process_spans("Choosy")
    attributes = _attrs(span)
    assert attributes["jobtrace.job.outcome"] == state.value
    assert attributes["jobtrace.job.outcome_reason"] == "movie_not_ready"
    assert span.status.status_code is status
    (event,) = [e for e in span.events if e.name == "jobtrace.outcome"]
    assert (event.attributes or {})["reason"] == "movie_not_ready"
    if state is JobState.DISCARDED:
        assert attributes["error.type"] == "movie_not_ready"
        assert span.status.description is None  # the reason is error.type: not repeated
    else:
        assert "error.type" not in attributes
    assert telemetry.records[-1].state is state


def test_outcome_marks_outside_a_job_do_nothing() -> None:
    """skip/cancel/discard outside a job are silent no-ops."""
    jobtrace.skip("x")
    jobtrace.cancel()
    jobtrace.discard("y")
    assert jobtrace.current_job() is None


def test_failure_to_start_never_fails_the_job(
    telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If starting the span raises, the job still runs, with a warning and nothing attached."""
    from jobtrace._internal import consumer

    def broken_tracer() -> Any:
        raise RuntimeError("sdk bug")

    monkeypatch.setattr(consumer, "tracer", broken_tracer)
    outer = otel_context.get_current()
    with jobtrace.trace_job(None, name="Unlucky") as run:
        result = "ran"
    assert result == "ran"
    assert run.state is None
    assert otel_context.get_current() == outer
    assert any("starting the span" in r.getMessage() for r in caplog.records)


def test_the_run_s_job_info_is_a_plain_job_info(telemetry: CapturedTelemetry) -> None:
    """The run's JobInfo, made positionally, is the frozen JobInfo its fields make by keyword."""
    import dataclasses

    from jobtrace.records import JobInfo

    metadata = jobtrace.prepare_enqueue("Child", queue="q")
    with jobtrace.trace_job(metadata, name="Child", queue="q", attempt=2, system="sys") as run:
        info = jobtrace.current_job()
    span = telemetry.span("process Child")
    assert span.context is not None
    expected = JobInfo(
        job_id=metadata["jobtrace-job-id"],
        name="Child",
        root_job_id=metadata["jobtrace-job-id"],
        depth=0,
        queue="q",
        attempt=2,
        parent_job_id=None,
        system="sys",
        trace_id=f"{span.context.trace_id:032x}",
        span_id=f"{span.context.span_id:016x}",
    )
    assert info == expected
    assert run.info is info
    assert type(info) is JobInfo
    assert hash(info) == hash(expected)
    assert dataclasses.replace(info, attempt=3) == dataclasses.replace(expected, attempt=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.attempt = 5  # type: ignore[misc]
    assert next(r for r in telemetry.records if r.kind != "enqueued").span_id == expected.span_id
