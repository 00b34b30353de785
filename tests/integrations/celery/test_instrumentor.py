"""The Celery instrumentor in process: receivers, eager tasks, publishing, contrib side by side."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, signals
from kombu.exceptions import OperationalError
from opentelemetry.instrumentation.celery import CeleryInstrumentor as ContribInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import jobtrace
from jobtrace.integrations.celery import CeleryInstrumentor, instrument_celery
from jobtrace.testing import CapturedTelemetry, capture_telemetry
from tests.integrations.harness import ROOT

QUEUE = "jobtrace-in-process"


@pytest.fixture
def instrumentor() -> Iterator[CeleryInstrumentor]:
    """The singleton instrumentor, uninstrumented after the test whatever it did."""
    instrumentor = CeleryInstrumentor()
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def telemetry() -> Iterator[CapturedTelemetry]:
    """In-memory spans and records for the test."""
    with capture_telemetry() as captured:
        yield captured


@pytest.fixture
def contrib() -> Iterator[ContribInstrumentor]:
    """python-contrib's instrumentor, uninstrumented after the test."""
    instrumentor = ContribInstrumentor()
    try:
        yield instrumentor
    finally:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """The headers of every message published, as the broker gets them."""
    headers: list[dict[str, Any]] = []

    def receiver(headers: dict[str, Any], **kwargs: Any) -> None:
        captured.append(dict(headers))

    captured = headers
    signals.after_task_publish.connect(receiver, weak=False)
    try:
        yield headers
    finally:
        signals.after_task_publish.disconnect(receiver)


def memory_app(*, eager: bool = False) -> Celery:
    """An app on kombu's in-memory transport: publishing works, nothing consumes.

    The newest app is the current one (python-contrib looks tasks up there) and its tasks are its
    own: shared tasks of the same names would reach the apps of other tests (not eager, say).
    """
    app = Celery("in-process", broker="memory://", set_as_current=True)
    app.conf.update(task_default_queue=QUEUE, task_always_eager=eager)

    @app.task(name="Parent", shared=False)
    def parent(children: int) -> None:
        for number in range(children):
            app.tasks["Child"].delay(number)

    @app.task(name="Child", shared=False)
    def child(number: int) -> int:
        jobtrace.count(processed=1)
        return number

    @app.task(name="Flaky", shared=False, bind=True, max_retries=1)
    def flaky(self: Any) -> None:
        raise self.retry(exc=TimeoutError("annotation service timed out"), countdown=0)

    @app.task(name="Broken", shared=False)
    def broken() -> None:
        raise ValueError("movie_not_ready")

    return app


def ours(signal: Any) -> list[int]:
    """Positions of jobtrace's receivers among a signal's receivers."""
    return [
        i
        for i, (_, receiver) in enumerate(signal.receivers)
        if getattr(receiver, "__self__", None) is CeleryInstrumentor()
    ]


def contribs(signal: Any) -> list[int]:
    """Positions of contrib's receivers among a signal's receivers."""
    return [
        i
        for i, (_, receiver) in enumerate(signal.receivers)
        if (getattr(receiver, "__module__", "") or "").startswith(
            "opentelemetry.instrumentation.celery"
        )
    ]


