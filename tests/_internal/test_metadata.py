"""The metadata contract: what is written, what is read back, and what hostile metadata costs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.trace import SpanContext

import jobtrace
from jobtrace._internal import metadata as md
from jobtrace.testing import CapturedTelemetry

VALID_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _jobtrace_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "jobtrace" and r.levelno == logging.WARNING]


def test_written_lineage_reads_back() -> None:
    """Every lineage key written by ``write_lineage`` is read back by ``read_metadata``."""
    carrier: dict[str, str] = {}
    md.write_lineage(
        carrier,
        job_id="j-2",
        parent_job_id="j-1",
        root_job_id="j-0",
        depth=2,
        enqueued_at=1_732_345_678.5,
        relationship="link",
    )
    incoming = md.read_metadata(carrier, job_description="job")
    assert (incoming.job_id, incoming.parent_job_id, incoming.root_job_id) == ("j-2", "j-1", "j-0")
    assert incoming.depth == 2
    assert incoming.enqueued_at == pytest.approx(1_732_345_678.5)
    assert incoming.relationship == "link"
    assert incoming.context is None


def test_trace_context_is_read_through_the_propagator() -> None:
    """A W3C ``traceparent`` (any key case) becomes the remote parent in the read context."""
    for key in ("traceparent", "Traceparent"):
        incoming = md.read_metadata({key: VALID_TRACEPARENT}, job_description="job")
        assert incoming.context is not None, key
        parent = trace.get_current_span(incoming.context).get_span_context()
        assert parent.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736, key
        assert parent.is_remote


def test_span_ref_round_trips() -> None:
    """``format_span_ref`` and ``parse_span_ref`` are inverse; malformed refs give ``None``."""
    context = SpanContext(0xABC, 0xDEF, is_remote=False)
    parsed = md.parse_span_ref(md.format_span_ref(context))
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id) == (0xABC, 0xDEF)
    for bad in (None, "", "abc", "0" * 32 + "-" + "0" * 16, "g" * 32 + "-" + "1" * 16):
        assert md.parse_span_ref(bad) is None


def test_retry_metadata_skips_an_invalid_span() -> None:
    """Retry keys name the next attempt; an invalid span context adds no previous-span key."""
    assert md.retry_metadata(trace.INVALID_SPAN_CONTEXT, 2) == {md.KEY_ATTEMPT: "2"}
    keys = md.retry_metadata(SpanContext(1, 2, is_remote=False), 3)
    assert keys == {md.KEY_ATTEMPT: "3", md.KEY_PREVIOUS_SPAN: f"{1:032x}-{2:016x}"}


def test_missing_metadata_is_a_quiet_root(
    telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """No metadata at all (a cron-started job) is a normal root: no parent and no warning."""
    metadata: dict[str, str] | None
    for metadata in (None, {}):
        with jobtrace.trace_job(metadata, name="Cron"):
            info = jobtrace.current_job()
            assert info is not None
            assert info.depth == 0
            assert info.parent_job_id is None
            assert info.root_job_id == info.job_id
    assert all(span.parent is None for span in telemetry.process_spans("Cron"))
    assert not _jobtrace_warnings(caplog)


HOSTILE: dict[str, Any] = {
    "traceparent wrong version": {"traceparent": "ff" + VALID_TRACEPARENT[2:]},
    "traceparent zero trace id": {"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"},
    "traceparent zero span id": {
        "traceparent": f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01"
    },
    "traceparent wrong length": {"traceparent": VALID_TRACEPARENT[:-5]},
    "traceparent is an int": {"traceparent": 42},
    "traceparent is a list": {"traceparent": [VALID_TRACEPARENT]},
    "traceparent is bytes": {"traceparent": VALID_TRACEPARENT.encode()},
    "1 MB traceparent": {"traceparent": "0" * 1_000_000},
    "1 MB job id": {md.KEY_JOB_ID: "x" * 1_000_000},
    "job id is an int": {md.KEY_JOB_ID: 7},
    "depth is not a number": {md.KEY_DEPTH: "deep"},
    "negative depth": {md.KEY_DEPTH: "-1"},
    "enqueued-at in the future": {md.KEY_ENQUEUED_AT: "1e20"},
    "unknown relationship": {md.KEY_RELATIONSHIP: "sibling"},
    "previous span malformed": {md.KEY_PREVIOUS_SPAN: "nope"},
    "future contract version": {md.KEY_VERSION: "2", md.KEY_PARENT_JOB_ID: "p-1"},
    "metadata is a list": [("traceparent", VALID_TRACEPARENT)],
    "metadata is a string": VALID_TRACEPARENT,
    "metadata is an int": 12,
}


@pytest.mark.parametrize("metadata", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_metadata_runs_the_job_as_a_root_with_one_warning(
    metadata: Any, telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed metadata costs exactly one warning; the job runs as a new trace and lineage root."""
    ran = []
    with (
        caplog.at_level(logging.WARNING, logger="jobtrace"),
        jobtrace.trace_job(metadata, name="Victim", job_id="v-1"),
    ):
        ran.append(jobtrace.current_job())
    assert ran
    assert ran[0] is not None
    assert ran[0].parent_job_id is None
    assert ran[0].depth == 0
    assert ran[0].root_job_id == "v-1"
    (span,) = telemetry.process_spans("Victim")
    assert span.parent is None
    assert (span.attributes or {})["jobtrace.job.outcome"] == "succeeded"
    assert len(_jobtrace_warnings(caplog)) == 1
    assert "Victim" in _jobtrace_warnings(caplog)[0].getMessage()


