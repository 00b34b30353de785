"""``jobtrace.testing``: captures what jobs emit and puts every global back afterwards."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import metrics, propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import jobtrace
from jobtrace import records
from jobtrace._internal.config import get_settings
from jobtrace.testing import CapturedTelemetry, capture_telemetry
from jobtrace.testing import jobtrace_telemetry as jobtrace_telemetry  # registers the fixture


def test_capture_installs_and_restores_the_global_providers() -> None:
    """Inside, the capture's providers are global; afterwards the previous ones are back."""
    tracer_before = trace.get_tracer_provider()
    meter_before = metrics.get_meter_provider()
    with capture_telemetry() as telemetry:
        assert trace.get_tracer_provider() is telemetry.tracer_provider
        assert metrics.get_meter_provider() is telemetry.meter_provider
        with jobtrace.trace_job(None, name="Inside"):
            pass
    assert trace.get_tracer_provider() is tracer_before
    assert metrics.get_meter_provider() is meter_before
    with jobtrace.trace_job(None, name="Outside"):
        pass
    assert [s.name for s in telemetry.spans()] == ["process Inside"]


def test_captures_nest() -> None:
    """An inner capture sees only its own spans and gives the outer one back on exit."""
    with capture_telemetry() as outer:
        with capture_telemetry() as inner, jobtrace.trace_job(None, name="Inner"):
            pass
        assert trace.get_tracer_provider() is outer.tracer_provider
        with jobtrace.trace_job(None, name="Outer"):
            pass
    assert [s.name for s in inner.spans()] == ["process Inner"]
    assert [s.name for s in outer.spans()] == ["process Outer"]


def test_capture_restores_settings_propagator_and_sinks() -> None:
    """Settings, the propagator and the record sink set up inside do not outlive the capture."""
    settings = get_settings()
    propagator = propagate.get_global_textmap()
    sinks = records._sinks
    replacement: TextMapPropagator = TraceContextTextMapPropagator()
    with capture_telemetry(propagator=replacement, settings={"relationship": "none"}) as telemetry:
        assert propagate.get_global_textmap() is replacement
        assert get_settings().relationship == "none"
        jobtrace.configure(relationship="link", record=False)
        assert len(records._sinks) == len(sinks) + 1
    assert get_settings() is settings
    assert propagate.get_global_textmap() is propagator
    assert records._sinks == sinks
    assert telemetry.records == []


def test_capture_restores_globals_after_an_exception() -> None:
    """Globals are restored even when the block raises."""
    tracer_before = trace.get_tracer_provider()
    with pytest.raises(RuntimeError), capture_telemetry(settings={"error_on_retry": True}):
        raise RuntimeError("test failure")
    assert trace.get_tracer_provider() is tracer_before
    assert get_settings().error_on_retry is False


def test_capture_collects_records_and_metrics() -> None:
    """Records arrive in order; metric points are found by name; ``clear`` forgets spans."""
    with capture_telemetry() as telemetry:
        meta = jobtrace.prepare_enqueue("Job")
        with jobtrace.trace_job(meta, name="Job"):
            pass
        assert [r.kind for r in telemetry.records] == ["enqueued", "started", "finished"]
        points: list[Any] = telemetry.metric_points("jobtrace.job.outcomes")
        (point,) = points
        assert point.value == 1
        assert telemetry.metric_points("no.such.metric") == []
        assert len(telemetry.send_spans("Job")) == 1
        assert telemetry.process_spans("Other") == []
        telemetry.clear()
        assert telemetry.spans() == []
        assert telemetry.records == []


def test_capture_with_a_sampler() -> None:
    """``sampler=ALWAYS_OFF`` exports no spans while records still arrive."""
    with (
        capture_telemetry(sampler=ALWAYS_OFF) as telemetry,
        jobtrace.trace_job(None, name="Unsampled"),
    ):
        pass
    assert telemetry.spans() == []
    assert len(telemetry.records) == 2


def test_span_lookup_names_what_it_saw() -> None:
    """``span(name)`` returns the one span of that name and lists the names when it fails."""
    with capture_telemetry() as telemetry, jobtrace.trace_job(None, name="Job"):
        pass
    assert telemetry.span("process Job").name == "process Job"
    with pytest.raises(AssertionError, match="process Job"):
        telemetry.span("process Missing")


def test_pytest_fixture(jobtrace_telemetry: CapturedTelemetry) -> None:
    """The importable ``jobtrace_telemetry`` fixture captures the test's jobs."""
    assert trace.get_tracer_provider() is jobtrace_telemetry.tracer_provider
    with jobtrace.trace_job(None, name="Fixture"):
        pass
    assert len(jobtrace_telemetry.process_spans("Fixture")) == 1
