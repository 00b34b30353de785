"""The arq instrumentor in one process: patching, workers with and without it, outcomes, entry point."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import arq.connections
import arq.worker
import pytest
from arq import Retry
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix
from arq.jobs import JobStatus
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from jobtrace import JobState
from jobtrace._internal.semconv import error_type
from jobtrace.integrations.arq import JOB_KEY, ArqInstrumentor, _decide_outcome, instrument_arq
from jobtrace.testing import CapturedTelemetry, capture_telemetry
from tests.integrations.arq.keys import REDIS_URL
from tests.integrations.harness import ROOT
from tests.services import require

Ctx = dict[str, Any]


async def quick(ctx: Ctx, number: int, *, factor: int = 2) -> int:
    return number * factor


async def sleepy(ctx: Ctx, seconds: float) -> None:
    await asyncio.sleep(seconds)


async def flaky(ctx: Ctx) -> None:
    raise Retry(defer=0.01)


FUNCTIONS = [
    func(quick, name="quick"),
    func(sleepy, name="sleepy"),
    func(sleepy, name="short_fuse", timeout=0.2),
    func(flaky, name="flaky"),
]


@pytest.fixture
def telemetry() -> Iterator[CapturedTelemetry]:
    """In-memory spans; arq uninstrumented afterwards, whatever the test did."""
    require("redis")
    with capture_telemetry() as captured:
        try:
            yield captured
        finally:
            ArqInstrumentor().uninstrument()


@pytest.fixture
async def pool() -> AsyncIterator[ArqRedis]:
    """An arq pool on Redis database 3 with a fresh default queue; the database emptied after."""
    require("redis")
    queue = f"jobtrace-test-{uuid.uuid4().hex[:12]}"
    redis_pool = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=queue)
    try:
        yield redis_pool
    finally:
        await redis_pool.flushdb()
        await redis_pool.aclose()


def make_worker(pool: ArqRedis, *, burst: bool = True, **options: Any) -> Worker:
    """An in-process worker on the pool's queue; burst: it stops when the queue is empty."""
    return Worker(
        functions=FUNCTIONS,
        queue_name=pool.default_queue_name,
        redis_settings=RedisSettings.from_dsn(REDIS_URL),
        burst=burst,
        handle_signals=False,
        poll_delay=0.01,
        keep_result=10,
        **options,
    )


async def run_burst(worker: Worker) -> None:
    """Run the worker until its queue is empty."""
    try:
        await worker.async_run()
    finally:
        await worker.close()


def _patched() -> tuple[object, ...]:
    return (
        ArqRedis.enqueue_job,
        arq.connections.serialize_job,
        arq.worker.deserialize_job_raw,
        Worker.__init__,
        Worker.handle_sig,
        Worker.handle_sig_wait_for_completion,
    )


