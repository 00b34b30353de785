"""Cross-process test harness: real worker subprocesses whose spans land in a JSON-lines file.

A worker process calls :func:`setup_worker_telemetry` at import (it reads ``JOBTRACE_TEST_SPANS``
and ``JOBTRACE_DATABASE_URL`` from its environment); the test reads the spans back with
:func:`read_spans` and the lineage through the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

SPANS_ENV = "JOBTRACE_TEST_SPANS"
ROOT = Path(__file__).resolve().parents[2]


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span; safe across processes (one write per line)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(span)) + "\n" for span in spans)
        with self._lock, open(self._path, "a", encoding="utf-8") as stream:
            stream.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """The parts of a span the tests assert on, as plain JSON."""
    context = span.context
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [
            {"name": event.name, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
        "links": [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
        "pid": os.getpid(),
    }


def setup_worker_telemetry() -> None:
    """In a worker process: spans to the file named by ``JOBTRACE_TEST_SPANS``, lineage recorded."""
    path = os.environ.get(SPANS_ENV)
    if path and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
        trace.set_tracer_provider(provider)


def read_spans(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every span written so far."""
    file = Path(path)
    if not file.exists():
        return []
    spans = []
    for line in file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            spans.append(json.loads(line))
    return spans


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class Worker:
    """A real worker subprocess, its output kept in a log file shown when a test fails."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.log_path = log_path
        full_env = {**os.environ, **env}
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(cwd or ROOT), full_env.get("PYTHONPATH", "")]
        )
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            list(args),
            env=full_env,
            cwd=str(cwd or ROOT),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @classmethod
    def python(
        cls, *args: str, env: Mapping[str, str], log_path: Path, cwd: Path | None = None
    ) -> Worker:
        """A worker started as ``python <args>`` with this interpreter."""
        return cls([sys.executable, *args], env=env, log_path=log_path, cwd=cwd)

    def log(self) -> str:
        """What the worker printed so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the worker's process group (warm shutdown), SIGKILL it if it lingers."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._log.close()
