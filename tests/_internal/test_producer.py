"""The enqueue side: send spans, the metadata they write, and how child traces relate to them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

import jobtrace
from jobtrace._internal import metadata as md
from jobtrace._internal.config import update_settings
from jobtrace.testing import CapturedTelemetry

T = TypeVar("T")
LINEAGE = (
    "jobtrace.job.id",
    "jobtrace.job.parent_id",
    "jobtrace.job.root_id",
    "jobtrace.job.depth",
)


def _pipeline(relationship: str | None = None) -> dict[str, Any]:
    """Parent → child → grandchild, each enqueued from inside the job before it.

    Baggage is attached only while the parent job runs, so a child that sees it got it from the
    metadata, not from the test's own context.
    """
    seen: dict[str, Any] = {}
    with jobtrace.trace_job(None, name="Parent"):
        token = otel_context.attach(baggage.set_baggage("request.id", "req-7"))
        try:
            child_meta = jobtrace.prepare_enqueue("Child", relationship=relationship)  # type: ignore[arg-type]
        finally:
            otel_context.detach(token)
    with jobtrace.trace_job(child_meta, name="Child"):
        seen["child_baggage"] = baggage.get_baggage("request.id")
        grandchild_meta = jobtrace.prepare_enqueue("Grandchild", relationship=relationship)  # type: ignore[arg-type]
    with jobtrace.trace_job(grandchild_meta, name="Grandchild"):
        seen["grandchild_baggage"] = baggage.get_baggage("request.id")
    seen["child_meta"] = child_meta
    seen["grandchild_meta"] = grandchild_meta
    return seen


def _one(items: Iterable[T]) -> T:
    (item,) = items
    return item


def _attrs(span: ReadableSpan) -> Mapping[str, Any]:
    return span.attributes or {}


def _check_lineage(telemetry: CapturedTelemetry) -> None:
    parent = _one(telemetry.process_spans("Parent"))
    child = _one(telemetry.process_spans("Child"))
    grandchild = _one(telemetry.process_spans("Grandchild"))
    for span in (child, grandchild):
        assert all(key in _attrs(span) for key in LINEAGE)
    root_id = _attrs(parent)["jobtrace.job.id"]
    assert _attrs(parent)["jobtrace.job.depth"] == 0
    assert "jobtrace.job.parent_id" not in _attrs(parent)
    assert _attrs(child)["jobtrace.job.parent_id"] == root_id
    assert _attrs(grandchild)["jobtrace.job.parent_id"] == _attrs(child)["jobtrace.job.id"]
    assert _attrs(child)["jobtrace.job.root_id"] == root_id
    assert _attrs(grandchild)["jobtrace.job.root_id"] == root_id
    assert [_attrs(child)["jobtrace.job.depth"], _attrs(grandchild)["jobtrace.job.depth"]] == [1, 2]


def test_child_relationship_builds_one_trace_with_correct_parents(
    telemetry: CapturedTelemetry,
) -> None:
    """Under ``child`` each process span's parent is its send span, whose parent is the job before."""
    seen = _pipeline()
    spans = telemetry.spans()
    assert len({span.context.trace_id for span in spans}) == 1
    parent = _one(telemetry.process_spans("Parent"))
    for name, enqueuer in (("Child", parent), ("Grandchild", None)):
        send = _one(telemetry.send_spans(name))
        process = _one(telemetry.process_spans(name))
        assert process.parent is not None
        assert process.parent.span_id == send.context.span_id
        enqueuer = enqueuer or _one(telemetry.process_spans("Child"))
        assert send.parent is not None
        assert send.parent.span_id == enqueuer.context.span_id
        assert send.kind is SpanKind.PRODUCER
        assert process.kind is SpanKind.CONSUMER
    assert parent.parent is None
    assert seen["child_baggage"] == "req-7"
    _check_lineage(telemetry)