def test_instrumenting_twice_and_uninstrumenting_restore_arq(
    telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A second instrument() changes nothing; uninstrument() puts arq's own functions back."""
    originals = _patched()
    instrumentor = instrument_arq(record=False)
    wrapped = _patched()
    assert all(w is not o for w, o in zip(wrapped, originals, strict=True))
    assert all(w.__wrapped__ is o for w, o in zip(wrapped, originals, strict=True))  # type: ignore[attr-defined]

    assert instrument_arq(record=False) is instrumentor
    instrumentor.instrument(record=False)
    assert _patched() == wrapped

    instrumentor.uninstrument()
    assert _patched() == originals
    instrumentor.uninstrument()  # a second time: a warning, nothing else
    assert _patched() == originals
    assert "already uninstrumented" in caplog.text


async def test_instrumented_worker_traces_and_uninstrumented_one_does_not(
    telemetry: CapturedTelemetry, pool: ArqRedis
) -> None:
    """Workers get their own wrapped copies of the functions; after uninstrument() they run untraced."""
    instrument_arq(record=False)
    worker = make_worker(pool)
    assert worker.functions["quick"] is not FUNCTIONS[0]
    assert FUNCTIONS[0].coroutine is quick  # the declared functions are left alone
    instrument_arq(worker=worker, record=False)  # instrumenting it again does not wrap twice
    assert worker.functions["quick"].coroutine.__wrapped__ is quick  # type: ignore[attr-defined]

    job = await pool.enqueue_job("quick", 4, factor=3)
    assert job is not None
    await run_burst(worker)
    assert await job.result(timeout=5) == 12
    (span,) = telemetry.process_spans("quick")
    (send,) = telemetry.send_spans("quick")
    assert span.parent is not None
    assert span.parent.span_id == send.context.span_id
    assert span.attributes is not None
    assert span.attributes["jobtrace.job.args"] == '{"args":[4],"kwargs":{"factor":3}}'

    ArqInstrumentor().uninstrument()
    telemetry.clear()
    later = make_worker(pool)
    job = await pool.enqueue_job("quick", 5)
    assert job is not None
    await run_burst(later)
    await run_burst(make_worker(pool))
    assert await job.result(timeout=5) == 10
    assert telemetry.spans() == []


async def test_worker_created_before_instrumenting(
    telemetry: CapturedTelemetry, pool: ArqRedis
) -> None:
    """``instrument_arq(worker=...)`` traces a worker that existed before."""
    worker = make_worker(pool)
    instrument_arq(worker=worker, record=False)
    job = await pool.enqueue_job("quick", 1)
    assert job is not None
    await run_burst(worker)
    assert [span.kind for span in telemetry.spans()] == [SpanKind.PRODUCER, SpanKind.CONSUMER]


async def test_worker_without_jobtrace_runs_instrumented_jobs(
    telemetry: CapturedTelemetry, pool: ArqRedis
) -> None:
    """The metadata sits beside arq's entries; a plain worker runs the job with its own arguments."""
    instrument_arq(record=False)
    job = await pool.enqueue_job("quick", 2, factor=5)
    assert job is not None
    stored = pickle.loads(await pool.get(job_key_prefix + job.job_id))
    (send,) = telemetry.send_spans("quick")
    assert stored["k"] == {"factor": 5}
    assert stored["a"] == (2,)
    assert stored[JOB_KEY]["jobtrace-job-id"] == job.job_id
    assert f"{send.context.trace_id:032x}" in stored[JOB_KEY]["traceparent"]

    ArqInstrumentor().uninstrument()
    info = await job.info()
    assert info is not None
    assert info.kwargs == {"factor": 5}
    await run_burst(make_worker(pool))
    assert await job.result(timeout=5) == 10


async def test_tracer_and_meter_providers_given_get_the_spans_and_metrics(
    telemetry: CapturedTelemetry, pool: ArqRedis
) -> None:
    """instrument(tracer_provider=, meter_provider=): send and job spans and metrics go there."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    instrument_arq(
        record=False,
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    job = await pool.enqueue_job("quick", 3)
    assert job is not None
    await run_burst(make_worker(pool))

    assert await job.result(timeout=5) == 6
    assert sorted(s.name for s in spans.get_finished_spans()) == ["process quick", "send quick"]
    assert telemetry.spans() == []
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert {"messaging.process.duration", "messaging.client.sent.messages"} <= names


def test_instrument_arq_without_arq_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without arq, instrument_arq() raises ModuleNotFoundError naming the extra."""
    monkeypatch.setitem(sys.modules, "arq", None)
    monkeypatch.delitem(sys.modules, "jobtrace.integrations.arq._instrumentor")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'jobtrace\[arq\]'"):
        instrument_arq()


async def test_duplicate_job_id_sends_nothing(telemetry: CapturedTelemetry, pool: ArqRedis) -> None:
    """arq refuses a second job with the same ``_job_id``: no send span, its metadata kept."""
    instrument_arq(record=False)
    first = await pool.enqueue_job("quick", 1, _job_id="unique-import")
    second = await pool.enqueue_job("quick", 2, _job_id="unique-import")
    assert first is not None
    assert second is None
    (send,) = telemetry.send_spans("quick")
    stored = pickle.loads(await pool.get(job_key_prefix + "unique-import"))
    assert stored[JOB_KEY]["jobtrace-job-id"] == "unique-import"
    assert f"{send.context.span_id:016x}" in stored[JOB_KEY]["traceparent"]


async def test_timeout_is_a_failure(telemetry: CapturedTelemetry, pool: ArqRedis) -> None:
    """A job past its timeout: ``failed`` with a ``TimeoutError``, not a cancellation."""
    instrument_arq(record=False)
    job = await pool.enqueue_job("short_fuse", 5)
    assert job is not None
    await run_burst(make_worker(pool))
    with pytest.raises(asyncio.TimeoutError):
        await job.result(timeout=5)
    (span,) = telemetry.process_spans("short_fuse")
    assert span.attributes is not None
    assert span.attributes["jobtrace.job.outcome"] == "failed"
    assert span.attributes["jobtrace.job.outcome_reason"] == "timeout"
    assert span.attributes["error.type"] == error_type(asyncio.TimeoutError())
    assert span.status.status_code is StatusCode.ERROR


async def test_aborted_job_is_cancelled(telemetry: CapturedTelemetry, pool: ArqRedis) -> None:
    """``Job.abort()`` on a running job: ``cancelled`` with the reason ``aborted``."""
    instrument_arq(record=False)
    worker = make_worker(pool, burst=False, allow_abort_jobs=True)
    running = asyncio.create_task(worker.async_run())
    try:
        job = await pool.enqueue_job("sleepy", 10)
        assert job is not None
        for _ in range(200):
            if await job.status() == JobStatus.in_progress:
                break
            await asyncio.sleep(0.02)
        assert await job.abort(timeout=5)
    finally:
        await worker.close()
        running.cancel()
    (span,) = telemetry.process_spans("sleepy")
    assert span.attributes is not None
    assert span.attributes["jobtrace.job.outcome"] == "cancelled"
    assert span.attributes["jobtrace.job.outcome_reason"] == "aborted"
    assert span.status.status_code is not StatusCode.ERROR


async def test_retry_jobs_false_makes_retry_a_failure(
    telemetry: CapturedTelemetry, pool: ArqRedis
) -> None:
    """With ``retry_jobs=False`` arq fails a job raising ``Retry``; so does its span."""
    instrument_arq(record=False)
    job = await pool.enqueue_job("flaky")
    assert job is not None
    await run_burst(make_worker(pool, retry_jobs=False))
    (span,) = telemetry.process_spans("flaky")
    assert span.attributes is not None
    assert span.attributes["jobtrace.job.outcome"] == "failed"
    assert span.attributes["jobtrace.job.will_retry"] is False


async def test_malformed_metadata_costs_a_warning(
    telemetry: CapturedTelemetry, pool: ArqRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage in the stored job's metadata: the jobs run as roots, with one warning each."""
    instrument_arq(record=False)
    now = timestamp_ms()
    garbage: dict[str, object] = {
        "bad-values": {"traceparent": "00-nothex-0-01", "jobtrace-depth": "deep"},
        "not-a-mapping": ["traceparent"],
    }
    for job_id, metadata in garbage.items():
        stored = {"t": None, "f": "quick", "a": (3,), "k": {}, "et": now, JOB_KEY: metadata}
        await pool.psetex(job_key_prefix + job_id, 60_000, pickle.dumps(stored))
        await pool.zadd(pool.default_queue_name, {job_id: now})
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        await run_burst(make_worker(pool))
    spans = telemetry.process_spans("quick")
    assert len(spans) == 2
    for span in spans:
        assert span.parent is None
        assert span.attributes is not None
        assert span.attributes["jobtrace.job.depth"] == 0
        assert span.attributes["jobtrace.job.outcome"] == "succeeded"
    assert caplog.text.count("ignoring malformed metadata") == 2


def _worker(
    stopping: bool = False,
    signalled: bool = False,
    aborting: tuple[str, ...] = (),
    retry_jobs: bool = True,
    job_task_cancelled: bool = False,
    main_task_cancelling: bool = False,
) -> Any:
    return SimpleNamespace(
        max_tries=3,
        retry_jobs=retry_jobs,
        aborting_tasks=set(aborting),
        allow_pick_jobs=not stopping,
        _jobtrace_shutdown_signalled=signalled,
        main_task=_task(cancelling=main_task_cancelling),
        tasks={"j": _task(cancelling=job_task_cancelled)},
        job_timeout_s=300.0,
    )


def _task(*, cancelling: bool) -> Any:
    """A stand-in for an asyncio task, as far as ``cancelling()`` and ``done()`` go."""
    return SimpleNamespace(cancelling=lambda: int(cancelling), done=lambda: False)


FUNCTION = SimpleNamespace(max_tries=None, timeout_s=None)
CANCELLED = asyncio.CancelledError()


@pytest.mark.parametrize(
    ("worker", "job_try", "error", "elapsed", "expected"),
    [
        (_worker(), 1, ValueError("x"), 1.0, (False, None, None)),
        (_worker(), 2, Retry(defer=1), 1.0, (True, None, None)),
        (_worker(), 3, Retry(defer=1), 1.0, (False, JobState.FAILED, "max_tries_reached")),
        (_worker(retry_jobs=False), 1, Retry(), 1.0, (False, None, None)),
        (_worker(aborting=("j",)), 1, CANCELLED, 1.0, (False, JobState.CANCELLED, "aborted")),
        (_worker(), 1, CANCELLED, 300.0, (False, JobState.FAILED, "timeout")),
        (_worker(stopping=True), 1, CANCELLED, 1.0, (True, JobState.RETRYING, "worker_shutdown")),
        (
            _worker(stopping=True),
            3,
            CANCELLED,
            1.0,
            (False, JobState.CANCELLED, "worker_shutdown"),
        ),
        (
            _worker(stopping=True, retry_jobs=False),
            1,
            CANCELLED,
            1.0,
            (False, JobState.CANCELLED, "worker_shutdown"),
        ),
        (_worker(), 1, CANCELLED, 1.0, (True, JobState.RETRYING, "cancelled")),
        # A worker created while instrumented: its wrapped signal handler says so (any Python).
        (_worker(signalled=True), 1, CANCELLED, 1.0, (True, JobState.RETRYING, "worker_shutdown")),
        # arq's signal handler cancels the job's run_job task, then the main task.
        (
            _worker(job_task_cancelled=True, main_task_cancelling=True),
            1,
            CANCELLED,
            1.0,
            (True, JobState.RETRYING, "worker_shutdown"),
        ),
        # From Python 3.12 a timeout (asyncio.wait_for) cancels the job's run_job task alone.
        (
            _worker(job_task_cancelled=True),
            1,
            CANCELLED,
            300.0,
            (False, JobState.FAILED, "timeout"),
        ),
        # A Redis call timing out in the main task cancels it alone, for a moment: no shutdown.
        (
            _worker(main_task_cancelling=True),
            1,
            CANCELLED,
            300.0,
            (False, JobState.FAILED, "timeout"),
        ),
    ],
)
def test_outcomes_follow_arq_rules(
    worker: Any, job_try: int, error: BaseException, elapsed: float, expected: tuple[Any, ...]
) -> None:
    """Each exception ends the attempt the way ``Worker.run_job`` will treat it."""
    outcome = _decide_outcome(worker, FUNCTION, "j", job_try, error, elapsed)
    assert (outcome.will_retry, outcome.state, outcome.reason) == expected
    if outcome.reason == "timeout":
        assert isinstance(outcome.error, asyncio.TimeoutError)


@pytest.mark.parametrize("disabled", [False, True])
def test_entry_point_is_activated_by_auto_instrumentation(disabled: bool, tmp_path: Path) -> None:
    """``opentelemetry-instrument`` loads ``jobtrace-arq``, unless it is disabled by name."""
    script = (
        "from arq.connections import ArqRedis\n"
        "from jobtrace.integrations.arq import ArqInstrumentor\n"
        "print(ArqInstrumentor().is_instrumented_by_opentelemetry,"
        " hasattr(ArqRedis.enqueue_job, '__wrapped__'))\n"
    )
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "JOBTRACE_RECORD": "0",
        "PYTHONPATH": str(ROOT),
    }
    if disabled:
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "jobtrace-arq"
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    result = subprocess.run(
        [str(instrument), sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    expected = "False False" if disabled else "True True"
    assert result.stdout.strip() == expected, result.stderr


async def test_send_and_run_name_the_redis_server(
    telemetry: CapturedTelemetry, pool: ArqRedis
) -> None:
    """The send (the producer's pool) and the run (the worker's pool) carry the Redis server as
    ``server.address``/``server.port``, on their spans and on the messaging metrics."""
    instrument_arq(record=False)
    job = await pool.enqueue_job("quick", 4)
    assert job is not None
    await run_burst(make_worker(pool))

    assert await job.result(timeout=5) == 8
    (send,) = telemetry.send_spans("quick")
    (run,) = telemetry.process_spans("quick")
    for span in (send, run):
        attributes = span.attributes or {}
        assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", 6379)
    for name in ("messaging.client.sent.messages", "messaging.process.duration"):
        (point,) = telemetry.metric_points(name)
        assert dict(point.attributes)["server.address"] == "127.0.0.1"
