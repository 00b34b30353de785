"""``configure()``: tracer and meter providers from ``OTEL_*`` variables, lineage recording, policy.

It never replaces a provider the application installed: an application that set up OpenTelemetry
itself (or runs under ``opentelemetry-instrument``) keeps its own, and jobtrace writes into them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, StatusCode

from jobtrace._internal import delivery, forkchannel, semconv, span_handoff
from jobtrace._internal.config import Relationship, get_settings, update_settings
from jobtrace._internal.semconv import SpanNames

logger = logging.getLogger("jobtrace")

_UNSET: Any = object()


class ConsoleSummaryExporter(SpanExporter):
    """One line per job span on stderr: the fallback when no OTLP endpoint is configured."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        stream = self._stream or sys.stderr
        for span in spans:
            if span.kind is not SpanKind.CONSUMER:
                continue
            attributes = span.attributes or {}
            duration_ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            outcome = attributes.get(semconv.JOB_OUTCOME, "?")
            marker = "✗" if span.status.status_code is StatusCode.ERROR else "✓"
            trace_id = f"{span.context.trace_id:032x}" if span.context else "-"
            stream.write(
                f"jobtrace {marker} {span.name} {outcome} {duration_ms:.1f}ms"
                f" job={attributes.get(semconv.JOB_ID, '-')} trace={trace_id}\n"
            )
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _otlp_configured(signal: str) -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


def _protocol(signal: str) -> str:
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )


def _export_timeout(signal: str) -> float | None:
    """How long one export may take, retries included: the exit budget, unless the user chose.

    The SDK's default is 10 s an attempt, retried with back-off within it; an export stuck that
    long holds the batch processor's lock and whatever waits on it.
    """
    if os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT"
    ):
        return None  # the SDK reads the variable
    return max(0.1, get_settings().exit_timeout)


def _otlp_span_exporter() -> SpanExporter:
    timeout = _export_timeout("TRACES")
    if _protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return delivery.watch_exporter(OTLPSpanExporter(timeout=timeout), "traces")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return delivery.watch_exporter(HTTPSpanExporter(timeout=timeout), "traces")


def _install_tracer_provider(resource: Resource, console: bool) -> bool:
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return False
    # jobtrace shuts it down at exit itself, within exit_timeout (the SDK's hook can take minutes).
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    exporter_choice = os.environ.get("OTEL_TRACES_EXPORTER", "")
    if exporter_choice != "none":
        if _otlp_configured("TRACES") or exporter_choice == "otlp":
            provider.add_span_processor(delivery.SpanTally())
            batch = BatchSpanProcessor(_otlp_span_exporter())
            # Forked work horses hand their spans to this process instead of exporting them.
            provider.add_span_processor(
                span_handoff.HandoffSpanProcessor(batch) if forkchannel.enabled() else batch
            )
        elif console:
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSummaryExporter()))
    trace.set_tracer_provider(provider)
    delivery.adopt(provider, "traces")
    return True


def _meter_provider_is_default() -> bool:
    # The API keeps its proxy type private; its name is the stable way to recognise it.
    return type(metrics.get_meter_provider()).__name__ == "_ProxyMeterProvider"


def _install_meter_provider(resource: Resource) -> bool:
    if not _meter_provider_is_default() or not _otlp_configured("METRICS"):
        return False
    if os.environ.get("OTEL_METRICS_EXPORTER", "") == "none":
        return False
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    if _protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
    timeout = _export_timeout("METRICS")
    exporter = delivery.watch_exporter(OTLPMetricExporter(timeout=timeout), "metrics")
    reader = PeriodicExportingMetricReader(exporter, export_timeout_millis=(timeout or 10.0) * 1000)
    provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
    metrics.set_meter_provider(provider)
    delivery.adopt(provider, "metrics")
    return True