def test_link_relationship_starts_new_traces_linked_to_the_producer(
    telemetry: CapturedTelemetry,
) -> None:
    """Under ``link`` each job is a new trace linked to its send span; baggage still travels."""
    seen = _pipeline("link")
    parent = _one(telemetry.process_spans("Parent"))
    child = _one(telemetry.process_spans("Child"))
    grandchild = _one(telemetry.process_spans("Grandchild"))
    assert len({s.context.trace_id for s in (parent, child, grandchild)}) == 3
    for name, process in (("Child", child), ("Grandchild", grandchild)):
        send = _one(telemetry.send_spans(name))
        assert process.parent is None
        link = _one(process.links)
        assert link.context.span_id == send.context.span_id
        assert link.context.trace_id == send.context.trace_id
        assert (link.attributes or {})["jobtrace.link.type"] == "producer"
        assert _attrs(process)["jobtrace.relationship"] == "link"
    assert seen["child_baggage"] == "req-7"
    assert seen["grandchild_baggage"] == "req-7"
    _check_lineage(telemetry)


def test_none_relationship_writes_no_trace_context(telemetry: CapturedTelemetry) -> None:
    """Under ``none`` jobs start unrelated traces, without links or baggage, lineage intact."""
    seen = _pipeline("none")
    parent = _one(telemetry.process_spans("Parent"))
    child = _one(telemetry.process_spans("Child"))
    grandchild = _one(telemetry.process_spans("Grandchild"))
    assert len({s.context.trace_id for s in (parent, child, grandchild)}) == 3
    assert child.parent is None
    assert grandchild.parent is None
    assert not child.links
    assert not grandchild.links
    assert seen["child_baggage"] is None
    assert "traceparent" not in seen["child_meta"]
    assert "baggage" not in seen["child_meta"]
    assert seen["child_meta"][md.KEY_RELATIONSHIP] == "none"
    _check_lineage(telemetry)


def test_lineage_keys_follow_the_contract(telemetry: CapturedTelemetry) -> None:
    """The metadata of an enqueue holds every required key of docs/metadata.md as a string."""
    with jobtrace.trace_job(None, name="Parent", job_id="p-1"):
        meta = jobtrace.prepare_enqueue("Child", job_id="c-1", queue="default")
    assert all(isinstance(value, str) for value in meta.values())
    assert meta[md.KEY_VERSION] == "1"
    assert meta[md.KEY_JOB_ID] == "c-1"
    assert meta[md.KEY_PARENT_JOB_ID] == "p-1"
    assert meta[md.KEY_ROOT_JOB_ID] == "p-1"
    assert meta[md.KEY_DEPTH] == "1"
    assert float(meta[md.KEY_ENQUEUED_AT]) > 0
    assert meta[md.KEY_RELATIONSHIP] == "child"
    send = _one(telemetry.send_spans("Child"))
    assert _attrs(send)["messaging.destination.name"] == "default"
    assert _attrs(send)["messaging.operation.type"] == "send"
    assert send.name == "send Child"


def test_root_enqueue_is_its_own_root() -> None:
    """An enqueue outside any job makes a depth-0 root whose root id is its own id."""
    meta = jobtrace.prepare_enqueue("Cron", job_id="cron-1")
    assert meta[md.KEY_ROOT_JOB_ID] == "cron-1"
    assert meta[md.KEY_DEPTH] == "0"
    assert md.KEY_PARENT_JOB_ID not in meta


def _relationship_of(meta: Mapping[str, str]) -> str:
    return meta[md.KEY_RELATIONSHIP]


def test_relationship_is_set_globally(telemetry: CapturedTelemetry) -> None:
    """``configure(relationship=...)`` and ``update_settings`` change the default relationship."""
    jobtrace.configure(relationship="link", record=False)
    assert _relationship_of(jobtrace.prepare_enqueue("A")) == "link"
    update_settings(relationship="none")
    meta = jobtrace.prepare_enqueue("A")
    assert _relationship_of(meta) == "none"
    assert "traceparent" not in meta


