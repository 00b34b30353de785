"""The tracer, the job metrics, and flushing at the end of a job."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import jobtrace
from jobtrace._internal import telemetry as tel
from jobtrace.testing import CapturedTelemetry, capture_telemetry


def _points(telemetry: CapturedTelemetry, name: str) -> list[Any]:
    return list(telemetry.metric_points(name))


def _point_attributes(points: list[Any]) -> list[dict[str, Any]]:
    return sorted((dict(p.attributes) for p in points), key=lambda a: sorted(a.items()))


def test_job_metrics_by_name_queue_and_outcome(telemetry: CapturedTelemetry) -> None:
    """Duration, queue wait and outcome metrics are attributed by job name, queue and outcome."""
    for fail in (False, False, True):
        meta = jobtrace.prepare_enqueue("Fetch", queue="io")
        try:
            with jobtrace.trace_job(meta, name="Fetch", queue="io"):
                if fail:
                    raise TimeoutError
        except TimeoutError:
            pass
    duration: list[Any] = telemetry.metric_points("messaging.process.duration")
    assert _point_attributes(duration) == [
        {
            "messaging.system": "jobtrace",
            "messaging.operation.name": "process",
            "jobtrace.job.name": "Fetch",
            "messaging.destination.name": "io",
            "jobtrace.job.outcome": o,
            **({"error.type": "TimeoutError"} if o == "failed" else {}),
        }
        for o in ("failed", "succeeded")
    ]
    assert sum(p.count for p in duration) == 3
    waits: list[Any] = telemetry.metric_points("jobtrace.job.queue_wait")
    (wait,) = waits
    assert dict(wait.attributes) == {
        "jobtrace.job.name": "Fetch",
        "messaging.destination.name": "io",
    }
    assert wait.count == 3
    assert wait.min >= 0
    outcomes = {
        dict(p.attributes)["jobtrace.job.outcome"]: p.value
        for p in _points(telemetry, "jobtrace.job.outcomes")
    }
    assert outcomes == {"succeeded": 2, "failed": 1}


def test_no_queue_wait_without_an_enqueue_time(telemetry: CapturedTelemetry) -> None:
    """A job without ``jobtrace-enqueued-at`` records no queue wait and no queue attribute."""
    with jobtrace.trace_job(None, name="Cron"):
        pass
    assert telemetry.metric_points("jobtrace.job.queue_wait") == []
    (point,) = _points(telemetry, "jobtrace.job.outcomes")
    assert dict(point.attributes) == {
        "jobtrace.job.name": "Cron",
        "jobtrace.job.outcome": "succeeded",
    }


def test_tracer_follows_the_global_provider() -> None:
    """The cached tracer is reused for one provider and replaced when the provider changes."""
    with capture_telemetry() as first:
        tracer = tel.tracer()
        assert tel.tracer() is tracer
        with jobtrace.trace_job(None, name="A"):
            pass
    with capture_telemetry() as second:
        assert tel.tracer() is not tracer
        with jobtrace.trace_job(None, name="B"):
            pass
    assert [s.name for s in first.spans()] == ["process A"]
    assert [s.name for s in second.spans()] == ["process B"]


@pytest.fixture
def batched(telemetry: CapturedTelemetry) -> Iterator[InMemorySpanExporter]:
    """An exporter behind a BatchSpanProcessor that would wait a minute before exporting."""
    exporter = InMemorySpanExporter()
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
    telemetry.tracer_provider.add_span_processor(processor)
    try:
        yield exporter
    finally:
        processor.shutdown()  # type: ignore[no-untyped-call]


def test_flush_true_exports_at_job_end(batched: InMemorySpanExporter) -> None:
    """``trace_job(..., flush=True)`` pushes the batch out before the job returns."""
    with jobtrace.trace_job(None, name="Default"):
        pass
    assert batched.get_finished_spans() == ()
    with jobtrace.trace_job(None, name="Flushed", flush=True):
        pass
    assert [s.name for s in batched.get_finished_spans()] == ["process Default", "process Flushed"]


def test_flush_on_job_end_setting(batched: InMemorySpanExporter) -> None:
    """``configure(flush_on_job_end=True)`` flushes after every job; ``flush=False`` opts out."""
    jobtrace.configure(flush_on_job_end=True, record=False)
    with jobtrace.trace_job(None, name="NotFlushed", flush=False):
        pass
    assert batched.get_finished_spans() == ()
    with jobtrace.trace_job(None, name="Flushed"):
        pass
    assert len(batched.get_finished_spans()) == 2


def test_flush_survives_a_raising_provider(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``flush`` logs a provider whose ``force_flush`` raises and still returns."""

    class Broken:
        def force_flush(self, timeout_millis: int) -> bool:
            raise RuntimeError("exporter gone")

    monkeypatch.setattr(trace, "get_tracer_provider", Broken)
    jobtrace.flush(0.1)
    assert any("flushing" in r.getMessage() for r in caplog.records if r.name == "jobtrace")


