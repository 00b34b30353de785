"""The metadata contract: what is written, what is read back, and what hostile metadata costs."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.trace import SpanContext

import jobtrace
from jobtrace._internal import metadata as md
from jobtrace.testing import CapturedTelemetry

VALID_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    """Each test sees its own warnings, not the rate limiter's memory of earlier tests."""
    md._limiter.reset()
    yield
    md._limiter.reset()


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
    "enqueued-at in the future": {md.KEY_ENQUEUED_AT: "100000000000"},
    "enqueued-at with an exponent": {md.KEY_ENQUEUED_AT: "1e9"},
    "depth is a bool": {md.KEY_VERSION: "1", md.KEY_DEPTH: True},
    "depth of 5001 digits": {md.KEY_VERSION: "1", md.KEY_DEPTH: 10**5000},
    "depth is infinite": {md.KEY_VERSION: "1", md.KEY_DEPTH: float("inf")},
    "unknown relationship": {md.KEY_RELATIONSHIP: "sibling"},
    "previous span malformed": {md.KEY_PREVIOUS_SPAN: "nope"},
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
    metadata = {
        "other": 12,
        "blob": "x" * 100_000,
        3: "int key",
        md.KEY_VERSION: "1",
        md.KEY_JOB_ID: "j",
    }
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


# -- numbers, as JavaScript producers write them ----------------------------------------------------


def _read_quietly(metadata: dict[str, Any], caplog: pytest.LogCaptureFixture) -> md.Incoming:
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        incoming = md.read_metadata(metadata, job_description="job Numbers n-1")
    assert not _jobtrace_warnings(caplog), [r.getMessage() for r in caplog.records]
    return incoming


def test_numeric_keys_accept_json_numbers(caplog: pytest.LogCaptureFixture) -> None:
    """Version, depth, attempt and enqueued-at written as JSON numbers are read like their text."""
    incoming = _read_quietly(
        {
            md.KEY_VERSION: 1,
            md.KEY_JOB_ID: "c-1",
            md.KEY_PARENT_JOB_ID: "p-1",
            md.KEY_ROOT_JOB_ID: "r-1",
            md.KEY_DEPTH: 2,
            md.KEY_ATTEMPT: 3.0,
            md.KEY_ENQUEUED_AT: 1_732_345_678.25,
            md.KEY_RELATIONSHIP: "child",
        },
        caplog,
    )
    assert (incoming.depth, incoming.attempt) == (2, 3)
    assert incoming.enqueued_at == pytest.approx(1_732_345_678.25)
    assert _read_quietly({md.KEY_VERSION: 1.0, md.KEY_DEPTH: 2.0}, caplog).depth == 2


def test_numeric_depth_files_the_job_at_its_level(telemetry: CapturedTelemetry) -> None:
    """``"jobtrace-depth": 2`` (a number) puts the job at depth 2, not at 1 under its parent."""
    metadata = {
        md.KEY_VERSION: "1",
        md.KEY_JOB_ID: "c-2",
        md.KEY_PARENT_JOB_ID: "p-2",
        md.KEY_ROOT_JOB_ID: "r-2",
        md.KEY_DEPTH: 2,
    }
    with jobtrace.trace_job(metadata, name="Grandchild"):
        info = jobtrace.current_job()
    assert info is not None
    assert info.depth == 2
    (started,) = [r for r in telemetry.records if r.kind == "started"]
    assert started.depth == 2


def test_integral_decimal_strings_are_integers(caplog: pytest.LogCaptureFixture) -> None:
    """``"2.0"`` is depth 2 (what a producer with floats writes); leading zeros are harmless."""
    assert _read_quietly({md.KEY_VERSION: "1", md.KEY_DEPTH: "2.0"}, caplog).depth == 2
    assert _read_quietly({md.KEY_VERSION: "1", md.KEY_ATTEMPT: "007"}, caplog).attempt == 7


