"""Hostile input never costs a job its span or its lineage: the bad part is replaced, not the record.

Each case runs a job through ``trace_job`` (and, where the input can travel that way, through
``LocalQueue``) and checks that the job left a ``process`` span and a ``started`` and a
``finished`` record under one id, with the outcome it really had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

import jobtrace
from jobtrace._internal import metadata as md
from jobtrace._internal.redaction import call_args
from jobtrace.local import LocalQueue
from jobtrace.records import JobRecord, JobState
from jobtrace.testing import CapturedTelemetry


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    """Each test sees its own warnings, not the rate limiter's memory of earlier tests."""
    md._limiter.reset()
    yield
    md._limiter.reset()


class BadRepr:
    """An argument whose ``__repr__`` raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class EvilStr(str):
    """A ``str`` subclass whose every method a reader might call raises."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("no format")

    def lower(self) -> str:  # type: ignore[override]
        raise RuntimeError("no lower")

    def startswith(self, *args: Any) -> bool:  # type: ignore[override]
        raise RuntimeError("no startswith")

    def isprintable(self) -> bool:
        raise RuntimeError("no isprintable")

    def split(self, *args: Any) -> list[str]:  # type: ignore[override]
        raise RuntimeError("no split")

    def __len__(self) -> int:
        raise RuntimeError("no len")


class RaisingIteration(Mapping[str, str]):
    """A mapping whose iteration raises."""

    def __getitem__(self, key: str) -> str:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("no iteration")

    def __len__(self) -> int:
        return 1


class RaisingLookup(Mapping[str, str]):
    """A mapping that lists keys but raises on every lookup (``.items()`` and ``.get`` too)."""

    def __getitem__(self, key: str) -> str:
        raise RuntimeError("no lookup")

    def __iter__(self) -> Iterator[str]:
        return iter([md.KEY_JOB_ID, "traceparent"])

    def __len__(self) -> int:
        return 2


class RaisingItems(dict[str, str]):
    """A dict whose ``items`` and ``get`` raise; its own storage is fine."""

    def items(self) -> Any:
        raise RuntimeError("no items")

    def get(self, *args: Any) -> Any:
        raise RuntimeError("no get")


class UnprintableError(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


HUGE_INT = 10**5000  # past Python's int -> str limit of 4300 digits

HOSTILE_ARGS: dict[str, Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "int of 5001 digits": lambda: ((HUGE_INT,), {"page": 3}),
    "argument whose repr raises": lambda: ((BadRepr(),), {"page": 3}),
    "str-subclass keyword names": lambda: ((), {EvilStr("movie"): 7, "page": 3}),
    "mapping argument whose iteration raises": lambda: ((RaisingIteration(),), {"page": 3}),
    "nested int of 5001 digits": lambda: ((), {"batch": [{"n": HUGE_INT}], "page": 3}),
}

HOSTILE_METADATA: dict[str, Callable[[], object]] = {
    "mapping whose iteration raises": RaisingIteration,
    "mapping whose lookups raise": RaisingLookup,
    "dict whose items and get raise": lambda: RaisingItems({md.KEY_VERSION: "1"}),
    "str-subclass keys": lambda: {EvilStr(md.KEY_JOB_ID): "h-1", EvilStr("traceparent"): "x"},
    "str-subclass values": lambda: {md.KEY_VERSION: EvilStr("1"), md.KEY_DEPTH: EvilStr("0")},
    "control characters in ids": lambda: {
        md.KEY_VERSION: "1",
        md.KEY_JOB_ID: "job\n1",
        md.KEY_PARENT_JOB_ID: "parent\x00",
        md.KEY_ROOT_JOB_ID: "root\x1b[31m",
    },
    "lone surrogates in ids": lambda: {
        md.KEY_VERSION: "1",
        md.KEY_JOB_ID: "job\ud800",
        md.KEY_PARENT_JOB_ID: "\udfffparent",
        md.KEY_ROOT_JOB_ID: "\udfffparent",
    },
}


def _one_job(telemetry: CapturedTelemetry, name: str) -> tuple[ReadableSpan, list[JobRecord]]:
    """The one process span of job ``name`` and its records; fails unless they agree on its id."""
    spans = telemetry.process_spans(name)
    assert len(spans) == 1, f"{len(spans)} process spans of {name}"
    (span,) = spans
    job_id = (span.attributes or {})["jobtrace.job.id"]
    kept = [r for r in telemetry.records if r.name == name]
    assert {r.job_id for r in kept} == {job_id}
    kinds = [r.kind for r in kept]
    assert "started" in kinds
    assert "finished" in kinds
    return span, kept


def _finished(kept: list[JobRecord]) -> JobRecord:
    return next(r for r in kept if r.kind == "finished")


@pytest.mark.parametrize("make", list(HOSTILE_ARGS.values()), ids=list(HOSTILE_ARGS))
def test_hostile_args_through_trace_job(
    make: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]], telemetry: CapturedTelemetry
) -> None:
    """Arguments that cannot be printed leave the job its span and records, the rest recorded."""
    args, kwargs = make()
    with jobtrace.trace_job(None, name="Hostile", args=call_args(args, kwargs)):
        pass
    span, kept = _one_job(telemetry, "Hostile")
    assert _finished(kept).state is JobState.SUCCEEDED
    recorded = str((span.attributes or {})["jobtrace.job.args"])
    assert '"page":3' in recorded
    started = next(r for r in kept if r.kind == "started")
    assert started.args == recorded


