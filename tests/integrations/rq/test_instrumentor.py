"""RQInstrumentor in one process: patching, the enqueue paths, resends, outcomes, the entry point."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rq import Queue, Retry, SimpleWorker
from rq.job import Job, JobStatus
from rq.worker import Worker

from jobtrace import JobState
from jobtrace.integrations import rq as rq_integration
from jobtrace.integrations.rq import RQInstrumentor, instrument_rq, job_state
from tests.integrations.harness import ROOT
from tests.integrations.rq import jobs
from tests.integrations.rq.conftest import RQSetup


def _work(setup: RQSetup) -> None:
    """Run the queue dry in this process."""
    SimpleWorker([setup.queue], connection=setup.connection).work(burst=True)


def _attribute(span: dict[str, object], key: str) -> object:
    attributes = span["attributes"]
    assert isinstance(attributes, dict)
    return attributes.get(key)


def test_declares_the_supported_rq_versions() -> None:
    """``instrumentation_dependencies`` is the range the ``rq`` extra declares."""
    assert tuple(RQInstrumentor().instrumentation_dependencies()) == ("rq >= 1.15, < 4.0",)


def test_instrumenting_twice_and_uninstrumenting(rq_setup: RQSetup) -> None:
    """A second instrument is a no-op; uninstrument restores RQ's methods and sends plain jobs."""
    patched = Queue.enqueue_job
    assert getattr(patched, "__jobtrace_original__", None) is not None
    assert instrument_rq() is RQInstrumentor()
    assert Queue.enqueue_job is patched
    rq_setup.queue.enqueue(jobs.quick, 1)
    assert len(rq_setup.send_spans("quick")) == 1  # wrapped once, not twice

    RQInstrumentor().uninstrument()
    assert Queue.enqueue_job is patched.__jobtrace_original__  # type: ignore[attr-defined]
    assert not hasattr(Job.perform, "__jobtrace_original__")
    assert not hasattr(Worker.handle_job_failure, "__jobtrace_original__")
    plain = rq_setup.queue.enqueue(jobs.quick, 2)
    assert not any(key.startswith("jobtrace-") for key in plain.meta)
    assert len(rq_setup.send_spans("quick")) == 1
    RQInstrumentor().uninstrument()  # twice is harmless


def test_enqueue_saves_the_metadata_in_job_meta(rq_setup: RQSetup) -> None:
    """The trace context and lineage keys are in ``job.meta`` as saved in Redis."""
    job = rq_setup.queue.enqueue(jobs.quick, 7)
    (send,) = rq_setup.send_spans("quick")
    meta = Job.fetch(job.id, connection=rq_setup.connection).meta
    assert meta["jobtrace-job-id"] == job.id
    assert meta["traceparent"].split("-")[1:3] == [send["trace_id"], send["span_id"]]
    assert _attribute(send, "messaging.system") == "rq"
    assert _attribute(send, "messaging.destination.name") == rq_setup.queue.name
    assert _attribute(send, "jobtrace.job.args") == "[7]"


def test_enqueue_in_records_the_delay(rq_setup: RQSetup) -> None:
    """``enqueue_in`` goes through ``schedule_job``: one send span with the delay."""
    job = rq_setup.queue.enqueue_in(timedelta(seconds=90), jobs.quick, 1)
    (send,) = rq_setup.send_spans("quick")
    delay = _attribute(send, "jobtrace.job.delay_s")
    assert isinstance(delay, float)
    assert 85 < delay <= 90
    assert Job.fetch(job.id, connection=rq_setup.connection).meta["jobtrace-job-id"] == job.id


def test_enqueue_many_sends_each_job(rq_setup: RQSetup) -> None:
    """``enqueue_many`` gets one send span per job, each job carrying its own id."""
    created = rq_setup.queue.enqueue_many([Queue.prepare_data(jobs.quick, (n,)) for n in range(3)])
    sends = rq_setup.send_spans("quick")
    assert sorted(_attribute(s, "jobtrace.job.id") for s in sends) == sorted(j.id for j in created)
    for job in created:
        assert Job.fetch(job.id, connection=rq_setup.connection).meta["jobtrace-job-id"] == job.id