@pytest.mark.parametrize(
    "value",
    [" 2", "2 ", "+2", "1_0", "1e1", "1.5", "٢", "²", "0x2", "2.", True, False, [2], "9" * 40],
)
def test_integers_follow_one_grammar(value: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Only ASCII decimal digits (an all-zero fraction allowed) are an integer; bools are not."""
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        incoming = md.read_metadata(
            {md.KEY_VERSION: "1", md.KEY_DEPTH: value}, job_description="job Grammar g-1"
        )
    assert incoming.depth is None
    (warning,) = _jobtrace_warnings(caplog)
    assert md.KEY_DEPTH in warning.getMessage()


# -- the contract version ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2", 2, 2.0, "2.1", "3"])
def test_newer_major_version_is_read_with_one_warning_per_process(
    version: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A newer major version's keys are read by version 1's rules, and said once per process."""
    metadata = {
        md.KEY_VERSION: version,
        md.KEY_JOB_ID: "c-3",
        md.KEY_PARENT_JOB_ID: "p-3",
        md.KEY_ROOT_JOB_ID: "r-3",
        md.KEY_DEPTH: "2",
    }
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        for _ in range(3):
            incoming = md.read_metadata(metadata, job_description="job Future")
    assert (incoming.job_id, incoming.parent_job_id, incoming.root_job_id) == ("c-3", "p-3", "r-3")
    assert incoming.depth == 2
    (warning,) = _jobtrace_warnings(caplog)
    message = warning.getMessage()
    assert f"version {str(version).split('.')[0]}" in message
    assert "c-3" in message


def test_missing_version_is_read_as_1_with_a_warning_naming_the_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Lineage keys without ``jobtrace-version`` are read as version 1, with one warning."""
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        incoming = md.read_metadata(
            {md.KEY_JOB_ID: "c-4", md.KEY_PARENT_JOB_ID: "p-4", md.KEY_DEPTH: "1"},
            job_description="job Unversioned",
        )
    assert (incoming.parent_job_id, incoming.depth) == ("p-4", 1)
    (warning,) = _jobtrace_warnings(caplog)
    assert md.KEY_VERSION in warning.getMessage()
    assert "c-4" in warning.getMessage()


def test_missing_version_without_lineage_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Only trace context, or only the retry keys, need no version: no warning."""
    for metadata in (
        {"traceparent": VALID_TRACEPARENT},
        md.retry_metadata(SpanContext(1, 2, is_remote=False), 2),
    ):
        _read_quietly(metadata, caplog)


@pytest.mark.parametrize("version", ["v1", "", "0", "1.x", True, "1" * 40])
def test_malformed_version_is_read_as_1_with_a_warning(
    version: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A version that does not parse costs a warning; the keys are still read as version 1."""
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        incoming = md.read_metadata(
            {md.KEY_VERSION: version, md.KEY_PARENT_JOB_ID: "p-5"}, job_description="job Odd o-1"
        )
    assert incoming.parent_job_id == "p-5"
    (warning,) = _jobtrace_warnings(caplog)
    assert md.KEY_VERSION in warning.getMessage()


# -- job ids ----------------------------------------------------------------------------------------


def test_warning_names_the_job_id_from_the_metadata(
    telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose queue gives no id is named in the warning by the id its metadata carries."""
    metadata = {md.KEY_VERSION: "1", md.KEY_JOB_ID: "c-6", md.KEY_DEPTH: "deep"}
    with (
        caplog.at_level(logging.WARNING, logger="jobtrace"),
        jobtrace.trace_job(metadata, name="Named"),
    ):
        pass
    (warning,) = _jobtrace_warnings(caplog)
    assert "Named" in warning.getMessage()
    assert "c-6" in warning.getMessage()


def _long_id_repair(value: str) -> str:
    digest = hashlib.sha256(value.encode()).hexdigest()
    return f"{value[:190]}~{digest}"


@pytest.mark.parametrize(
    ("raw", "read_as"),
    [
        ("order-42\n", "order-42\\x0a"),
        ("a\x00b", "a\\x00b"),
        ("esc\x1b[31m", "esc\\x1b[31m"),
        ("c1\x85", "c1\\x85"),
        ("line\u2028sep", "line\\u2028sep"),
        ("lone\ud800", "lone\\ud800"),
        ("\udfffx", "\\udfffx"),
        ("x" * 300, _long_id_repair("x" * 300)),
        ("\n" * 100, _long_id_repair("\\x0a" * 100)),
    ],
)
def test_invalid_ids_are_repaired_the_same_way_everywhere(
    raw: str, read_as: str, telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """The reader and the producer repair an invalid id alike, so the run and its row agree."""
    assert md.repair_job_id(raw) == read_as
    assert md.is_valid_job_id(read_as)
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        incoming = md.read_metadata(
            {md.KEY_VERSION: "1", md.KEY_PARENT_JOB_ID: raw, md.KEY_ROOT_JOB_ID: raw},
            job_description="job Repaired",
        )
    assert (incoming.parent_job_id, incoming.root_job_id) == (read_as, read_as)
    assert len(_jobtrace_warnings(caplog)) == 1
    meta = jobtrace.prepare_enqueue("Repaired", job_id=raw)
    assert meta[md.KEY_JOB_ID] == read_as
    with jobtrace.trace_job(meta, name="Repaired"):
        pass
    assert {(r.kind, r.job_id) for r in telemetry.records} == {
        ("enqueued", read_as),
        ("started", read_as),
        ("finished", read_as),
    }


@pytest.mark.parametrize("job_id", ["a\u00a0b", "👨\u200d👩\u200d👧", "\ue000private", "日本-1"])
def test_ids_python_calls_unprintable_are_valid(
    job_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Spaces, joiners and private-use characters are allowed: only the fixed forbidden set is not."""
    incoming = _read_quietly({md.KEY_VERSION: "1", md.KEY_JOB_ID: job_id}, caplog)
    assert incoming.job_id == job_id
    assert jobtrace.prepare_enqueue("Fine", job_id=job_id)[md.KEY_JOB_ID] == job_id


def test_a_caller_id_that_is_no_string_is_replaced_with_a_warning(
    telemetry: CapturedTelemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """``job_id=42`` gets a new string id, with a warning; the metadata names the recorded id."""
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        meta = jobtrace.prepare_enqueue("Numbered", job_id=42)  # type: ignore[arg-type]
    sent = meta[md.KEY_JOB_ID]
    assert type(sent) is str
    assert md.is_valid_job_id(sent)
    (record,) = telemetry.records
    assert record.job_id == sent
    (warning,) = _jobtrace_warnings(caplog)
    assert sent in warning.getMessage()
    assert "Numbered" in warning.getMessage()


def test_empty_caller_id_gets_a_new_one_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """``job_id=""`` is no id: a new one is made without a warning."""
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        meta = jobtrace.prepare_enqueue("Blank", job_id="")
    assert md.is_valid_job_id(meta[md.KEY_JOB_ID])
    assert not _jobtrace_warnings(caplog)


def test_warnings_escape_what_they_quote(caplog: pytest.LogCaptureFixture) -> None:
    """A warning never carries a control character from the metadata or the job's description."""
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        md.read_metadata(
            {md.KEY_VERSION: "1", md.KEY_JOB_ID: "x\r\nFAKE LOG LINE", md.KEY_DEPTH: "\x1b"},
            job_description="job Spoof s-\n1",
        )
    (warning,) = _jobtrace_warnings(caplog)
    assert not any(ch in warning.getMessage() for ch in "\r\n\x1b")


# -- rate limiting ----------------------------------------------------------------------------------


def test_a_flood_of_bad_jobs_is_rate_limited(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A burst of one kind of warning is logged, the rest counted and said in the next window."""
    now = [1000.0]
    monkeypatch.setattr(md._limiter, "clock", lambda: now[0])
    bad = {md.KEY_VERSION: "1", md.KEY_DEPTH: "deep"}
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        for index in range(500):
            md.read_metadata(bad, job_description=f"job Flood f-{index}")
        other = {md.KEY_VERSION: "1", md.KEY_ATTEMPT: "zero"}
        md.read_metadata(other, job_description="job Other o-1")  # another kind: not suppressed
        assert len(_jobtrace_warnings(caplog)) == md._limiter.burst + 1
        now[0] += md._limiter.window
        md.read_metadata(bad, job_description="job Flood f-500")
    warnings = _jobtrace_warnings(caplog)
    assert len(warnings) == md._limiter.burst + 2
    assert "f-500" in warnings[-1].getMessage()
    assert f"{500 - md._limiter.burst} more like it" in warnings[-1].getMessage()


# -- the due time (contract 1.1) ----------------------------------------------------------------


def test_a_delayed_job_carries_its_due_time_as_version_1_1() -> None:
    """``prepare_enqueue(delay=...)`` writes ``jobtrace-due-at`` (enqueued-at + delay) and 1.1."""
    delayed = jobtrace.prepare_enqueue("Later", delay=90)
    assert delayed[md.KEY_VERSION] == "1.1"
    due = float(delayed[md.KEY_DUE_AT])
    assert due == pytest.approx(float(delayed[md.KEY_ENQUEUED_AT]) + 90, abs=1e-3)
    now = jobtrace.prepare_enqueue("Now")
    assert now[md.KEY_VERSION] == "1"
    assert md.KEY_DUE_AT not in now


def test_due_time_reads_back_and_its_number_forms(caplog: pytest.LogCaptureFixture) -> None:
    """``jobtrace-due-at`` reads back as text or a JSON number, quietly, under version 1.1."""
    base = {md.KEY_VERSION: "1.1", md.KEY_JOB_ID: "d-1", md.KEY_ENQUEUED_AT: "1732345678.5"}
    assert _read_quietly({**base, md.KEY_DUE_AT: "1732349278.5"}, caplog).due_at == 1732349278.5
    assert _read_quietly({**base, md.KEY_DUE_AT: 1732349278}, caplog).due_at == 1732349278.0
    assert _read_quietly(base, caplog).due_at is None


def test_a_malformed_due_time_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A due time that is no decimal (or out of range) costs a warning and the due time only."""
    with caplog.at_level(logging.WARNING, logger="jobtrace"):
        incoming = md.read_metadata(
            {md.KEY_VERSION: "1.1", md.KEY_JOB_ID: "d-2", md.KEY_DUE_AT: "tomorrow"},
            job_description="job Later d-2",
        )
    assert incoming.due_at is None
    assert incoming.job_id == "d-2"
    (warning,) = _jobtrace_warnings(caplog)
    assert md.KEY_DUE_AT in warning.getMessage()


def _parent_and_baggage(incoming: md.Incoming) -> tuple[object, object]:
    context = incoming.context
    if context is None:
        return None, None
    return trace.get_current_span(context).get_span_context(), baggage.get_all(context)


WELL_FORMED: list[dict[str, Any]] = [
    {},
    {"traceparent": VALID_TRACEPARENT},
    {"traceparent": VALID_TRACEPARENT, "baggage": "tenant=acme", "other": 3},
    {"baggage": "tenant=acme"},
    {
        "jobtrace-version": "1",
        "jobtrace-job-id": "j-2",
        "jobtrace-root-job-id": "j-0",
        "jobtrace-parent-job-id": "j-1",
        "jobtrace-depth": "2",
        "jobtrace-enqueued-at": "1700000000.250000",
        "jobtrace-relationship": "link",
        "traceparent": VALID_TRACEPARENT,
    },
    {
        "jobtrace-version": "1.1",
        "jobtrace-job-id": "j-3",
        "jobtrace-root-job-id": "j-3",
        "jobtrace-depth": "0",
        "jobtrace-enqueued-at": "1700000000",
        "jobtrace-due-at": "1700003600.5",
        "jobtrace-relationship": "child",
    },
    {"jobtrace-attempt": "3", "jobtrace-previous-span": f"{'ab' * 16}-{'cd' * 8}"},
]


@pytest.mark.parametrize("metadata", WELL_FORMED)
def test_the_fast_reading_of_well_formed_metadata_is_the_checked_one(
    metadata: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Well-formed metadata read the fast way gives every field the checked reading gives."""
    fast = md._read_well_formed(metadata)
    checked = md._read_checked(metadata, "job J")
    assert fast is not None
    assert fast._replace(context=None) == checked._replace(context=None)
    assert _parent_and_baggage(fast) == _parent_and_baggage(checked)
    assert _jobtrace_warnings(caplog) == []


@pytest.mark.parametrize(
    "metadata",
    [
        {"jobtrace-job-id": "j"},  # no version
        {"jobtrace-version": "2", "jobtrace-job-id": "j"},
        {"jobtrace-version": "1", "jobtrace-job-id": "j\n"},
        {"jobtrace-version": "1", "jobtrace-depth": 3},
        {"jobtrace-version": "1", "jobtrace-depth": "-1"},
        {"jobtrace-version": "1", "jobtrace-enqueued-at": "1e9"},
        {"jobtrace-version": "1", "jobtrace-relationship": "sibling"},
        {"jobtrace-previous-span": "nope"},
        {"TraceParent": VALID_TRACEPARENT},
        {"traceparent": "00-garbage"},
        {1: "x"},
    ],
)
def test_anything_unusual_is_left_to_the_checked_reading(metadata: dict[Any, Any]) -> None:
    """Metadata with anything to repair or warn about is not read the fast way."""
    assert md._read_well_formed(metadata) is None


@pytest.mark.parametrize(
    ("metadata", "job_id", "named"),
    [
        ({md.KEY_VERSION: "1", md.KEY_DEPTH: "deep"}, "v-1", "job Victim v-1: "),
        ({md.KEY_VERSION: "1", md.KEY_DEPTH: "deep"}, None, "job Victim: "),
        (["not", "a", "mapping"], "v-2", "job Victim v-2: "),
    ],
)
def test_a_run_s_warning_names_the_job_and_its_queue_s_id(
    metadata: Any, job_id: str | None, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The job is described (only) when its metadata has something to warn about."""
    md._limiter.reset()
    with (
        caplog.at_level(logging.WARNING, logger="jobtrace"),
        jobtrace.trace_job(metadata, name="Victim", job_id=job_id),
    ):
        pass
    (warning,) = _jobtrace_warnings(caplog)
    assert f"malformed metadata of {named}" in warning.getMessage()
