"""A forked child's job metrics are counted by its parent, and the child exports none itself."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

import jobtrace
from jobtrace._internal import delivery, forkchannel, telemetry
from jobtrace.testing import CapturedTelemetry, capture_telemetry


@pytest.fixture
def captured() -> Iterator[CapturedTelemetry]:
    """In-memory providers, the meter provider taken as one configure() installed."""
    forkchannel.reset()
    with capture_telemetry() as found:
        delivery.adopt(found.meter_provider, "metrics")
        yield found
    delivery.reset()
    forkchannel.reset()


def test_an_applications_own_meter_provider_is_not_handed_off() -> None:
    """Children of a provider the application installed export themselves, their metrics too."""
    forkchannel.reset()
    with capture_telemetry():
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = not forkchannel.handed_off("metrics")
            ok = ok and any(signal == "metrics" for _, signal in delivery._targets(()))
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    forkchannel.reset()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_measurement_that_cannot_be_sent_is_exported_by_the_child(
    captured: CapturedTelemetry,
) -> None:
    """The channel gone: the child records it itself, and its own flush includes metrics again."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            forkchannel.close()  # as if the parent were gone
            with jobtrace.trace_job(None, name="Orphan"):
                pass
            sent_back = any(signal == "metrics" for _, signal in delivery._targets(()))
            code = 0 if sent_back and not forkchannel.handed_off("metrics") else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _total(captured: CapturedTelemetry, name: str) -> float:
    points = captured.metric_points(name)
    return sum(getattr(point, "count", None) or getattr(point, "value", 0) for point in points)


def test_a_horses_job_metrics_reach_the_parent_and_the_horse_exports_none(
    captured: CapturedTelemetry,
) -> None:
    """Ten work horses of one job each: the parent's histogram counts ten, once each."""
    for _ in range(10):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                assert forkchannel.handed_off("metrics")
                assert not any(signal == "metrics" for _, signal in delivery._targets(()))
                with jobtrace.trace_job(None, name="HorseJob", queue="default"):
                    pass
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    deadline = time.monotonic() + 10
    while _total(captured, "messaging.process.duration") < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _total(captured, "messaging.process.duration") == 10
    assert _total(captured, "messaging.client.consumed.messages") == 10
    assert _total(captured, "jobtrace.job.outcomes") == 10
    (point,) = captured.metric_points("messaging.process.duration")
    assert point.attributes["jobtrace.job.name"] == "HorseJob"
    assert point.attributes["jobtrace.job.outcome"] == "succeeded"


def test_without_the_hand_off_a_child_keeps_its_own_metrics(
    captured: CapturedTelemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBTRACE_HANDOFF", "0")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if not forkchannel.handed_off("metrics") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert telemetry.in_forked_child() is False


def test_closing_the_channel_warns_of_nothing_lost(caplog: pytest.LogCaptureFixture) -> None:
    """close() wakes the reader with an empty read: that is the end, not a lost hand-over."""
    forkchannel.reset()
    forkchannel.handle("test", lambda payload: None)
    pid = os.fork()  # opens the channel and starts its reader
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    reader = forkchannel._channel.reader
    assert reader is not None
    with caplog.at_level("WARNING", logger="jobtrace"):
        forkchannel.reset()
        reader.join(5)
    assert not reader.is_alive()
    assert "lost" not in caplog.text
