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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.orm import Session

from jobtrace.lineage.models import Attempt, Job
from jobtrace.testing import CapturedTelemetry

SPANS_ENV = "JOBTRACE_TEST_SPANS"
ROOT = Path(__file__).resolve().parents[2]
ACTIVE_STATES = ("queued", "running", "retrying")


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


class _CurrentFileExporter(SpanExporter):
    """Sends the test process's spans to the current spans file, if any."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as stream:
                    for span in spans:
                        stream.write(json.dumps(span_to_dict(span)) + "\n")
        return SpanExportResult.SUCCESS


_exporter = _CurrentFileExporter()
_providers: set[int] = set()


def export_test_spans(path: Path | None) -> None:
    """Send this process's spans to ``path`` from now on (``None``: nowhere)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    if id(provider) not in _providers:
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        _providers.add(id(provider))
    _exporter.path = path


def store_rows(url: str, model: type[Any]) -> list[Any]:
    """Every row of one lineage table; none while the recorder has not created the tables."""
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(model.__tablename__):
            return []
        with Session(engine) as session:
            return list(session.scalars(select(model)))
    finally:
        engine.dispose()


@dataclass(kw_only=True)
class WorkerSetup:
    """What a test of one queue reads back: worker logs, every process's spans, the lineage store."""

    telemetry: CapturedTelemetry
    spans_path: Path
    database_url: str
    workers: list[Worker] = field(default_factory=list)

    def is_job(self, recorded_name: object, name: str) -> bool:
        """Whether a span's ``jobtrace.job.name`` is the job called ``name`` in the tests."""
        return recorded_name == name

    def logs(self) -> str:
        """Every worker's output, for failure messages."""
        return "\n".join(worker.log() for worker in self.workers)

    def spans(self) -> list[dict[str, Any]]:
        """Every finished span: the workers' and this (producer) process's."""
        return read_spans(self.spans_path) + [span_to_dict(s) for s in self.telemetry.spans()]

    def process_spans(self, name: str | None = None) -> list[dict[str, Any]]:
        """The ``process`` spans, of one job if given."""
        return self._of_kind("CONSUMER", name)

    def send_spans(self, name: str | None = None) -> list[dict[str, Any]]:
        """The ``send`` spans, of one job if given."""
        return self._of_kind("PRODUCER", name)

    def _of_kind(self, kind: str, name: str | None) -> list[dict[str, Any]]:
        return [
            span
            for span in self.spans()
            if span["kind"] == kind
            and (name is None or self.is_job(span["attributes"].get("jobtrace.job.name"), name))
        ]

    def jobs(self) -> dict[str, Any]:
        """The lineage store's jobs by id (none while the recorder has not created its tables)."""
        return {row.job_id: row for row in store_rows(self.database_url, Job)}

    def attempts(self, job_id: str) -> list[Any]:
        """One job's attempts in the lineage store, in order."""
        rows = [row for row in store_rows(self.database_url, Attempt) if row.job_id == job_id]
        return sorted(rows, key=lambda row: row.attempt)

    def wait_for_jobs(self, count: int, *, done: bool = True) -> dict[str, Any]:
        """Wait until the store holds ``count`` jobs (all finished, if ``done``)."""

        def ready() -> dict[str, Any] | None:
            jobs = self.jobs()
            if len(jobs) < count:
                return None
            if done and any(job.state in ACTIVE_STATES for job in jobs.values()):
                return None
            return jobs

        try:
            return wait_for(ready, timeout=20, what=f"{count} jobs in the lineage store")  # type: ignore[no-any-return]
        except AssertionError as error:
            states = {job_id: job.state for job_id, job in self.jobs().items()}
            raise AssertionError(f"{error}: {states}\n{self.logs()}") from None