def test_relationship_is_set_per_job_name(telemetry: CapturedTelemetry) -> None:
    """A per-name relationship applies to that job name only."""
    jobtrace.configure(relationship_by_name={"Audit": "none"}, record=False)
    assert _relationship_of(jobtrace.prepare_enqueue("Audit")) == "none"
    assert _relationship_of(jobtrace.prepare_enqueue("Other")) == "child"


def test_relationship_is_set_per_enqueue_call(telemetry: CapturedTelemetry) -> None:
    """The relationship passed to one enqueue wins over the global and per-name policy."""
    update_settings(relationship="none", relationship_by_name={"Audit": "none"})
    assert _relationship_of(jobtrace.prepare_enqueue("Audit", relationship="link")) == "link"
    with jobtrace.Enqueue("Audit", relationship="child") as enqueue:
        pass
    assert _relationship_of(enqueue.metadata) == "child"
    assert "traceparent" in enqueue.metadata


def test_fanout_past_the_threshold_switches_to_link(telemetry: CapturedTelemetry) -> None:
    """A parent's enqueues past ``link_after_fanout`` become ``link``; earlier ones stay ``child``."""
    update_settings(link_after_fanout=3)
    with jobtrace.trace_job(None, name="Sync"):
        metas = [jobtrace.prepare_enqueue("Page") for _ in range(5)]
    assert [_relationship_of(m) for m in metas] == ["child"] * 3 + ["link"] * 2
    with jobtrace.trace_job(metas[-1], name="Page"):
        pass
    page = _one(telemetry.process_spans("Page"))
    assert page.parent is None
    assert (_one(page.links).attributes or {})["jobtrace.link.type"] == "producer"


def test_fanout_counts_per_parent_job() -> None:
    """The fan-out count starts again for each parent job."""
    update_settings(link_after_fanout=1)
    for _ in range(2):
        with jobtrace.trace_job(None, name="Sync"):
            metas = [jobtrace.prepare_enqueue("Page") for _ in range(2)]
        assert [_relationship_of(m) for m in metas] == ["child", "link"]


def test_delay_past_the_threshold_switches_to_link() -> None:
    """A job delayed past ``link_after_delay`` becomes ``link``; a short delay stays ``child``."""
    update_settings(link_after_delay=60.0)
    assert _relationship_of(jobtrace.prepare_enqueue("Later", delay=30)) == "child"
    assert _relationship_of(jobtrace.prepare_enqueue("Later", delay=61)) == "link"
    update_settings(link_after_delay=None)
    assert _relationship_of(jobtrace.prepare_enqueue("Later", delay=10**6)) == "child"


def test_automatic_link_never_overrides_an_explicit_child() -> None:
    """An explicit ``child`` on the call is kept even past the fan-out and delay thresholds."""
    update_settings(link_after_fanout=0, link_after_delay=1.0)
    with jobtrace.trace_job(None, name="Sync"):
        meta = jobtrace.prepare_enqueue("Page", delay=100, relationship="child")
    assert _relationship_of(meta) == "child"


def test_send_failure_marks_the_send_span(telemetry: CapturedTelemetry) -> None:
    """An exception inside ``Enqueue`` marks the send span ERROR and propagates unchanged."""
    error = ConnectionError("broker down")
    with pytest.raises(ConnectionError) as caught, jobtrace.Enqueue("Job", queue="q"):
        raise error
    assert caught.value is error
    send = _one(telemetry.send_spans("Job"))
    assert send.status.status_code is StatusCode.ERROR
    assert _attrs(send)["error.type"] == "ConnectionError"
    assert [event.name for event in send.events] == ["exception"]


