"""The fields API: what code inside a job writes onto the job's span, and nothing outside one."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import jobtrace
from jobtrace._internal.config import update_settings
from jobtrace.records import JobState
from jobtrace.testing import CapturedTelemetry


def _job_span(telemetry: CapturedTelemetry) -> ReadableSpan:
    (span,) = telemetry.process_spans()
    return span


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_current_job_describes_the_running_job(telemetry: CapturedTelemetry) -> None:
    """``current_job()`` is the running job's identity inside and ``None`` outside."""
    assert jobtrace.current_job() is None
    meta = jobtrace.prepare_enqueue("Job", queue="q", job_id="j-1")
    with jobtrace.trace_job(meta, name="Job", queue="q"):
        info = jobtrace.current_job()
    assert jobtrace.current_job() is None
    assert info is not None
    assert (info.job_id, info.name, info.queue, info.attempt) == ("j-1", "Job", "q", 1)
    assert info.trace_id == f"{_job_span(telemetry).context.trace_id:032x}"


def test_set_attribute_and_attributes(telemetry: CapturedTelemetry) -> None:
    """Custom attributes land on the job span; over-long strings are cut with an ellipsis."""
    update_settings(max_attribute_length=10)
    with jobtrace.trace_job(None, name="Sync"):
        jobtrace.set_attribute("user.email", "ana@example.com")
        jobtrace.set_attributes({"crm.status": 200, "crm.note": "short", "ok": True})
    attributes = _attrs(_job_span(telemetry))
    assert attributes["user.email"] == "ana@exampl…"
    assert (attributes["crm.status"], attributes["crm.note"], attributes["ok"]) == (
        200,
        "short",
        True,
    )


def test_count_adds_up_and_total_is_set(telemetry: CapturedTelemetry) -> None:
    """``count`` increments processed/failed/skipped and sets total; the span gets the sums."""
    with jobtrace.trace_job(None, name="Batch"):
        jobtrace.count(total=10)
        jobtrace.count(processed=2)
        jobtrace.count(processed=3, failed=1)
        jobtrace.count(skipped=4, total=12)
    attributes = _attrs(_job_span(telemetry))
    assert attributes["jobtrace.items.processed"] == 5
    assert attributes["jobtrace.items.failed"] == 1
    assert attributes["jobtrace.items.skipped"] == 4
    assert attributes["jobtrace.items.total"] == 12
    assert telemetry.records[-1].items == {"total": 12, "processed": 5, "failed": 1, "skipped": 4}


def test_progress_adds_events_and_is_clamped(telemetry: CapturedTelemetry) -> None:
    """``progress`` adds an event per call and keeps the last fraction, clamped to [0, 1]."""
    with jobtrace.trace_job(None, name="Upload"):
        jobtrace.progress(3, 10)
        assert telemetry.records[-1].kind == "heartbeat"
        assert telemetry.records[-1].progress == pytest.approx(0.3)
        jobtrace.progress(-0.5)
        assert telemetry.records[-1].progress == 0.0
        jobtrace.progress(25, 10)
    span = _job_span(telemetry)
    events = [e for e in span.events if e.name == "jobtrace.progress"]
    assert [dict(e.attributes or {}) for e in events] == [
        {"done": 3, "total": 10},
        {"done": -0.5},
        {"done": 25, "total": 10},
    ]
    assert _attrs(span)["jobtrace.progress"] == 1.0


def test_add_event(telemetry: CapturedTelemetry) -> None:
    """``add_event`` adds a named event with its attributes to the job span."""
    with jobtrace.trace_job(None, name="Job"):
        jobtrace.add_event("page.fetched", {"page": 3})
    (event,) = [e for e in _job_span(telemetry).events if e.name == "page.fetched"]
    assert dict(event.attributes or {}) == {"page": 3}


def test_record_error_keeps_the_status(telemetry: CapturedTelemetry) -> None:
    """``record_error`` adds an exception event but the job still succeeds with status UNSET."""
    with jobtrace.trace_job(None, name="Job") as run:
        try:
            raise ValueError("bad row")
        except ValueError as error:
            jobtrace.record_error(error, {"row": 7})
    span = _job_span(telemetry)
    (event,) = [e for e in span.events if e.name == "exception"]
    assert (event.attributes or {})["exception.message"] == "bad row"
    assert (event.attributes or {})["row"] == 7
    assert span.status.status_code is StatusCode.UNSET
    assert run.state is JobState.SUCCEEDED


def test_section_nests_under_the_job(telemetry: CapturedTelemetry) -> None:
    """A section is a child span of the job span, and records its exception."""
    with jobtrace.trace_job(None, name="Sync"):
        with jobtrace.section("sync crm", {"service": "crm"}):
            pass
        with pytest.raises(LookupError), jobtrace.section("sync billing"):
            raise LookupError("no invoice")
    job = _job_span(telemetry)
    crm = telemetry.span("sync crm")
    billing = telemetry.span("sync billing")
    assert crm.parent is not None
    assert crm.parent.span_id == job.context.span_id
    assert (crm.attributes or {})["service"] == "crm"
    assert billing.status.status_code is StatusCode.ERROR


def test_fields_api_is_a_silent_no_op_outside_a_job(telemetry: CapturedTelemetry) -> None:
    """Outside a job every field function does nothing: no spans, records or exceptions."""
    jobtrace.set_attribute("a", 1)
    jobtrace.set_attributes({"b": 2})
    jobtrace.count(processed=1, total=2)
    jobtrace.progress(1, 2)
    jobtrace.add_event("e")
    jobtrace.record_error(ValueError("x"))
    assert jobtrace.current_job() is None
    assert telemetry.spans() == []
    assert telemetry.records == []


def test_section_outside_a_job_is_a_plain_span(telemetry: CapturedTelemetry) -> None:
    """A section outside any job is an ordinary root span."""
    with jobtrace.section("standalone"):
        pass
    assert telemetry.span("standalone").parent is None
