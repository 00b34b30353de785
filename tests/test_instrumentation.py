"""The interface for queue integrations: options, patching, instrument-once, sends and unrun jobs."""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import jobtrace
from jobtrace import JobState
from jobtrace.instrumentation import (
    PATCHED,
    JobMetadata,
    Options,
    QueueInstrumentor,
    SendIncompleteError,
    SendTracker,
    import_integration,
    read_job_metadata,
)
from jobtrace.testing import CapturedTelemetry, capture_telemetry


class Greeter:
    def greet(self) -> str:
        return "hello"


class LoudGreeter(Greeter):
    pass


def shout(original: Callable[..., str]) -> Callable[..., str]:
    def wrapper(*args: Any) -> str:
        return original(*args).upper()

    return wrapper


toy_library = types.ModuleType("toy_library")
toy_library.version = lambda: "1.0"  # type: ignore[attr-defined]


class ToyInstrumentor(QueueInstrumentor):
    """An integration of a pretend library: a method and a module function patched."""

    system = "toy"
    dependencies = ("pytest >= 7.0",)  # installed: the dependency check passes
    library_options = frozenset({"broker"})
    hooked = 0
    unhooked = 0

    def _hook(self, options: Options) -> None:
        ToyInstrumentor.hooked += 1
        self.patch(LoudGreeter, "greet", shout)
        self.patch(toy_library, "version", lambda original: lambda: f"traced {original()}")

    def _unhook(self) -> None:
        ToyInstrumentor.unhooked += 1


class OtherToyInstrumentor(QueueInstrumentor):
    """A second instrumentor patching what the first one patches."""

    system = "toy"

    def _hook(self, options: Options) -> None:
        self.patched = self.patch(Greeter, "greet", shout)


@pytest.fixture
def toy() -> Iterator[type[ToyInstrumentor]]:
    """The toy instrumentor's class, its counters reset, uninstrumented after the test."""
    ToyInstrumentor.hooked = ToyInstrumentor.unhooked = 0
    try:
        yield ToyInstrumentor
    finally:
        ToyInstrumentor().uninstrument()
        OtherToyInstrumentor().uninstrument()


@pytest.fixture
def telemetry() -> Iterator[CapturedTelemetry]:
    """In-memory spans and records for the test."""
    with capture_telemetry() as captured:
        yield captured


@dataclass
class OwnProviders:
    """A tracer and a meter provider of their own, apart from the global ones."""

    tracer_provider: TracerProvider
    spans: InMemorySpanExporter
    meter_provider: MeterProvider
    metrics: InMemoryMetricReader

    def metric_names(self) -> set[str]:
        data = self.metrics.get_metrics_data()
        if data is None:
            return set()
        return {
            metric.name
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }


@pytest.fixture
def own() -> OwnProviders:
    """Providers an instrumentor is given, each exporting in memory."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = InMemoryMetricReader()
    return OwnProviders(tracer_provider, spans, MeterProvider(metric_readers=[metrics]), metrics)


def test_options_parse_the_common_keywords_and_the_instrumentors_own(
    own: OwnProviders, caplog: pytest.LogCaptureFixture
) -> None:
    """Every common keyword lands in its field, the instrumentor's own in extra; a typo warns."""
    broker = object()
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        options = Options.parse(
            {
                "record": False,
                "database_url": "sqlite://",
                "tracer_provider": own.tracer_provider,
                "meter_provider": own.meter_provider,
                "flush_on_job_end": True,
                "shutdown_flush_timeout": 2.5,
                "broker": broker,
                "flush_on_job_ends": True,
            },
            system="toy",
            extra={"broker", "worker"},
        )
    assert options == Options(
        system="toy",
        record=False,
        database_url="sqlite://",
        tracer_provider=own.tracer_provider,
        meter_provider=own.meter_provider,
        flush_on_job_end=True,
        shutdown_flush_timeout=2.5,
        extra={"broker": broker},
    )
    assert "toy instrumentation ignores flush_on_job_ends" in caplog.text


def test_instrument_once_hooks_once_and_uninstrument_restores(
    toy: type[ToyInstrumentor], caplog: pytest.LogCaptureFixture
) -> None:
    """instrument_once twice hooks once, instrument() again warns; uninstrument undoes every patch."""
    original = vars(Greeter)["greet"]
    instrumentor = toy.instrument_once(record=False, broker="b")
    assert toy.instrument_once(record=False) is instrumentor
    with caplog.at_level(logging.WARNING):
        instrumentor.instrument(record=False)
    assert "already instrumented" in caplog.text
    assert toy.hooked == 1
    assert instrumentor.options.extra == {"broker": "b"}
    assert instrumentor.options.system == "toy"
    assert tuple(instrumentor.instrumentation_dependencies()) == ("pytest >= 7.0",)
    assert LoudGreeter().greet() == "HELLO"
    assert toy_library.version() == "traced 1.0"  # type: ignore[attr-defined]

    instrumentor.uninstrument()
    assert toy.unhooked == 1
    assert vars(Greeter)["greet"] is original
    assert "greet" not in vars(LoudGreeter)
    assert LoudGreeter().greet() == "hello"
    assert toy_library.version() == "1.0"  # type: ignore[attr-defined]
    assert toy.instrument_once(record=False) is instrumentor
    assert toy.hooked == 2


