"""The Dramatiq instrumentor in process (Stub broker): attaching, detaching, middleware order, metadata."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq.broker import Broker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO, Retries
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import jobtrace
from jobtrace.integrations.dramatiq import (
    OPTIONS_KEY,
    DramatiqInstrumentor,
    JobtraceMiddleware,
    instrument_dramatiq,
)
from tests.integrations.harness import ROOT, read_spans

QUEUE = "jobtrace-stub"


@pytest.fixture
def global_broker() -> Iterator[StubBroker]:
    """A Stub broker set as Dramatiq's global broker, the previous one restored afterwards."""
    previous = dramatiq.broker.global_broker
    broker = StubBroker()
    dramatiq.set_broker(broker)
    try:
        yield broker
    finally:
        dramatiq.broker.global_broker = previous
        broker.close()


@pytest.fixture
def instrumentor() -> Iterator[DramatiqInstrumentor]:
    """The singleton instrumentor, uninstrumented after the test whatever it did."""
    instrumentor = DramatiqInstrumentor()
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


def ours(broker: Broker) -> list[int]:
    """Positions of jobtrace middleware in ``broker``'s list."""
    return [i for i, m in enumerate(broker.middleware) if isinstance(m, JobtraceMiddleware)]


def run_messages(broker: StubBroker) -> None:
    """Process what was sent with an in-process worker, until the queue is empty."""
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        broker.join(QUEUE, timeout=10_000, fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def declare(broker: Broker) -> tuple[Any, Any, Any]:
    """A job that succeeds, one that always fails with one retry, one that is always too old."""

    @dramatiq.actor(actor_name="Ok", queue_name=QUEUE, broker=broker)
    def ok() -> None:
        return None

    @dramatiq.actor(
        actor_name="Flaky", queue_name=QUEUE, broker=broker, max_retries=1, min_backoff=1
    )
    def flaky() -> None:
        raise TimeoutError("annotation service timed out")

    @dramatiq.actor(actor_name="Expired", queue_name=QUEUE, broker=broker, max_age=1)
    def expired() -> None:
        raise AssertionError("never runs")

    return ok, flaky, expired


def test_instrument_puts_the_middleware_first_on_existing_and_new_brokers(
    global_broker: StubBroker, instrumentor: DramatiqInstrumentor
) -> None:
    """The global broker, the ``broker`` keyword's and brokers created later get it, first."""
    other = StubBroker()
    instrumentor.instrument(broker=other, record=False)
    later = StubBroker(middleware=[Retries()])
    empty = StubBroker(middleware=[])

    assert ours(global_broker) == ours(other) == ours(later) == ours(empty) == [0]


def test_instrumenting_twice_adds_one_middleware(
    global_broker: StubBroker, instrumentor: DramatiqInstrumentor
) -> None:
    """A second instrument() or instrument_dramatiq() leaves one middleware per broker."""
    instrumentor.instrument(record=False)
    instrumentor.instrument(record=False)
    assert instrument_dramatiq(global_broker, record=False) is instrumentor
    late = StubBroker()
    instrument_dramatiq(late)

    assert ours(global_broker) == ours(late) == [0]


def test_uninstrument_detaches_and_stops_tracing(
    global_broker: StubBroker, instrumentor: DramatiqInstrumentor, spans_path: Path
) -> None:
    """After uninstrument() no broker keeps the middleware and messages carry no metadata."""
    original_init = Broker.__init__
    instrumentor.instrument(record=False)
    assert Broker.__init__ is not original_init
    instrumentor.uninstrument()
    instrumentor.uninstrument()  # a second time only warns

    assert Broker.__init__ is original_init
    assert ours(global_broker) == ours(StubBroker()) == []
    ok, _, _ = declare(global_broker)
    message = ok.send()
    assert OPTIONS_KEY not in message.options
    run_messages(global_broker)
    assert read_spans(spans_path) == []


@pytest.mark.parametrize("position", ["first", "after_retries"])
def test_outcomes_and_retry_links_in_either_position(
    position: str, instrumentor: DramatiqInstrumentor, spans_path: Path
) -> None:
    """First or after Retries: retrying then failed attempts linked, expired messages discarded."""
    broker = StubBroker()
    if position == "first":
        instrument_dramatiq(broker, record=False)
        assert ours(broker) == [0]
    else:
        broker.add_middleware(JobtraceMiddleware(record=False))
        assert ours(broker) == [len(broker.middleware) - 1]
    ok, flaky, expired = declare(broker)
    flaky.send()
    expired.send()
    ok.send()
    run_messages(broker)

    spans = [s for s in read_spans(spans_path) if s["kind"] == "CONSUMER"]
    outcomes = {
        (s["attributes"]["jobtrace.job.name"], s["attributes"]["jobtrace.job.attempt"]): s
        for s in spans
    }
    assert {key: s["attributes"]["jobtrace.job.outcome"] for key, s in outcomes.items()} == {
        ("Flaky", 1): "retrying",
        ("Flaky", 2): "failed",
        ("Expired", 1): "discarded",
        ("Ok", 1): "succeeded",
    }
    (link,) = outcomes["Flaky", 2]["links"]
    assert link["span_id"] == outcomes["Flaky", 1]["span_id"]
    assert outcomes["Flaky", 2]["attributes"]["error.type"] == "TimeoutError"
    broker.close()


def test_malformed_metadata_costs_a_warning_not_the_job(
    instrumentor: DramatiqInstrumentor, spans_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage under the options key from a foreign producer: the job runs, as a root."""
    broker = StubBroker()
    ok, _, _ = declare(broker)
    ok.send_with_options(jobtrace={"traceparent": "00-nonsense", "jobtrace-depth": [7]})
    ok.send_with_options(jobtrace="not a mapping")
    instrument_dramatiq(broker, record=False)
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        run_messages(broker)

    spans = read_spans(spans_path)
    assert len(spans) == 2
    for span in spans:
        assert span["kind"] == "CONSUMER"
        assert span["parent_span_id"] is None
        assert span["attributes"]["jobtrace.job.outcome"] == "succeeded"
        assert span["attributes"]["jobtrace.job.depth"] == 0
    assert sum("malformed metadata" in r.getMessage() for r in caplog.records) == 2
    broker.close()


def test_tracer_and_meter_providers_given_get_the_spans_and_metrics(
    instrumentor: DramatiqInstrumentor, spans_path: Path
) -> None:
    """instrument(tracer_provider=, meter_provider=): send and job spans and metrics go there."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    broker = StubBroker()
    instrument_dramatiq(
        broker,
        record=False,
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    ok, _, _ = declare(broker)
    ok.send()
    run_messages(broker)

    assert sorted(s.name for s in spans.get_finished_spans()) == ["process Ok", "send Ok"]
    assert read_spans(spans_path) == []
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert {"messaging.process.duration", "messaging.client.sent.messages"} <= names
    broker.close()


def test_instrument_dramatiq_without_dramatiq_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without Dramatiq, instrument_dramatiq() raises ModuleNotFoundError naming the extra."""
    monkeypatch.setitem(sys.modules, "dramatiq", None)
    monkeypatch.delitem(sys.modules, "jobtrace.integrations.dramatiq._instrumentor")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'jobtrace\[dramatiq\]'"):
        instrument_dramatiq()


def test_delayed_message_keeps_its_first_send(
    instrumentor: DramatiqInstrumentor, spans_path: Path
) -> None:
    """A delayed message moved to its queue when due is not sent again: one send span, its parent."""
    broker = StubBroker()
    instrument_dramatiq(broker, record=False)
    ok, _, _ = declare(broker)
    message = ok.send_with_options(delay=20)
    run_messages(broker)

    spans = read_spans(spans_path)
    (send,) = [s for s in spans if s["kind"] == "PRODUCER"]
    (process,) = [s for s in spans if s["kind"] == "CONSUMER"]
    assert send["attributes"]["jobtrace.job.delay_s"] == pytest.approx(0.02)
    assert send["attributes"]["messaging.destination.name"] == QUEUE
    assert process["parent_span_id"] == send["span_id"]
    assert process["attributes"]["jobtrace.job.id"] == message.message_id
    broker.close()


def test_delayed_message_from_a_plain_producer_stays_a_root(
    instrumentor: DramatiqInstrumentor, spans_path: Path
) -> None:
    """The worker moving a due message of a producer without jobtrace does not pose as its sender."""
    broker = StubBroker()
    ok, _, _ = declare(broker)
    message = ok.send_with_options(delay=20)
    instrument_dramatiq(broker, record=False)
    run_messages(broker)

    (process,) = read_spans(spans_path)
    assert process["kind"] == "CONSUMER"
    assert process["parent_span_id"] is None
    assert process["attributes"]["jobtrace.job.root_id"] == message.message_id


def test_async_actor_runs_inside_its_job(
    instrumentor: DramatiqInstrumentor, spans_path: Path
) -> None:
    """An ``async def`` actor sees its job, and a message it sends becomes the job's child."""
    broker = StubBroker()
    broker.add_middleware(AsyncIO())
    instrument_dramatiq(broker, record=False)
    seen: list[jobtrace.JobInfo | None] = []

    @dramatiq.actor(actor_name="AsyncChild", queue_name=QUEUE, broker=broker)
    async def child() -> None:
        seen.append(jobtrace.current_job())

    @dramatiq.actor(actor_name="AsyncParent", queue_name=QUEUE, broker=broker)
    async def parent() -> None:
        seen.append(jobtrace.current_job())
        child.send()

    parent.send()
    run_messages(broker)

    parent_job, child_job = seen
    assert parent_job is not None
    assert child_job is not None
    assert (parent_job.name, child_job.name) == ("AsyncParent", "AsyncChild")
    assert child_job.parent_job_id == parent_job.job_id
    assert child_job.trace_id == parent_job.trace_id
    broker.close()


SCRIPT = """
from dramatiq.brokers.stub import StubBroker
from jobtrace.integrations.dramatiq import JobtraceMiddleware
broker = StubBroker()
print("first:", type(broker.middleware[0]).__name__)
"""


@pytest.mark.parametrize(
    ("disabled", "expected"), [("", "JobtraceMiddleware"), ("jobtrace-dramatiq", "AgeLimit")]
)
def test_opentelemetry_instrument_loads_the_entry_point(disabled: str, expected: str) -> None:
    """``opentelemetry-instrument`` activates jobtrace-dramatiq, unless it is disabled by name."""
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled,
        "JOBTRACE_RECORD": "0",
        "PYTHONPATH": str(ROOT),
    }
    command = [str(Path(sys.executable).with_name("opentelemetry-instrument")), sys.executable]
    result = subprocess.run(
        [*command, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"first: {expected}" in result.stdout, result.stderr


def test_the_broker_server_of_redis_and_rabbitmq_brokers() -> None:
    """``server.address``/``port`` come from a Redis broker's client or a RabbitMQ broker's
    connection parameters (the first of a failover list), without connecting; a stub has none."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from dramatiq.brokers.redis import RedisBroker

    from jobtrace.integrations.dramatiq._instrumentor import _broker_server

    redis_broker = RedisBroker(url="redis://redis.example:6390/0")
    rabbit = RabbitmqBroker(url="amqp://guest:guest@first.example:5673/%2F;amqp://second.example")
    stub = StubBroker()
    try:
        assert _broker_server(redis_broker) == ("redis.example", 6390)
        assert _broker_server(rabbit) == ("first.example", 5673)
        assert _broker_server(stub) is None
    finally:
        for broker in (redis_broker, rabbit, stub):
            broker.close()
