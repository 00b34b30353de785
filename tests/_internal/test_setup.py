"""``configure()``: providers, exporters and instrumentation, each in a fresh interpreter.

OpenTelemetry's global providers can be set once per process, so every test that lets
``configure()`` install one runs a small script in a subprocess and reads back what it printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

PRELUDE = """
import json, os, sys
import jobtrace
from opentelemetry import metrics, trace

def processors():
    # The ones that export: jobtrace's span tally (counts for the exit summary) aside.
    provider = trace.get_tracer_provider()
    found = provider._active_span_processor._span_processors
    # A hand-off processor wraps the batch processor that exports.
    return [getattr(p, "inner", p) for p in found if type(p).__name__ != "SpanTally"]

def report(**values):
    print(json.dumps(values), flush=True)
"""


def _run(script: str, **env: str) -> tuple[dict[str, Any], str]:
    """Run ``script`` after the prelude without inherited OTEL_* variables; its report and stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "JOBTRACE_"))}
    clean.update(env, PYTHONIOENCODING="utf-8", JOBTRACE_RECORD="0")
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), done.stderr


def test_configure_installs_a_tracer_provider_when_none_is_set() -> None:
    """With no provider set, ``configure()`` installs an SDK TracerProvider with the service name."""
    report, _ = _run(
        """
        before = type(trace.get_tracer_provider()).__name__
        jobtrace.configure(service_name="cinema-sync")
        provider = trace.get_tracer_provider()
        report(before=before, after=type(provider).__name__,
               service=provider.resource.attributes.get("service.name"))
        """
    )
    assert report == {
        "before": "ProxyTracerProvider",
        "after": "TracerProvider",
        "service": "cinema-sync",
    }


def test_configure_never_replaces_an_installed_provider() -> None:
    """A provider the application installed stays, across repeated ``configure()`` calls."""
    report, _ = _run(
        """
        from opentelemetry.sdk.trace import TracerProvider
        mine = TracerProvider()
        trace.set_tracer_provider(mine)
        jobtrace.configure()
        jobtrace.configure(relationship="link")
        report(same=trace.get_tracer_provider() is mine, processors=len(processors()),
               relationship=jobtrace.get_settings().relationship)
        """
    )
    assert report == {"same": True, "processors": 0, "relationship": "link"}


def test_otlp_endpoint_selects_the_otlp_exporter() -> None:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` (with headers) gives batched OTLP spans and OTLP metrics."""
    report, _ = _run(
        """
        jobtrace.configure()
        (processor,) = processors()
        exporter = processor.span_exporter
        client = getattr(exporter, "_client", exporter)
        report(processor=type(processor).__name__,
               exporter=f"{type(exporter).__module__}.{type(exporter).__name__}",
               endpoint=getattr(client, "_endpoint", None),
               headers=dict(getattr(client, "_headers", None) or {}),
               meter_provider=type(metrics.get_meter_provider()).__name__)
        os._exit(0)  # skip the exit-time export: no network in this test
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",
        OTEL_EXPORTER_OTLP_HEADERS="x-honeycomb-team=abc123",
    )
    assert report["processor"] == "BatchSpanProcessor"
    assert report["exporter"].endswith("http.trace_exporter.OTLPSpanExporter")
    assert report["endpoint"] == "http://127.0.0.1:4318/v1/traces"
    assert report["headers"]["x-honeycomb-team"] == "abc123"
    assert report["meter_provider"] == "MeterProvider"


def test_otlp_grpc_protocol_selects_the_grpc_exporter() -> None:
    """``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` selects the gRPC span exporter."""
    report, _ = _run(
        """
        jobtrace.configure()
        (processor,) = processors()
        report(exporter=type(processor.span_exporter).__module__)
        os._exit(0)
        """,
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
    )
    assert "grpc" in report["exporter"]


def test_without_an_endpoint_a_summary_line_per_job_goes_to_stderr() -> None:
    """Without OTLP each job span prints one summary line on stderr; send spans print nothing."""
    _, stderr = _run(
        """
        jobtrace.configure()
        meta = jobtrace.prepare_enqueue("Resize")
        with jobtrace.trace_job(meta, name="Resize", job_id="img-1"):
            pass
        try:
            with jobtrace.trace_job(None, name="Broken"):
                raise ValueError("x")
        except ValueError:
            pass
        """
    )
    lines = [line for line in stderr.splitlines() if line.startswith("jobtrace ")]
    assert len(lines) == 2, stderr
    assert lines[0].startswith("jobtrace ✓ process Resize succeeded")
    assert "job=img-1" in lines[0]
    assert "trace=" in lines[0]
    assert lines[1].startswith("jobtrace ✗ process Broken failed")


def test_console_false_and_exporter_none_print_nothing() -> None:
    """``console=False`` or ``OTEL_TRACES_EXPORTER=none`` turn the summary off."""
    script = """
        jobtrace.configure(console={console})
        with jobtrace.trace_job(None, name="Quiet"):
            pass
        report(processors=len(processors()))
        """
    report, stderr = _run(script.format(console=False))
    assert report == {"processors": 0}
    assert "jobtrace " not in stderr
    report, stderr = _run(script.format(console=True), OTEL_TRACES_EXPORTER="none")
    assert report == {"processors": 0}
    assert "jobtrace " not in stderr


def test_instrument_sqlalchemy_nests_queries_under_the_job() -> None:
    """``instrument_sqlalchemy=True`` makes a job's own SQLite query a child of its job span."""
    report, stderr = _run(
        """
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        jobtrace.configure(instrument_sqlalchemy=True)
        jobtrace.configure(instrument_sqlalchemy=True)  # twice: still one span per query
        import sqlalchemy
        engine = sqlalchemy.create_engine("sqlite://")
        with jobtrace.trace_job(None, name="Query"):
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("select 1"))
        spans = exporter.get_finished_spans()
        job = [s for s in spans if s.name == "process Query"][0]
        queries = [s for s in spans if s.kind == trace.SpanKind.CLIENT]
        report(names=sorted(q.name for q in queries),
               parents=[q.parent.span_id if q.parent else None for q in queries],
               job=job.context.span_id)
        """
    )
    queries = [name for name in report["names"] if name != "connect"]
    assert len(queries) == 1, (report, stderr)  # configured twice, still traced once
    assert report["parents"] == [report["job"]] * len(report["names"])


def test_configure_survives_a_broken_lineage_store() -> None:
    """A lineage store that cannot start costs a warning; tracing is configured regardless."""
    report, stderr = _run(
        """
        jobtrace.configure(record=True, database_url="nosuchdialect://nowhere")
        report(provider=type(trace.get_tracer_provider()).__name__)
        """
    )
    assert report == {"provider": "TracerProvider"}
    assert "lineage recording is off" in stderr


def test_jobtrace_record_0_turns_recording_off() -> None:
    """``JOBTRACE_RECORD=0`` skips the lineage store entirely (no warning about it)."""
    _, stderr = _run(
        """
        jobtrace.configure(database_url="nosuchdialect://nowhere")
        """,
        JOBTRACE_RECORD="0",
    )
    assert "lineage" not in stderr