@pytest.mark.parametrize("make", list(HOSTILE_ARGS.values()), ids=list(HOSTILE_ARGS))
def test_hostile_args_through_local_queue(
    make: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]], telemetry: CapturedTelemetry
) -> None:
    """The same arguments on the local queue: send span, process span and every record, one id."""
    args, kwargs = make()

    def hostile(*args: Any, **kwargs: Any) -> None:
        return None

    with LocalQueue(1) as queue:
        job_id = queue.enqueue(hostile, *args, **kwargs)
        assert queue.join(timeout=30)
    span, kept = _one_job(telemetry, "hostile")
    assert (span.attributes or {})["jobtrace.job.id"] == job_id
    assert [r.kind for r in kept] == ["enqueued", "started", "finished"]
    assert _finished(kept).state is JobState.SUCCEEDED
    assert len(telemetry.send_spans("hostile")) == 1


@pytest.mark.parametrize("make", list(HOSTILE_METADATA.values()), ids=list(HOSTILE_METADATA))
def test_hostile_metadata_through_trace_job(
    make: Callable[[], object], telemetry: CapturedTelemetry
) -> None:
    """Metadata that raises or lies about being a string leaves the job its span and records."""
    metadata = make()
    names_a_parent = type(metadata) is dict and md.KEY_PARENT_JOB_ID in metadata
    with jobtrace.trace_job(metadata, name="Hostile"):
        info = jobtrace.current_job()
    _, kept = _one_job(telemetry, "Hostile")
    assert _finished(kept).state is JobState.SUCCEEDED
    assert info is not None
    for job_id in (info.job_id, info.parent_job_id, info.root_job_id):
        assert job_id is None or md.is_valid_job_id(job_id), job_id
        assert job_id is None or type(job_id) is str
    if names_a_parent:  # a repairable id is repaired, not dropped: the job stays in its run
        assert info.parent_job_id is not None
        assert info.depth == 1


def test_unprintable_exception_through_trace_job(telemetry: CapturedTelemetry) -> None:
    """An exception whose ``__str__`` raises still ends the job ``failed``, with a marker message."""
    with pytest.raises(UnprintableError), jobtrace.trace_job(None, name="Hostile"):
        raise UnprintableError()
    span, kept = _one_job(telemetry, "Hostile")
    finished = _finished(kept)
    assert finished.state is JobState.FAILED
    assert finished.error_type == f"{__name__}.UnprintableError"
    assert finished.error_message == "<unrepresentable: UnprintableError>"
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events].count("exception") == 1


def test_unprintable_exception_through_local_queue(telemetry: CapturedTelemetry) -> None:
    """On the local queue too, a raising ``__str__`` leaves a ``finished`` record, not ``running``."""

    def hostile() -> None:
        raise UnprintableError()

    with LocalQueue(1) as queue:
        queue.enqueue(hostile, max_attempts=2)
        assert queue.join(timeout=30)
    spans = telemetry.process_spans("hostile")
    assert len(spans) == 2  # a retry, then the final failure
    outcomes = [(r.attempt, r.state) for r in telemetry.records if r.kind == "finished"]
    assert outcomes == [(1, JobState.RETRYING), (2, JobState.FAILED)]


def test_a_queue_id_the_contract_would_repair_keeps_the_run_whole(
    telemetry: CapturedTelemetry,
) -> None:
    """A queue's own id with a control character: producer and worker record the same id."""
    raw = "celery-id\nwith newline"
    meta = jobtrace.prepare_enqueue("Child", job_id=raw)
    with jobtrace.trace_job(meta, name="Child", job_id=raw):
        pass
    ids = {record.job_id for record in telemetry.records}
    assert ids == {md.repair_job_id(raw)}


def test_a_send_that_failed_with_an_unspeakable_error_ends_its_span(
    telemetry: CapturedTelemetry,
) -> None:
    """The send span ends, marked as an error, even when the error cannot say what it is."""
    send = jobtrace.Enqueue("Child")
    send.start()
    send.end(UnprintableError())
    (span,) = telemetry.send_spans("Child")
    assert span.status.status_code is StatusCode.ERROR


def test_record_error_with_an_unspeakable_error_never_reaches_the_job(
    telemetry: CapturedTelemetry,
) -> None:
    """record_error() of an exception whose __str__ raises is an event, not a crash of the job."""
    with jobtrace.trace_job(None, name="Job"):
        jobtrace.record_error(UnprintableError())
    (span,) = telemetry.process_spans("Job")
    assert [event.name for event in span.events] == ["exception"]