def configure(
    *,
    service_name: str | None = None,
    record: bool | None = None,
    database_url: str | None = None,
    instrument_sqlalchemy: bool = False,
    console: bool = True,
    relationship: Relationship = _UNSET,
    relationship_by_name: Mapping[str, Relationship] = _UNSET,
    link_after_fanout: int | None = _UNSET,
    link_after_delay: float | None = _UNSET,
    redact_keys: Sequence[str] = _UNSET,
    max_args_length: int = _UNSET,
    record_args: bool = _UNSET,
    error_on_retry: bool = _UNSET,
    span_names: SpanNames = _UNSET,
    flush_on_job_end: bool | None = _UNSET,
    flush_timeout: float = _UNSET,
    exit_timeout: float = _UNSET,
) -> None:
    """Set jobtrace up in one call; safe to call again (it only changes what it is given).

    Tracing goes to OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces variant) is set,
    headers and protocol from the standard ``OTEL_EXPORTER_OTLP_*`` variables, so Honeycomb or a
    Collector works by environment alone; otherwise a one-line summary per job goes to stderr
    (``console=False`` turns it off). Providers already installed are kept.

    Args:
        service_name: ``service.name``; else ``OTEL_SERVICE_NAME``.
        record: Record every job in the lineage store; default on unless ``JOBTRACE_RECORD=0``.
        database_url: The lineage store; else ``JOBTRACE_DATABASE_URL``, else a local SQLite file.
        instrument_sqlalchemy: Trace the job's own SQLAlchemy queries under its span.
        console: Print a job summary when there is no OTLP endpoint.
        relationship: Default trace relationship of child jobs: ``child``, ``link`` or ``none``.
        relationship_by_name: Per job name relationship overrides.
        link_after_fanout: A parent's enqueues past this count become ``link`` (``None``: never).
        link_after_delay: Jobs delayed longer than this many seconds become ``link``.
        redact_keys: Argument keys never recorded (replaces the default list).
        max_args_length: Longest recorded argument JSON.
        record_args: Record job arguments at all.
        error_on_retry: Give failed attempts that will be retried ERROR status too.
        span_names: ``job`` (default) names spans ``process <job name>``, ``send <job name>``;
            ``conventions`` names them ``process <queue>``, ``send <queue>``.
        flush_on_job_end: Flush at the end of every job (``None``: in forked processes only).
        flush_timeout: Longest a job's end waits for its spans, metrics and records together, in
            seconds (default 1; ``JOBTRACE_FLUSH_TIMEOUT``). An exporter or store that failed is
            then skipped for a while instead of waited for.
        exit_timeout: Longest the process exit waits for them, in seconds (default 3;
            ``JOBTRACE_EXIT_TIMEOUT``); also the OTLP exporters' own timeout per export.
    """
    changes = {
        name: value
        for name, value in (
            ("relationship", relationship),
            ("relationship_by_name", relationship_by_name),
            ("link_after_fanout", link_after_fanout),
            ("link_after_delay", link_after_delay),
            ("redact_keys", redact_keys),
            ("max_args_length", max_args_length),
            ("record_args", record_args),
            ("error_on_retry", error_on_retry),
            ("span_names", span_names),
            ("flush_on_job_end", flush_on_job_end),
            ("flush_timeout", flush_timeout),
            ("exit_timeout", exit_timeout),
        )
        if value is not _UNSET
    }
    if changes:
        update_settings(**changes)
    attributes = {SERVICE_NAME: service_name} if service_name else {}
    resource = Resource.create(attributes)
    _install_tracer_provider(resource, console)
    _install_meter_provider(resource)
    if instrument_sqlalchemy:
        _instrument_sqlalchemy()
    if record is None:
        record = os.environ.get("JOBTRACE_RECORD", "1") != "0"
    if record:
        try:
            from jobtrace.lineage.recorder import start_recorder

            start_recorder(database_url)
        except Exception as error:
            logger.warning("jobtrace: lineage recording is off: %s", error)
    delivery.register_metric()
    # Registered after the recorder's own, so it runs first: one exit budget for everything.
    delivery.arm_exit()


_sqlalchemy_instrumented = False


def _instrument_sqlalchemy() -> None:
    global _sqlalchemy_instrumented
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    instrumentor = SQLAlchemyInstrumentor()
    if _sqlalchemy_instrumented or instrumentor.is_instrumented_by_opentelemetry:
        return
    _sqlalchemy_instrumented = True
    try:
        # Its declared range ends below SQLAlchemy 2.1, which jobtrace supports and it traces
        # fine; with the check it would log an error and instrument nothing.
        instrumentor.instrument(skip_dep_check=True)
    except ImportError as error:
        # It patches ``create_async_engine`` last, and importing ``sqlalchemy.ext.asyncio`` needs
        # greenlet (optional since SQLAlchemy 2.1): by then the sync engine hooks are in place.
        logger.info("jobtrace: async SQLAlchemy engines are not traced: %s", error)
