"""The local queue: a real in-process executor that honours the metadata contract."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

import jobtrace
from jobtrace import records
from jobtrace.local import LocalQueue
from jobtrace.records import JobRecord, JobState
from jobtrace.testing import capture_telemetry


def _process_spans(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is SpanKind.CONSUMER and s.name == f"process {name}"]


def test_pipeline_runs_in_one_trace() -> None:
    """Jobs enqueued by jobs on the local queue form one trace with correct parents."""
    with capture_telemetry() as telemetry, LocalQueue({"default": 3}) as queue:

        def leaf(n: int) -> None:
            jobtrace.count(processed=n)

        def middle(n: int) -> None:
            for i in range(n):
                queue.enqueue(leaf, n=i)

        def root() -> None:
            for _ in range(3):
                queue.enqueue(middle, n=2)

        queue.enqueue(root)
        assert queue.join(timeout=10)
        spans = telemetry.spans()
    consumers = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert len(consumers) == 1 + 3 + 6
    assert len({s.context.trace_id for s in spans}) == 1
    by_id = {s.context.span_id: s for s in spans}
    for span in _process_spans(spans, "leaf"):
        send = by_id[span.parent.span_id]
        assert send.name == "send leaf"
        assert by_id[send.parent.span_id].name == "process middle"
        assert span.attributes["jobtrace.job.depth"] == 2


def test_retries_run_again_with_linked_attempts() -> None:
    """A failing job is retried up to max_attempts, each attempt linked to the one before."""
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("network")

    with capture_telemetry() as telemetry, LocalQueue(2) as queue:
        queue.enqueue(flaky, max_attempts=3)
        assert queue.join(timeout=10)
        spans = _process_spans(telemetry.spans(), "flaky")
    assert len(calls) == 3
    attempts = sorted(spans, key=lambda s: s.attributes["jobtrace.job.attempt"])
    assert [s.attributes["jobtrace.job.outcome"] for s in attempts] == [
        "retrying",
        "retrying",
        "succeeded",
    ]
    for previous, following in itertools.pairwise(attempts):
        assert [link.context.span_id for link in following.links] == [previous.context.span_id]
    assert queue.completed == 1


def test_final_failure_is_counted_and_marked() -> None:
    """After the last attempt the job fails with ERROR status and the queue counts it."""

    def broken() -> None:
        raise ValueError("no")

    with capture_telemetry() as telemetry, LocalQueue(1) as queue:
        queue.enqueue(broken, max_attempts=2, retry_on=(ValueError,))
        assert queue.join(timeout=10)
        spans = _process_spans(telemetry.spans(), "broken")
    assert queue.failed == 1
    assert [s.status.status_code for s in spans].count(StatusCode.ERROR) == 1


def test_queue_without_workers_keeps_jobs_queued() -> None:
    """Jobs on a queue nobody serves stay queued, and join() does not wait for them."""
    seen: list[JobRecord] = []
    records.add_sink(seen.append)
    try:
        with LocalQueue({"default": 1, "dead": 0}) as queue:
            job_id = queue.enqueue(lambda: None, name="never", queue="dead")
            assert queue.join(timeout=5)
    finally:
        records.remove_sink(seen.append)
    states = [r.state for r in seen if r.job_id == job_id]
    assert states == [JobState.QUEUED]


def test_delayed_jobs_run_when_due() -> None:
    """A delayed job runs after its delay and counts as scheduled until then."""
    ran = threading.Event()
    with LocalQueue(1) as queue:
        queue.enqueue(ran.set, delay=0.2)
        assert queue.scheduled == 1
        assert ran.wait(5)


def test_async_jobs_run() -> None:
    """Coroutine functions run on the worker thread in their own event loop, traced."""

    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        jobtrace.set_attribute("fetched", n)
        return n

    with capture_telemetry() as telemetry, LocalQueue(1) as queue:
        queue.enqueue(fetch, 7)
        assert queue.join(timeout=5)
        (span,) = _process_spans(telemetry.spans(), "fetch")
    assert span.attributes["fetched"] == 7
    assert span.status.status_code is StatusCode.UNSET


def test_shutdown_refuses_new_jobs() -> None:
    """A queue that is shut down refuses enqueues instead of losing them silently."""
    queue = LocalQueue(1)
    queue.shutdown()
    with pytest.raises(RuntimeError):
        queue.enqueue(print)