def test_enqueue_writes_into_the_given_carrier() -> None:
    """``Enqueue(carrier=...)`` writes into the queue's own mapping and keeps its keys."""
    headers: dict[str, Any] = {"existing": 1}
    with jobtrace.Enqueue("Job", carrier=headers, job_id="j-9") as enqueue:
        assert enqueue.metadata is headers
    assert headers["existing"] == 1
    assert headers[md.KEY_JOB_ID] == "j-9"


class _CustomPropagator(TextMapPropagator):
    """A made-up single-header format, to prove nothing assumes W3C Trace Context."""

    KEY = "x-custom-trace"

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        values = getter.get(carrier, self.KEY)
        if not values:
            return context or Context()
        trace_id, _, span_id = values[0].partition(":")
        try:
            span_context = SpanContext(
                int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(1)
            )
        except ValueError:
            return context or Context()
        return trace.set_span_in_context(NonRecordingSpan(span_context), context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            setter.set(
                carrier, self.KEY, f"{span_context.trace_id:032x}:{span_context.span_id:016x}"
            )

    @property
    def fields(self) -> set[str]:
        return {self.KEY}


def test_global_propagator_is_honoured(telemetry: CapturedTelemetry) -> None:
    """With a custom global propagator its key is written, not ``traceparent``, and the child joins."""
    propagate.set_global_textmap(_CustomPropagator())
    with jobtrace.trace_job(None, name="Parent"):
        meta = jobtrace.prepare_enqueue("Child")
    assert "traceparent" not in meta
    assert _CustomPropagator.KEY in meta
    with jobtrace.trace_job(meta, name="Child"):
        pass
    send = _one(telemetry.send_spans("Child"))
    child = _one(telemetry.process_spans("Child"))
    parent = _one(telemetry.process_spans("Parent"))
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent is not None
    assert child.parent.span_id == send.context.span_id


def test_enqueue_survives_a_broken_propagator(
    telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A propagator that raises costs a warning, never the enqueue; lineage keys are still written."""

    class Broken(_CustomPropagator):
        def inject(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("broken propagator")

    propagate.set_global_textmap(Broken())
    with caplog.at_level("WARNING", logger="jobtrace"):
        meta = jobtrace.prepare_enqueue("Job")
    assert meta[md.KEY_JOB_ID]
    assert meta[md.KEY_DEPTH] == "0"
    assert any("injecting trace context" in r.getMessage() for r in caplog.records)
    assert _one(telemetry.send_spans("Job")).end_time is not None


@pytest.mark.parametrize("parented", [False, True])
def test_the_send_record_is_the_one_its_job_info_makes(
    telemetry: CapturedTelemetry, parented: bool
) -> None:
    """The send's record, built from its fields, is ``records.enqueued`` of the job's JobInfo."""
    from jobtrace import records

    def send() -> dict[str, str]:
        return jobtrace.prepare_enqueue(
            "Child", queue="q", args={"page": 2}, delay=5.0, system="sys"
        )

    if parented:
        with jobtrace.trace_job({}, name="Parent", job_id="parent-1"):
            metadata = send()
    else:
        metadata = send()
    record = next(r for r in telemetry.records if r.kind == "enqueued" and r.name == "Child")
    span = telemetry.span("send Child")
    assert span.context is not None
    info = records.JobInfo(
        job_id=metadata["jobtrace-job-id"],
        name="Child",
        root_job_id=metadata["jobtrace-root-job-id"],
        depth=int(metadata["jobtrace-depth"]),
        queue="q",
        parent_job_id="parent-1" if parented else None,
        system="sys",
        trace_id=f"{span.context.trace_id:032x}",
    )
    assert record.enqueued_at is not None
    assert record.due_at == pytest.approx(record.enqueued_at + 5.0)
    expected = records.enqueued(
        info, at=record.enqueued_at, args='{"page":2}', due_at=record.due_at
    )
    assert record == expected
    assert type(record) is records.JobRecord
    assert record.enqueued_at == pytest.approx(float(metadata["jobtrace-enqueued-at"]), abs=1e-6)