def test_sync_queue_runs_under_its_send_span(rq_setup: RQSetup) -> None:
    """A synchronous queue (``is_async=False``) runs the job in-process, under its send span."""
    queue = Queue(rq_setup.queue.name, connection=rq_setup.connection, is_async=False)
    job = queue.enqueue(jobs.quick, 3)
    assert job.return_value() == 3
    (send,) = rq_setup.send_spans("quick")
    (run,) = rq_setup.process_spans("quick")
    assert run["parent_span_id"] == send["span_id"]


def test_requeued_failure_is_a_linked_next_attempt(rq_setup: RQSetup) -> None:
    """Requeueing a failed job sends nothing new; its next run is attempt 2, linked to attempt 1."""
    job = rq_setup.queue.enqueue(jobs.flaky, 1)
    _work(rq_setup)
    assert job.get_status() == JobStatus.FAILED
    rq_setup.queue.enqueue_job(Job.fetch(job.id, connection=rq_setup.connection))
    _work(rq_setup)

    assert len(rq_setup.send_spans("flaky")) == 1
    first, second = rq_setup.process_spans("flaky")
    assert [
        _attribute(first, "jobtrace.job.outcome"),
        _attribute(second, "jobtrace.job.outcome"),
    ] == [
        "failed",
        "succeeded",
    ]
    assert _attribute(second, "jobtrace.job.attempt") == 2
    assert [link["span_id"] for link in second["links"]] == [first["span_id"]]


@pytest.mark.skipif(not rq_integration._RETRY_RESULTS, reason="RQ without Retry results")
def test_returned_retry_is_retrying_then_failed(rq_setup: RQSetup) -> None:
    """A job returning ``Retry(max=1)``: attempt 1 retrying, attempt 2 past the limit failed."""
    rq_setup.queue.enqueue(jobs.ask_retry, 1)
    _work(rq_setup)

    first, second = rq_setup.process_spans("ask_retry")
    assert _attribute(first, "jobtrace.job.outcome") == "retrying"
    assert _attribute(first, "jobtrace.job.outcome_reason") == "retry_requested"
    assert _attribute(second, "jobtrace.job.outcome") == "failed"
    assert second["status"] == "ERROR"
    assert _attribute(second, "error.type") == ("jobtrace.integrations.rq.RetryLimitExceededError")
    assert [link["span_id"] for link in second["links"]] == [first["span_id"]]


def test_retry_with_interval_is_not_a_new_send(rq_setup: RQSetup) -> None:
    """A retry scheduled for later (``schedule_job`` from the worker) keeps the job's metadata."""
    job = rq_setup.queue.enqueue(jobs.fail, "later", retry=Retry(max=1, interval=60))
    original = dict(job.meta)
    _work(rq_setup)

    assert job.get_status() == JobStatus.SCHEDULED
    assert len(rq_setup.send_spans("fail")) == 1
    (run,) = rq_setup.process_spans("fail")
    assert _attribute(run, "jobtrace.job.outcome") == "retrying"
    meta = Job.fetch(job.id, connection=rq_setup.connection).meta
    assert meta["traceparent"] == original["traceparent"]
    assert meta["jobtrace-attempt"] == "2"


def test_cancel_records_cancelled(rq_setup: RQSetup) -> None:
    """``job.cancel()`` tells the lineage store the job was cancelled."""
    job = rq_setup.queue.enqueue(jobs.quick, 1)
    job.cancel()
    (record,) = [r for r in rq_setup.telemetry.records if r.kind == "finished"]
    assert (record.job_id, record.state, record.reason) == (job.id, JobState.CANCELLED, "canceled")
    assert record.root_job_id == job.id


