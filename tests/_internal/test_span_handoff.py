"""Spans of forked children reach the parent's exporter whole, and the child exports nothing."""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, SpanKind, StatusCode

from jobtrace._internal import forkchannel
from jobtrace._internal.span_handoff import HandoffSpanProcessor, decode, encode


class Kept(SpanExporter):
    """Keeps what it is given; in a forked child, leaves a mark instead (it must not be used)."""

    def __init__(self, marker: Path) -> None:
        self.spans: list[ReadableSpan] = []
        self.owner = os.getpid()
        self.marker = marker

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if os.getpid() != self.owner:
            self.marker.write_text("a child exported")
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TracerProvider, Kept, HandoffSpanProcessor]]:
    forkchannel.reset()
    exporter = Kept(tmp_path / "child-exported")
    processor = HandoffSpanProcessor(SimpleSpanProcessor(exporter))
    provider = TracerProvider(resource=Resource({"service.name": "horse-test"}))
    provider.add_span_processor(processor)
    yield provider, exporter, processor
    provider.shutdown()
    forkchannel.reset()


def job_spans(provider: TracerProvider, n: int) -> None:
    tracer = provider.get_tracer("test", "1.0")
    with tracer.start_as_current_span("process Outer", kind=SpanKind.CONSUMER) as outer:
        outer.set_attribute("jobtrace.job.id", f"job-{n}")
        outer.set_attribute("jobtrace.job.args", '{"ids":[1,2,3]}')
        with tracer.start_as_current_span(
            "section", links=[Link(outer.get_span_context(), {"why": "test"})]
        ) as inner:
            inner.add_event("retry", {"jobtrace.job.attempt": 2})
            inner.record_exception(ValueError("boom"))
            inner.set_status(StatusCode.ERROR, "boom")


def test_a_childs_spans_reach_the_parents_exporter_whole(
    setup: tuple[TracerProvider, Kept, HandoffSpanProcessor],
) -> None:
    provider, exporter, _ = setup
    job_spans(provider, 0)  # the parent's own, exported as usual
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            for n in range(1, 21):
                job_spans(provider, n)
            provider.force_flush(1000)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 10
    while len(exporter.spans) < 42 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not exporter.marker.exists()
    assert len(exporter.spans) == 42
    by_job = {
        span.attributes["jobtrace.job.id"]: span
        for span in exporter.spans
        if span.attributes and "jobtrace.job.id" in span.attributes
    }
    assert sorted(by_job) == sorted(f"job-{n}" for n in range(21))
    sections = [span for span in exporter.spans if span.name == "section"]
    child_section = sections[-1]
    outer = next(s for s in exporter.spans if s.context.span_id == child_section.parent.span_id)
    assert outer.name == "process Outer"
    assert outer.kind is SpanKind.CONSUMER
    assert child_section.status.status_code is StatusCode.ERROR
    assert child_section.status.description == "boom"
    assert [e.name for e in child_section.events] == ["retry", "exception"]
    assert child_section.events[1].attributes["exception.type"] == "ValueError"
    assert child_section.links[0].context.span_id == outer.context.span_id
    assert child_section.links[0].attributes == {"why": "test"}
    assert child_section.resource.attributes["service.name"] == "horse-test"
    assert child_section.instrumentation_scope.name == "test"
    assert child_section.end_time >= child_section.start_time


def test_a_child_exports_itself_when_the_parent_is_gone(
    setup: tuple[TracerProvider, Kept, HandoffSpanProcessor], tmp_path: Path
) -> None:
    """No reader (the channel closed): the child's spans go to its own exporter, not lost."""
    provider, exporter, _ = setup
    job_spans(provider, 0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            forkchannel.close()  # as if the parent's end were gone
            job_spans(provider, 1)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert exporter.marker.exists()  # it exported (in the child) rather than dropping the spans


def test_encode_and_decode_keep_every_field() -> None:
    provider = TracerProvider(resource=Resource({"service.name": "roundtrip"}))
    spans: list[ReadableSpan] = []

    class Collect(SpanExporter):
        def export(self, batch: Sequence[ReadableSpan]) -> SpanExportResult:
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    provider.add_span_processor(SimpleSpanProcessor(Collect()))
    job_spans(provider, 7)
    for span in spans:
        again = decode(encode(span))
        assert again.to_json() == span.to_json()


def test_spans_of_one_resource_decode_to_one_resource() -> None:
    """The parent builds a child's resource once, not per span (it was most of a decode)."""
    provider = TracerProvider(resource=Resource({"service.name": "once", "tags": ["a", "b"]}))
    spans: list[ReadableSpan] = []

    class Collect(SpanExporter):
        def export(self, batch: Sequence[ReadableSpan]) -> SpanExportResult:
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    provider.add_span_processor(SimpleSpanProcessor(Collect()))
    job_spans(provider, 3)
    decoded = [decode(pickle.loads(pickle.dumps(encode(span)))) for span in spans]
    assert len({id(span.resource) for span in decoded}) == 1
    assert decoded[0].resource.attributes == spans[0].resource.attributes


def test_spans_a_child_could_not_send_go_out_with_its_flush(tmp_path: Path) -> None:
    """Behind a batch processor: a span kept in the child is exported by the child's flush."""
    forkchannel.reset()
    exporter = Kept(tmp_path / "child-exported")
    provider = TracerProvider()
    provider.add_span_processor(HandoffSpanProcessor(BatchSpanProcessor(exporter)))
    job_spans(provider, 0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            forkchannel.close()  # every send fails from here on
            job_spans(provider, 1)
            provider.force_flush(5000)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    provider.shutdown()
    forkchannel.reset()
    assert exporter.marker.exists()  # the child exported what it could not hand over