def test_patch_replaces_the_defining_class_and_marks_the_wrapper(
    toy: type[ToyInstrumentor],
) -> None:
    """A method is patched where the MRO defines it; the wrapper names what it replaced."""
    original = vars(Greeter)["greet"]
    toy.instrument_once(record=False)
    assert "greet" not in vars(LoudGreeter)
    assert getattr(vars(Greeter)["greet"], PATCHED) is original


def test_patch_leaves_what_jobtrace_already_wrapped(toy: type[ToyInstrumentor]) -> None:
    """A second instrumentor patching the same method wraps it once, not twice."""
    toy.instrument_once(record=False)
    other = OtherToyInstrumentor.instrument_once(record=False)
    assert other.patched is False
    assert Greeter().greet() == "HELLO"
    other.uninstrument()
    assert Greeter().greet() == "HELLO"  # still the first instrumentor's patch


def test_a_failing_patch_costs_a_warning_and_changes_nothing(
    toy: type[ToyInstrumentor], caplog: pytest.LogCaptureFixture
) -> None:
    """No such attribute, or a wrap that raises: patch() says False and warns, never raises."""
    instrumentor = toy.instrument_once(record=False)
    original = vars(Greeter)["greet"]

    def broken(original: Callable[..., Any]) -> Callable[..., Any]:
        raise TypeError("cannot wrap")

    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        assert instrumentor.patch(Greeter, "wave", shout) is False
        assert instrumentor.patch(toy_library, "greet", broken) is False
    assert caplog.text.count("jobtrace: patching") == 2
    assert vars(Greeter)["greet"] is original