def test_a_forked_child_knows_it_was_forked() -> None:
    """After ``fork`` the child reports ``in_forked_child()`` and the parent does not."""
    script = textwrap.dedent(
        """
        import os, sys
        from jobtrace._internal.telemetry import in_forked_child
        assert not in_forked_child()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if in_forked_child() else 1)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    if not hasattr(__import__("os"), "fork"):
        pytest.skip("no fork on this platform")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_a_forked_child_counts_only_its_own_outcomes() -> None:
    """The outcome counts a child inherits at ``fork`` are the parent's: the child starts at zero."""
    script = textwrap.dedent(
        """
        import os, sys
        import jobtrace
        from jobtrace.testing import capture_telemetry

        def outcomes(telemetry):
            return {
                dict(p.attributes)["jobtrace.job.outcome"]: p.value
                for p in telemetry.metric_points("jobtrace.job.outcomes")
            }

        with capture_telemetry() as telemetry:
            for _ in range(3):
                with jobtrace.trace_job(None, name="Parent"):
                    pass
            pid = os.fork()
            if pid == 0:
                with jobtrace.trace_job(None, name="Child"):
                    pass
                counts = outcomes(telemetry)
                names = {
                    dict(p.attributes)["jobtrace.job.name"]
                    for p in telemetry.metric_points("jobtrace.job.outcomes")
                }
                os._exit(0 if counts == {"succeeded": 1} and names == {"Child"} else 1)
            _, status = os.waitpid(pid, 0)
            assert outcomes(telemetry) == {"succeeded": 3}, outcomes(telemetry)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    if not hasattr(__import__("os"), "fork"):
        pytest.skip("no fork on this platform")
    # Without the hand-off, which would count the child's job in the parent (test_forkchannel).
    env = {**os.environ, "JOBTRACE_HANDOFF": "0"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, env=env)


def _outcome_counts(telemetry: CapturedTelemetry) -> dict[str, int]:
    return {
        dict(p.attributes)["jobtrace.job.name"]: p.value
        for p in _points(telemetry, "jobtrace.job.outcomes")
    }


def test_outcome_counts_survive_a_provider_coming_back() -> None:
    """A provider installed again (A, B, A) keeps counting: the SDK keeps its first callback."""
    with capture_telemetry() as first:
        with jobtrace.trace_job(None, name="Counted"):
            pass
        with capture_telemetry() as second:
            with jobtrace.trace_job(None, name="Counted"):
                pass
            assert _outcome_counts(second) == {"Counted": 1}  # only what ran since it came
        for _ in range(2):
            with jobtrace.trace_job(None, name="Counted"):
                pass
        # One tally per process: the first provider counts every run since it was registered.
        assert _outcome_counts(first) == {"Counted": 4}


def _run_script(body: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    return result.stdout


def test_outcome_counts_of_a_provider_installed_after_the_first_job() -> None:
    """Jobs before the application installs its meter provider do not hide the later ones."""
    out = _run_script(
        """
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        import jobtrace

        with jobtrace.trace_job(None, name="Early"):
            pass
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        for _ in range(5):
            with jobtrace.trace_job(None, name="Late"):
                pass
        counts = {}
        for resource in reader.get_metrics_data().resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "jobtrace.job.outcomes":
                        for point in metric.data.data_points:
                            counts[dict(point.attributes)["jobtrace.job.name"]] = point.value
        print(counts.get("Late"))
        """
    )
    assert out.strip() == "5"


def test_fork_while_another_thread_counts_does_not_hang_the_child() -> None:
    """The child never waits on the tally's lock, which a thread of the parent may hold."""
    if not hasattr(__import__("os"), "fork"):
        pytest.skip("no fork on this platform")
    out = _run_script(
        """
        import os, threading, time
        from jobtrace._internal.telemetry import OUTCOMES

        held = threading.Event()

        def count_slowly():  # a thread inside OutcomeTally.add() at the moment of fork
            with OUTCOMES._lock:
                held.set()
                time.sleep(5)

        threading.Thread(target=count_slowly, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            OUTCOMES.add((("jobtrace.job.name", "Child"),))
            os._exit(0)
        for _ in range(40):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
        print("exited" if done else "hung")
        """
    )
    assert out.strip() == "exited"