def test_malformed_metadata_costs_a_warning_not_the_job(
    plain_rq_setup: RQSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage trace context and lineage keys from some producer: the job runs, as a root."""
    job = plain_rq_setup.queue.enqueue(
        jobs.quick, 5, meta={"traceparent": "00-nonsense", "jobtrace-depth": "deep"}
    )
    instrument_rq(record=False)
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        _work(plain_rq_setup)

    assert job.return_value() == 5
    (run,) = plain_rq_setup.process_spans("quick")
    assert run["parent_span_id"] is None
    assert _attribute(run, "jobtrace.job.depth") == 0
    assert "malformed metadata" in caplog.text


def test_tracer_and_meter_providers_given_get_the_spans_and_metrics(rq_setup: RQSetup) -> None:
    """instrument(tracer_provider=, meter_provider=): send and job spans and metrics go there."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    RQInstrumentor().uninstrument()
    instrument_rq(
        record=False,
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    job = rq_setup.queue.enqueue(jobs.quick, 4)
    _work(rq_setup)

    assert job.return_value() == 4
    assert sorted(s.name for s in spans.get_finished_spans()) == [
        "process tests.integrations.rq.jobs.quick",
        "send tests.integrations.rq.jobs.quick",
    ]
    assert rq_setup.spans() == []
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert {"messaging.process.duration", "messaging.client.sent.messages"} <= names


def test_instrument_rq_without_rq_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without RQ, instrument_rq() raises ModuleNotFoundError naming the extra."""
    monkeypatch.setitem(sys.modules, "rq", None)
    monkeypatch.delitem(sys.modules, "jobtrace.integrations.rq._instrumentor")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'jobtrace\[rq\]'"):
        instrument_rq()


def test_job_state_maps_every_rq_status() -> None:
    """Every RQ status maps onto a jobtrace state (statuses of later RQ versions to ``None``)."""
    assert all(job_state(status) is job_state(status.value) is not None for status in JobStatus)
    assert job_state("a_status_of_rq_9") is None
    assert job_state(JobStatus.STARTED) is JobState.RUNNING
    assert job_state(JobStatus.FINISHED) is JobState.SUCCEEDED
    assert job_state(JobStatus.STOPPED) is JobState.CANCELLED
    assert job_state(JobStatus.CANCELED) is JobState.CANCELLED
    assert job_state(JobStatus.DEFERRED) is JobState.QUEUED
    assert job_state(JobStatus.SCHEDULED) is JobState.QUEUED


_PROBE = (
    "import rq.queue, rq.job; "
    "print(hasattr(rq.queue.Queue.enqueue_job, '__jobtrace_original__'), "
    "hasattr(rq.job.Job.perform, '__jobtrace_original__'))"
)


@pytest.mark.parametrize(
    ("disabled", "expected"), [("", "True True"), ("jobtrace-rq", "False False")]
)
def test_opentelemetry_instrument_activates_the_entry_point(disabled: str, expected: str) -> None:
    """``opentelemetry-instrument`` loads ``jobtrace-rq``; the disabled list turns it off."""
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled,
        "JOBTRACE_RECORD": "0",
    }
    command = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")
    result = subprocess.run(
        [command, sys.executable, "-c", _PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == expected, result.stderr


def test_send_and_run_name_the_redis_server(rq_setup: RQSetup) -> None:
    """The send and the run carry the queue's Redis server as ``server.address``/``server.port``,
    on their spans and on the messaging metrics."""
    rq_setup.queue.enqueue(jobs.quick, 5)
    SimpleWorker([rq_setup.queue], connection=rq_setup.connection).work(burst=True)
    telemetry = rq_setup.telemetry
    (send,) = telemetry.send_spans("tests.integrations.rq.jobs.quick")
    (run,) = telemetry.process_spans("tests.integrations.rq.jobs.quick")
    for span in (send, run):
        attributes = span.attributes or {}
        assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", 6379)
    for name in ("messaging.client.sent.messages", "messaging.process.duration"):
        (point,) = telemetry.metric_points(name)
        assert dict(point.attributes)["server.address"] == "127.0.0.1"
        assert dict(point.attributes)["server.port"] == 6379