def test_malformed_trace_context_keeps_valid_lineage_and_baggage(
    telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken ``traceparent`` drops only the trace link: lineage and baggage are kept."""
    metadata = {
        "traceparent": "garbage",
        "baggage": "request.id=req-3",
        md.KEY_VERSION: "1",
        md.KEY_JOB_ID: "c-1",
        md.KEY_PARENT_JOB_ID: "p-1",
        md.KEY_ROOT_JOB_ID: "p-1",
        md.KEY_DEPTH: "1",
    }
    with (
        caplog.at_level(logging.WARNING, logger="jobtrace"),
        jobtrace.trace_job(metadata, name="Child"),
    ):
        seen = baggage.get_baggage("request.id")
        info = jobtrace.current_job()
    assert seen == "req-3"
    assert info is not None
    assert (info.parent_job_id, info.depth) == ("p-1", 1)
    (span,) = telemetry.process_spans("Child")
    assert span.parent is None
    assert len(_jobtrace_warnings(caplog)) == 1


def test_baggage_without_trace_context_is_not_a_problem(caplog: pytest.LogCaptureFixture) -> None:
    """Metadata carrying only baggage (no trace context) is read without a warning."""
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        incoming = md.read_metadata({"baggage": "request.id=req-4"}, job_description="job")
    assert incoming.context is not None
    assert baggage.get_baggage("request.id", incoming.context) == "req-4"
    assert not _jobtrace_warnings(caplog)


def test_unknown_keys_are_ignored_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """Keys that are not ours or the propagator's may hold anything, without a warning."""
    metadata = {"other": 12, "blob": "x" * 100_000, 3: "int key", md.KEY_JOB_ID: "j"}
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        incoming = md.read_metadata(metadata, job_description="job")
    assert incoming.job_id == "j"
    assert not _jobtrace_warnings(caplog)


def test_minor_contract_versions_are_accepted(caplog: pytest.LogCaptureFixture) -> None:
    """A ``1.x`` version is read like ``1``; its lineage keys are used."""
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        incoming = md.read_metadata(
            {md.KEY_VERSION: "1.3", md.KEY_PARENT_JOB_ID: "p"}, job_description="job"
        )
    assert incoming.parent_job_id == "p"
    assert not _jobtrace_warnings(caplog)
