"""Test helpers: capture the spans, metrics and lineage records your jobs emit, in memory.

    from jobtrace.testing import capture_telemetry

    def test_import_counts_movies() -> None:
        with capture_telemetry() as telemetry:
            run_import()  # your code, calling jobtrace.trace_job / prepare_enqueue
        (span,) = telemetry.process_spans("ImportMovies")
        assert span.attributes["jobtrace.items.processed"] == 3

With pytest, import the fixture into your ``conftest.py``::

    from jobtrace.testing import jobtrace_telemetry  # noqa: F401

and take ``jobtrace_telemetry`` as an argument.

How the globals are swapped: OpenTelemetry lets a process set its tracer and meter providers only
once. Like ``opentelemetry-test-utils``' ``TestBase``, :func:`capture_telemetry` resets the API's
private set-once guards (``opentelemetry.trace._TRACER_PROVIDER_SET_ONCE`` and friends) to install
its own providers; unlike it, it saves the previous values and puts them back on exit, so an
application's providers (or none) are in place again afterwards. Two caveats follow from relying
on those private names: they are pinned to the OpenTelemetry API versions jobtrace supports, and a
``ProxyTracer`` that some library obtained *before* any provider was set binds to the first real
provider it sees, which may be the capture's. jobtrace's own tracer is looked up per provider and
is not affected. The swap is process-wide: do not run captures concurrently in one process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import propagate
from opentelemetry import trace as trace_api
from opentelemetry.metrics import _internal as metrics_api
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    DataPointT,
    InMemoryMetricReader,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import SpanKind
from opentelemetry.util._once import Once

from jobtrace import records
from jobtrace._internal import config
from jobtrace.records import JobRecord

__all__ = ["CapturedTelemetry", "capture_telemetry"]


@dataclass
class CapturedTelemetry:
    """What jobs emitted while :func:`capture_telemetry` was active.

    Attributes:
        exporter: Receives every finished span (through a ``SimpleSpanProcessor``).
        metric_reader: Collects the metrics on demand.
        records: Every :class:`~jobtrace.records.JobRecord` emitted, in order.
        tracer_provider: The provider installed for the capture; add processors to it to test
            your own exporters.
        meter_provider: The meter provider installed for the capture.
    """

    exporter: InMemorySpanExporter
    metric_reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    records: list[JobRecord] = field(default_factory=list)
    _metrics_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def spans(self) -> list[ReadableSpan]:
        """Every finished span so far, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def process_spans(self, name: str | None = None) -> list[ReadableSpan]:
        """The finished job spans (``process <name>``), of one job name if given."""
        return self._spans_of_kind(SpanKind.CONSUMER, name)

    def send_spans(self, name: str | None = None) -> list[ReadableSpan]:
        """The finished enqueue spans (``send <name>``), of one job name if given."""
        return self._spans_of_kind(SpanKind.PRODUCER, name)

    def _spans_of_kind(self, kind: SpanKind, name: str | None) -> list[ReadableSpan]:
        return [
            span
            for span in self.exporter.get_finished_spans()
            if span.kind is kind
            and (name is None or (span.attributes or {}).get("jobtrace.job.name") == name)
        ]

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called ``name``; fails listing the names seen otherwise."""
        found = [span for span in self.exporter.get_finished_spans() if span.name == name]
        if len(found) != 1:
            names = sorted(span.name for span in self.exporter.get_finished_spans())
            raise AssertionError(f"{len(found)} spans named {name!r}; spans: {names}")
        return found[0]

    def metrics(self) -> MetricsData | None:
        """Collect the metrics now (cumulative since the capture began)."""
        with self._metrics_lock:
            return self.metric_reader.get_metrics_data()

    def metric_points(self, name: str) -> list[DataPointT]:
        """The data points of the metric called ``name``, one per attribute set."""
        data = self.metrics()
        points: list[DataPointT] = []
        if data is None:
            return points
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points

    def clear(self) -> None:
        """Forget the spans and records seen so far (metrics stay cumulative)."""
        self.exporter.clear()
        self.records.clear()


@dataclass
class _Saved:
    trace_once: Once
    trace_provider: Any
    trace_proxy: Any
    meter_once: Once
    meter_provider: Any
    meter_proxy: Any


def _install(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> _Saved:
    """Swap in fresh set-once guards and our providers; return what was there."""
    saved = _Saved(
        trace_once=trace_api._TRACER_PROVIDER_SET_ONCE,
        trace_provider=trace_api._TRACER_PROVIDER,
        trace_proxy=trace_api._PROXY_TRACER_PROVIDER,
        meter_once=metrics_api._METER_PROVIDER_SET_ONCE,
        meter_provider=metrics_api._METER_PROVIDER,
        meter_proxy=metrics_api._PROXY_METER_PROVIDER,
    )
    trace_api._TRACER_PROVIDER_SET_ONCE = Once()
    trace_api._TRACER_PROVIDER = None
    trace_api._PROXY_TRACER_PROVIDER = trace_api.ProxyTracerProvider()
    # A fresh proxy, so meters handed out before the capture are not bound to our provider.
    metrics_api._METER_PROVIDER_SET_ONCE = Once()
    metrics_api._METER_PROVIDER = None
    metrics_api._PROXY_METER_PROVIDER = metrics_api._ProxyMeterProvider()
    trace_api.set_tracer_provider(tracer_provider)
    metrics_api.set_meter_provider(meter_provider)
    return saved


def _restore(saved: _Saved) -> None:
    trace_api._TRACER_PROVIDER_SET_ONCE = saved.trace_once
    trace_api._TRACER_PROVIDER = saved.trace_provider
    trace_api._PROXY_TRACER_PROVIDER = saved.trace_proxy
    metrics_api._METER_PROVIDER_SET_ONCE = saved.meter_once
    metrics_api._METER_PROVIDER = saved.meter_provider
    metrics_api._PROXY_METER_PROVIDER = saved.meter_proxy


@contextmanager
def capture_telemetry(
    *,
    sampler: Sampler | None = None,
    id_generator: IdGenerator | None = None,
    propagator: TextMapPropagator | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Iterator[CapturedTelemetry]:
    """Install in-memory tracer and meter providers and a record sink for the ``with`` block.

    On exit the previous global providers, propagator and jobtrace settings are back, whatever
    the block changed (``jobtrace.configure(relationship=...)`` included), so tests stay
    independent.

    Args:
        sampler: The capture's sampler, e.g. ``ALWAYS_OFF`` to check what happens unsampled.
        id_generator: Deterministic ids, if wanted.
        propagator: A global text-map propagator for the block (B3, a custom one).
        settings: jobtrace settings for the block, as for ``configure()``.

    Yields:
        The captured telemetry, filling up as jobs run.
    """
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(
        sampler=sampler, id_generator=id_generator, shutdown_on_exit=False
    )
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    captured = CapturedTelemetry(
        exporter=exporter,
        metric_reader=reader,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    saved_settings = config.get_settings()
    saved_propagator = propagate.get_global_textmap()
    sink = captured.records.append
    saved = _install(tracer_provider, meter_provider)
    records.add_sink(sink)
    try:
        if propagator is not None:
            propagate.set_global_textmap(propagator)
        if settings:
            config.update_settings(**settings)
        yield captured
    finally:
        records.remove_sink(sink)
        _restore(saved)
        propagate.set_global_textmap(saved_propagator)
        config._settings = saved_settings


try:
    import pytest
except ModuleNotFoundError:  # pragma: no cover - the context manager works without pytest
    pass
else:

    @pytest.fixture
    def jobtrace_telemetry() -> Iterator[CapturedTelemetry]:
        """A pytest fixture around :func:`capture_telemetry` with the default options."""
        with capture_telemetry() as telemetry:
            yield telemetry

    __all__ += ["jobtrace_telemetry"]