def test_runs_and_sends_use_the_given_providers(
    telemetry: CapturedTelemetry, own: OwnProviders
) -> None:
    """tracer_provider= and meter_provider= get the send and job spans and the job metrics."""
    options = Options(
        system="toy", tracer_provider=own.tracer_provider, meter_provider=own.meter_provider
    )
    metadata: dict[str, str] = {}
    with options.send("Fetch", queue="pages", carrier=metadata):
        pass
    with options.job_run(metadata, name="Fetch", queue="pages"):
        pass

    send, run = own.spans.get_finished_spans()
    assert (send.kind, run.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert run.parent is not None
    assert run.parent.span_id == send.context.span_id
    assert (run.attributes or {})["messaging.system"] == "toy"
    assert telemetry.spans() == []
    assert {"messaging.process.duration", "messaging.client.sent.messages"} <= own.metric_names()
    assert [r.kind for r in telemetry.records] == ["enqueued", "started", "finished"]


def test_send_tracker_ends_the_sends_that_never_completed_as_failed(
    telemetry: CapturedTelemetry,
) -> None:
    """A completed send ends well; the rest of this thread's end as errors; threads are apart."""
    tracker = SendTracker()
    options = Options(system="toy")
    for job_id in ("sent", "lost"):
        send = options.send("Fetch", job_id=job_id)
        send.start()
        tracker.track(job_id, send)
    other_thread = threading.Thread(target=tracker.fail_unfinished)
    other_thread.start()
    other_thread.join()
    assert telemetry.spans() == []

    tracker.complete("sent")
    tracker.fail_unfinished()
    tracker.complete("lost")  # already ended: nothing happens

    sent, lost = telemetry.send_spans("Fetch")
    assert sent.status.status_code is StatusCode.UNSET
    assert lost.status.status_code is StatusCode.ERROR
    assert (lost.attributes or {})["error.type"] == "jobtrace.instrumentation.SendIncompleteError"
    assert issubclass(SendIncompleteError, RuntimeError)


def test_send_in_process_makes_a_child_of_the_running_job_without_a_send_span(
    telemetry: CapturedTelemetry,
) -> None:
    """An eager job: parent, root and depth from the running job, its span under the caller's."""
    options = Options(system="toy")
    metadata: dict[str, str] = {}
    with jobtrace.trace_job({}, name="Nightly", job_id="nightly-1"):
        sent = jobtrace.prepare_enqueue("Parent", job_id="parent-1")
        with jobtrace.trace_job(sent, name="Parent"):
            options.send_in_process("Child", job_id="child-1", carrier=metadata, queue="q")
            with options.job_run(metadata, name="Child", job_id="child-1"):
                pass

    assert telemetry.send_spans("Child") == []
    assert metadata["jobtrace-parent-job-id"] == "parent-1"
    assert metadata["jobtrace-root-job-id"] == "nightly-1"
    assert metadata["jobtrace-depth"] == "2"
    (parent,) = telemetry.process_spans("Parent")
    (child,) = telemetry.process_spans("Child")
    assert child.parent is not None
    assert child.parent.span_id == parent.context.span_id
    queued = [r for r in telemetry.records if r.job_id == "child-1" and r.kind == "enqueued"]
    assert [(r.parent_job_id, r.root_job_id, r.depth, r.queue) for r in queued] == [
        ("parent-1", "nightly-1", 2, "q")
    ]


def test_send_in_process_follows_the_fan_out_rule() -> None:
    """Past link_after_fanout an in-process child is linked, in a trace of its own."""
    options = Options(system="toy")
    carriers: list[dict[str, str]] = [{}, {}]
    with (
        capture_telemetry(settings={"link_after_fanout": 1}) as telemetry,
        jobtrace.trace_job({}, name="Parent", job_id="parent-1"),
    ):
        for number, carrier in enumerate(carriers):
            options.send_in_process("Child", job_id=f"child-{number}", carrier=carrier)
            with options.job_run(carrier, name="Child", job_id=f"child-{number}"):
                pass

    assert [c["jobtrace-relationship"] for c in carriers] == ["child", "link"]
    (parent,) = telemetry.process_spans("Parent")
    nested, linked = telemetry.process_spans("Child")
    assert nested.context.trace_id == parent.context.trace_id
    assert linked.context.trace_id != parent.context.trace_id
    assert [link.context.span_id for link in linked.links] == [parent.context.span_id]
    assert (linked.attributes or {})["jobtrace.job.parent_id"] == "parent-1"


def test_record_unrun_takes_the_lineage_from_the_metadata(telemetry: CapturedTelemetry) -> None:
    """A job that never ran: one finished record, its lineage from the metadata, no host, no span."""
    options = Options(system="toy")
    metadata = {
        "jobtrace-version": "1",
        "jobtrace-job-id": "child-1",
        "jobtrace-parent-job-id": "parent-1",
        "jobtrace-root-job-id": "root-1",
        "jobtrace-depth": "2",
        "jobtrace-attempt": "3",
    }
    options.record_unrun(
        metadata,
        name="Child",
        job_id="child-1",
        state=JobState.CANCELLED,
        reason="revoked",
        queue="q",
    )
    options.record_unrun(
        "not a mapping", name="Orphan", job_id="orphan-1", state=JobState.CRASHED, reason="died"
    )

    child, orphan = telemetry.records
    assert (child.kind, child.state, child.reason) == ("finished", JobState.CANCELLED, "revoked")
    assert (child.parent_job_id, child.root_job_id, child.depth) == ("parent-1", "root-1", 2)
    assert (child.attempt, child.queue, child.system, child.host) == (3, "q", "toy", None)
    assert (orphan.root_job_id, orphan.depth, orphan.attempt) == ("orphan-1", 0, 1)
    assert telemetry.spans() == []


def test_read_job_metadata_reads_what_integrations_need(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lineage keys as values; a malformed one is dropped with a warning naming the job."""
    read = read_job_metadata(
        {"jobtrace-version": "1", "jobtrace-job-id": "a", "jobtrace-attempt": "2"},
        name="Fetch",
        job_id="a",
    )
    assert read == JobMetadata(job_id="a", attempt=2)
    assert read.info(job_id="a", name="Fetch", system="toy").root_job_id == "a"
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        bad = read_job_metadata(
            {"jobtrace-version": "1", "jobtrace-depth": "deep"}, name="Fetch", job_id="b-7"
        )
    assert bad.depth is None
    assert "b-7" in caplog.text


def test_import_integration_says_which_extra_to_install() -> None:
    """A missing queue library: ModuleNotFoundError naming the extra; another module's: as it was."""
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'jobtrace\[toy\]'") as missing:
        import_integration(
            "toy_queue_not_installed",
            library="Toy",
            extra="toy",
            packages=("toy_queue_not_installed",),
        )
    assert missing.value.name == "toy_queue_not_installed"
    with pytest.raises(ModuleNotFoundError, match="No module named") as other:
        import_integration("toy_queue_not_installed", library="Toy", extra="toy", packages=("x",))
    assert "pip install" not in str(other.value)