def test_instrumenting_twice_and_uninstrumenting(
    instrumentor: CeleryInstrumentor, telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """instrument() twice and instrument_celery() connect each receiver once; uninstrument() none."""
    instrumentor.instrument(record=False)
    instrumentor.instrument(record=False)
    assert instrument_celery(memory_app(), record=False) is instrumentor
    assert len(ours(signals.task_prerun)) == len(ours(signals.before_task_publish)) == 1

    instrumentor.uninstrument()
    with caplog.at_level(logging.WARNING):
        instrumentor.uninstrument()
    assert "already uninstrumented" in caplog.text
    assert ours(signals.task_prerun) == ours(signals.worker_process_shutdown) == []
    memory_app(eager=True).tasks["Parent"].delay(2)
    assert telemetry.spans() == []


def test_protocol_1_app_gets_a_warning(
    instrumentor: CeleryInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    """An app on task protocol 1 cannot carry the metadata: instrument_celery() says so."""
    app = memory_app()
    app.conf.task_protocol = 1
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        instrument_celery(app, record=False)
    assert "protocol 1" in caplog.text


def test_eager_tasks_nest_under_the_calling_job(
    instrumentor: CeleryInstrumentor, telemetry: CapturedTelemetry
) -> None:
    """task_always_eager: no send spans; each task's span and lineage sit under its caller's."""
    instrument_celery(record=False)
    app = memory_app(eager=True)
    with jobtrace.trace_job({}, name="Nightly", job_id="nightly-1"):
        app.tasks["Parent"].delay(2)

    (nightly,) = telemetry.process_spans("Nightly")
    (parent,) = telemetry.process_spans("Parent")
    children = telemetry.process_spans("Child")
    assert [(s.name, dict(s.attributes or {})) for s in telemetry.send_spans()] == []
    assert parent.parent is not None
    assert parent.parent.span_id == nightly.context.span_id
    assert len(children) == 2
    for child in children:
        assert child.parent is not None
        assert child.parent.span_id == parent.context.span_id
        assert child.attributes is not None
        assert child.attributes["jobtrace.job.depth"] == 2
        assert child.attributes["jobtrace.job.parent_id"] == parent.attributes["jobtrace.job.id"]  # type: ignore[index]
        assert child.attributes["jobtrace.job.root_id"] == "nightly-1"
        assert child.attributes["jobtrace.items.processed"] == 1
    assert {span.context.trace_id for span in telemetry.spans()} == {nightly.context.trace_id}


def test_eager_retries_and_failures(
    instrumentor: CeleryInstrumentor, telemetry: CapturedTelemetry
) -> None:
    """Eager self.retry(): linked attempts; an eager failure that propagates is recorded, not lost."""
    instrument_celery(record=False)
    app = memory_app(eager=True)
    app.tasks["Flaky"].delay()
    app.conf.task_eager_propagates = True
    with pytest.raises(ValueError, match="movie_not_ready"):
        app.tasks["Broken"].delay()

    attempts = sorted(
        telemetry.process_spans("Flaky"),
        key=lambda s: s.attributes["jobtrace.job.attempt"],  # type: ignore[index]
    )
    assert [(s.attributes or {}).get("jobtrace.job.outcome") for s in attempts] == [
        "retrying",
        "failed",
    ]
    (link,) = attempts[1].links
    assert link.context.span_id == attempts[0].context.span_id
    (broken,) = telemetry.process_spans("Broken")
    assert broken.attributes is not None
    assert broken.attributes["jobtrace.job.outcome"] == "failed"
    assert broken.attributes["error.type"] == "ValueError"


def test_eager_children_follow_the_fan_out_rule(instrumentor: CeleryInstrumentor) -> None:
    """Eager children past link_after_fanout are linked to their caller, as published ones are."""
    with capture_telemetry(settings={"link_after_fanout": 1}) as telemetry:
        instrument_celery(record=False)
        memory_app(eager=True).tasks["Parent"].delay(2)

    (parent,) = telemetry.process_spans("Parent")
    nested, linked = telemetry.process_spans("Child")
    assert [(s.attributes or {})["jobtrace.relationship"] for s in (nested, linked)] == [
        "child",
        "link",
    ]
    assert nested.context.trace_id == parent.context.trace_id
    assert linked.context.trace_id != parent.context.trace_id
    assert [link.context.span_id for link in linked.links] == [parent.context.span_id]
    for child in (nested, linked):
        assert (child.attributes or {})["jobtrace.job.parent_id"] == (parent.attributes or {})[
            "jobtrace.job.id"
        ]


def test_tracer_and_meter_providers_given_get_the_spans_and_metrics(
    instrumentor: CeleryInstrumentor, telemetry: CapturedTelemetry
) -> None:
    """instrument(tracer_provider=, meter_provider=): send and task spans and metrics go there."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    instrument_celery(
        record=False,
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    memory_app().tasks["Child"].delay(1)
    memory_app(eager=True).tasks["Child"].delay(2)

    assert sorted(s.name for s in spans.get_finished_spans()) == ["process Child", "send Child"]
    assert telemetry.spans() == []
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert {"messaging.process.duration", "messaging.client.sent.messages"} <= names


def test_publish_writes_the_metadata_into_the_headers(
    instrumentor: CeleryInstrumentor,
    telemetry: CapturedTelemetry,
    published: list[dict[str, Any]],
) -> None:
    """A send span per publish; traceparent and jobtrace-* keys in the headers; another job's go."""
    instrument_celery(record=False)
    app = memory_app()
    result = app.tasks["Child"].apply_async(
        (1,), countdown=30, headers={"jobtrace-job-id": "stale", "x-tenant": "a"}
    )

    (send,) = telemetry.send_spans("Child")
    (headers,) = published
    assert send.kind is SpanKind.PRODUCER
    assert send.name == "send Child"
    assert send.attributes is not None
    assert send.attributes["messaging.destination.name"] == QUEUE
    assert send.attributes["jobtrace.job.id"] == result.id
    assert 29 < send.attributes["jobtrace.job.delay_s"] <= 30  # type: ignore[operator]
    assert headers["jobtrace-job-id"] == result.id
    assert headers["jobtrace-depth"] == "0"
    assert headers["x-tenant"] == "a"
    span_id = f"{send.context.span_id:016x}"
    assert headers["traceparent"].split("-")[2] == span_id


def test_a_failed_publish_ends_its_send_span_as_an_error(
    instrumentor: CeleryInstrumentor, telemetry: CapturedTelemetry
) -> None:
    """When kombu raises, the send span ends as an error at the next publish, not never."""
    instrument_celery(record=False)
    refused = memory_app()
    refused.conf.update(broker_url="redis://127.0.0.1:1/1", task_publish_retry=False)
    with pytest.raises(OperationalError):
        refused.send_task("Child", args=(1,), queue=QUEUE)
    assert telemetry.send_spans() == []
    memory_app().send_task("Child", args=(2,), queue=QUEUE)

    failed, sent = telemetry.send_spans("Child")
    assert failed.status.is_ok is False
    assert failed.attributes is not None
    assert str(failed.attributes["error.type"]).endswith("PublishIncompleteError")
    assert sent.status.is_unset


def test_contrib_first_jobtrace_adopts_its_spans(
    contrib: ContribInstrumentor,
    instrumentor: CeleryInstrumentor,
    telemetry: CapturedTelemetry,
    published: list[dict[str, Any]],
) -> None:
    """contrib instrumented first: one span per send and per run, contrib's, with jobtrace's keys."""
    contrib.instrument()
    instrument_celery(record=False)
    app = memory_app()
    with jobtrace.trace_job({}, name="Nightly", job_id="nightly-2"):
        result = app.tasks["Child"].delay(1)
    eager = memory_app(eager=True)
    eager.tasks["Parent"].delay(1)

    (send,) = [s for s in telemetry.spans() if s.kind is SpanKind.PRODUCER]
    assert send.name == "apply_async/Child"
    assert send.attributes is not None
    assert send.attributes["jobtrace.job.id"] == result.id
    assert send.attributes["jobtrace.job.parent_id"] == "nightly-2"
    (headers,) = published
    assert headers["traceparent"].split("-")[2] == f"{send.context.span_id:016x}"
    assert headers["jobtrace-parent-job-id"] == "nightly-2"
    runs = [
        s for s in telemetry.spans() if s.kind is SpanKind.CONSUMER and s.name != "process Nightly"
    ]
    assert sorted(s.name for s in runs) == ["run/Child", "run/Parent"]
    for run in runs:
        assert run.attributes is not None
        assert run.attributes["jobtrace.job.outcome"] == "succeeded"
    assert [r.kind for r in telemetry.records if r.job_id == result.id] == ["enqueued"]
    assert ours(signals.task_prerun)[0] > max(contribs(signals.task_prerun))
    assert ours(signals.task_postrun)[-1] < min(contribs(signals.task_postrun))


def test_contrib_after_jobtrace_is_put_in_order(
    contrib: ContribInstrumentor,
    instrumentor: CeleryInstrumentor,
    telemetry: CapturedTelemetry,
    published: list[dict[str, Any]],
) -> None:
    """contrib instrumented later: the lineage still goes, no second span, and then the order is right."""
    instrument_celery(record=False)
    contrib.instrument()
    app = memory_app()
    first = app.tasks["Child"].delay(1)
    second = app.tasks["Child"].delay(2)

    sends = [s for s in telemetry.spans() if s.kind is SpanKind.PRODUCER]
    assert [s.name for s in sends] == ["apply_async/Child", "apply_async/Child"]
    assert [h["jobtrace-job-id"] for h in published] == [first.id, second.id]
    for headers, send in zip(published, sends, strict=True):
        assert headers["traceparent"].split("-")[2] == f"{send.context.span_id:016x}"
    assert "jobtrace.job.id" not in (sends[0].attributes or {})
    assert (sends[1].attributes or {})["jobtrace.job.id"] == second.id
    assert ours(signals.before_task_publish)[0] > max(contribs(signals.before_task_publish))


def test_after_auto_instrumentation_orders_before_the_first_message(
    contrib: ContribInstrumentor,
    instrumentor: CeleryInstrumentor,
    telemetry: CapturedTelemetry,
) -> None:
    """The post-instrument hook puts jobtrace after contrib before anything is sent."""
    from jobtrace.integrations.celery import after_auto_instrumentation

    instrument_celery(record=False)
    contrib.instrument()
    after_auto_instrumentation()
    result = memory_app().tasks["Child"].delay(1)

    (send,) = [s for s in telemetry.spans() if s.kind is SpanKind.PRODUCER]
    assert (send.attributes or {})["jobtrace.job.id"] == result.id


def test_instrument_celery_without_celery_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without Celery, instrument_celery() raises ModuleNotFoundError naming the extra."""
    monkeypatch.setitem(sys.modules, "celery", None)
    monkeypatch.delitem(sys.modules, "jobtrace.integrations.celery._instrumentor")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'jobtrace\[celery\]'"):
        instrument_celery()


@pytest.mark.parametrize("disabled", ["", "jobtrace-celery"])
def test_opentelemetry_instrument_loads_the_entry_point(disabled: str) -> None:
    """opentelemetry-instrument activates jobtrace-celery, unless it is disabled by name."""
    code = (
        "from jobtrace.integrations.celery import CeleryInstrumentor; "
        "from opentelemetry.instrumentation.celery import CeleryInstrumentor as Contrib; "
        "print(CeleryInstrumentor().is_instrumented_by_opentelemetry, "
        "Contrib().is_instrumented_by_opentelemetry)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled,
        "JOBTRACE_RECORD": "0",
    }
    ran = subprocess.run(
        [str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == [str(not disabled), "True"]


def test_after_auto_instrumentation_is_a_post_instrument_entry_point() -> None:
    """opentelemetry-instrument runs it after every instrumentor, through its entry point group."""
    from importlib.metadata import entry_points

    from jobtrace.integrations.celery import after_auto_instrumentation

    (ours,) = [
        point
        for point in entry_points(group="opentelemetry_post_instrument")
        if point.name == "jobtrace-celery"
    ]
    assert ours.load() is after_auto_instrumentation


@pytest.mark.parametrize(
    ("broker", "server"),
    [
        ("amqp://guest:guest@rabbit.example:5673/jobs", ("rabbit.example", 5673)),
        ("pyamqp://", ("localhost", 5672)),
        ("redis://:secret@127.0.0.1:6380/1", ("127.0.0.1", 6380)),
        ("redis+socket:///run/redis.sock", ("/run/redis.sock", None)),
        ("amqp://first.example;amqp://second.example", ("first.example", 5672)),
        ("memory://", None),
    ],
)
def test_the_broker_server_comes_from_the_apps_broker_url(
    broker: str, server: tuple[str, int | None] | None
) -> None:
    """``server.address``/``port`` are read from the broker URL without connecting (default port
    filled in, the first of a failover list); an in-process transport has none."""
    from jobtrace.integrations.celery._instrumentor import _broker_server

    app = Celery("servers", broker=broker, set_as_current=False)
    assert _broker_server(app) == server


def test_without_contrib_imported_a_message_does_not_check_the_receivers_order(
    instrumentor: CeleryInstrumentor, telemetry: CapturedTelemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python-contrib never imported cannot be instrumenting: a publish and a run trace without
    looking at the signals' receivers (1.6 us each time)."""
    instrument_celery(record=False)
    monkeypatch.delitem(sys.modules, "opentelemetry.instrumentation.celery")
    checks: list[object] = []
    monkeypatch.setattr(
        CeleryInstrumentor, "order_after_contrib", lambda self: checks.append(self) or False
    )
    memory_app().send_task("Child", args=(1,), queue=QUEUE)
    memory_app(eager=True).tasks["Child"].delay(2)
    assert checks == []
    assert len(telemetry.send_spans("Child")) == 1


def test_the_broker_server_is_read_again_only_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker settings are read once per ``_SERVER_RECHECK`` seconds, not at every publish
    and run (reading them cost 12 us each time); a broker changed since is seen after that."""
    from celery.app.utils import Settings

    from jobtrace.integrations.celery import _instrumentor

    reads = []
    original = Settings.broker_write_url

    def counted(settings: Settings) -> Any:
        reads.append(1)
        return original.fget(settings)  # type: ignore[attr-defined]

    monkeypatch.setattr(Settings, "broker_write_url", property(counted))
    app = Celery("recheck", broker="redis://first.example:6380/0", set_as_current=False)
    assert _instrumentor._broker_server(app) == ("first.example", 6380)
    first = len(reads)
    for _ in range(4):
        assert _instrumentor._broker_server(app) == ("first.example", 6380)
    assert len(reads) == first
    app.conf.broker_url = "redis://second.example:6381/0"
    monkeypatch.setattr(_instrumentor, "_SERVER_RECHECK", 0.0)
    assert _instrumentor._broker_server(app) == ("second.example", 6381)


def test_a_publish_is_counted_without_a_server_on_the_memory_transport(
    instrumentor: CeleryInstrumentor, telemetry: CapturedTelemetry
) -> None:
    """A publish counts in ``messaging.client.sent.messages``; the memory transport names no
    server, and an eager run (never published) is no message sent."""
    instrument_celery(record=False)
    memory_app().tasks["Child"].delay(1)
    memory_app(eager=True).tasks["Child"].delay(2)
    (sent,) = telemetry.metric_points("messaging.client.sent.messages")
    assert sent.value == 1
    assert "server.address" not in dict(sent.attributes)
    assert all("server.address" not in (span.attributes or {}) for span in telemetry.spans())
