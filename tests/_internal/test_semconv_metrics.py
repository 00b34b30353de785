"""Telemetry by the OpenTelemetry messaging conventions: metrics as OTLP carries them, span names,
statuses, ``server.*`` and the queue wait of delayed jobs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.trace import StatusCode
from redis import Redis

import jobtrace
from jobtrace import Enqueue, JobRun
from jobtrace._internal import metadata as md
from jobtrace.instrumentation import redis_server
from jobtrace.testing import CapturedTelemetry

# The conventions' advice for the messaging durations (seconds), and jobtrace's for jobs, carried
# on from the conventions' 10 s to an hour.
CONVENTIONS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
JOB_BUCKETS = [*CONVENTIONS_BUCKETS, 30, 60, 120, 300, 600, 1800, 3600]


class SendRefused(Exception):
    """The broker said no."""


def _wire(telemetry: CapturedTelemetry) -> dict[str, Any]:
    """The metrics as an OTLP export request carries them: name to protobuf ``Metric``."""
    data = telemetry.metrics()
    assert data is not None
    request = encode_metrics(data)
    return {
        metric.name: metric
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def _attributes(point: Any) -> dict[str, Any]:
    """A protobuf data point's attributes as a plain dict."""
    values: dict[str, Any] = {}
    for item in point.attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind)
    return values


def _points(metric: Any) -> list[Any]:
    kind = metric.WhichOneof("data")
    return list(getattr(metric, kind).data_points)


def _by_outcome(metric: Any) -> dict[str, dict[str, Any]]:
    return {_attributes(p)["jobtrace.job.outcome"]: _attributes(p) for p in _points(metric)}


@pytest.fixture
def fetched(telemetry: CapturedTelemetry) -> CapturedTelemetry:
    """Two jobs sent to queue ``io`` of broker ``broker.example:5672``: one succeeds, one fails."""
    for fail in (False, True):
        with Enqueue(
            "Fetch", queue="io", system="rq", server_address="broker.example", server_port=5672
        ) as send:
            pass
        try:
            with JobRun(
                send.metadata,
                name="Fetch",
                queue="io",
                system="rq",
                server_address="broker.example",
                server_port=5672,
            ):
                if fail:
                    raise TimeoutError("the page never came")
        except TimeoutError:
            pass
    return telemetry


def test_metric_names_units_and_kinds_on_the_wire(fetched: CapturedTelemetry) -> None:
    """The conventions' four metrics and jobtrace's two, with their units and instrument kinds."""
    wire = _wire(fetched)
    kinds = {name: (metric.unit, metric.WhichOneof("data")) for name, metric in wire.items()}
    assert kinds == {
        "messaging.process.duration": ("s", "histogram"),
        "messaging.client.operation.duration": ("s", "histogram"),
        "messaging.client.sent.messages": ("{message}", "sum"),
        "messaging.client.consumed.messages": ("{message}", "sum"),
        "jobtrace.job.queue_wait": ("s", "histogram"),
        "jobtrace.job.outcomes": ("{job}", "sum"),
    }
    for name in ("messaging.client.sent.messages", "messaging.client.consumed.messages"):
        assert wire[name].sum.is_monotonic


def test_histogram_buckets_on_the_wire_are_for_seconds(fetched: CapturedTelemetry) -> None:
    """Bucket boundaries come from the API's advisory: the conventions' for the send, up to an
    hour for the job and its queue wait (not the SDK's millisecond defaults)."""
    wire = _wire(fetched)
    bounds = {
        name: [list(p.explicit_bounds) for p in _points(wire[name])]
        for name in (
            "messaging.process.duration",
            "messaging.client.operation.duration",
            "jobtrace.job.queue_wait",
        )
    }
    assert bounds["messaging.client.operation.duration"] == [CONVENTIONS_BUCKETS]
    assert bounds["messaging.process.duration"] == [JOB_BUCKETS, JOB_BUCKETS]
    assert bounds["jobtrace.job.queue_wait"] == [JOB_BUCKETS]


def test_process_duration_attributes_on_the_wire(fetched: CapturedTelemetry) -> None:
    """``messaging.process.duration``: the required attributes, the server, ``error.type`` on the
    failure only, and jobtrace's job name and outcome; no ``jobtrace.job.duration`` beside it."""
    wire = _wire(fetched)
    assert "jobtrace.job.duration" not in wire
    common = {
        "messaging.system": "rq",
        "messaging.operation.name": "process",
        "messaging.destination.name": "io",
        "server.address": "broker.example",
        "server.port": 5672,
        "jobtrace.job.name": "Fetch",
    }
    assert _by_outcome(wire["messaging.process.duration"]) == {
        "succeeded": {**common, "jobtrace.job.outcome": "succeeded"},
        "failed": {**common, "jobtrace.job.outcome": "failed", "error.type": "TimeoutError"},
    }
    assert [p.count for p in _points(wire["messaging.process.duration"])] == [1, 1]


def test_client_metric_attributes_on_the_wire(fetched: CapturedTelemetry) -> None:
    """Sends and deliveries are counted and the send timed, with the conventions' attributes."""
    wire = _wire(fetched)
    server = {"server.address": "broker.example", "server.port": 5672}
    (sent,) = _points(wire["messaging.client.sent.messages"])
    assert _attributes(sent) == {
        "messaging.system": "rq",
        "messaging.operation.name": "send",
        "messaging.destination.name": "io",
        **server,
    }
    assert sent.as_int == 2
    (send_duration,) = _points(wire["messaging.client.operation.duration"])
    assert _attributes(send_duration) == {**_attributes(sent), "messaging.operation.type": "send"}
    assert send_duration.count == 2
    (consumed,) = _points(wire["messaging.client.consumed.messages"])
    assert _attributes(consumed) == {
        "messaging.system": "rq",
        "messaging.operation.name": "process",
        "messaging.destination.name": "io",
        **server,
    }
    assert consumed.as_int == 2


def test_a_failed_send_is_counted_and_timed_with_its_error_type(
    telemetry: CapturedTelemetry,
) -> None:
    """A send that raised carries ``error.type`` on both client metrics and on its span, whose
    status description is the message alone."""
    with pytest.raises(SendRefused), Enqueue("Fetch", queue="io"):
        raise SendRefused("queue io is full")
    wire = _wire(telemetry)
    error_type = f"{__name__}.SendRefused"
    (sent,) = _points(wire["messaging.client.sent.messages"])
    assert _attributes(sent)["error.type"] == error_type
    (duration,) = _points(wire["messaging.client.operation.duration"])
    assert _attributes(duration)["error.type"] == error_type
    (span,) = telemetry.send_spans("Fetch")
    assert (span.attributes or {})["error.type"] == error_type
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "queue io is full"


def test_status_descriptions_do_not_repeat_error_type(telemetry: CapturedTelemetry) -> None:
    """A failed job's status says its message; a discarded one's reason is ``error.type`` only."""
    with pytest.raises(ValueError, match="row 7"), jobtrace.trace_job(None, name="Parse"):
        raise ValueError("row 7 has no title")
    with jobtrace.trace_job(None, name="Choosy"):
        jobtrace.discard("movie_not_ready")
    (failed,) = telemetry.process_spans("Parse")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "row 7 has no title"
    (discarded,) = telemetry.process_spans("Choosy")
    assert (discarded.attributes or {})["error.type"] == "movie_not_ready"
    assert discarded.status.status_code is StatusCode.ERROR
    assert discarded.status.description != "movie_not_ready"


def test_queue_wait_of_a_delayed_job_counts_from_its_due_time(
    telemetry: CapturedTelemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job enqueued 3605 s ago with a delay of 3600 s has waited about 5 s, not an hour."""
    real_time = time.time
    with monkeypatch.context() as past:
        past.setattr(time, "time", lambda: real_time() - 3605)
        metadata = jobtrace.prepare_enqueue("Later", queue="io", delay=3600)
    with jobtrace.trace_job(metadata, name="Later", queue="io"):
        pass
    (point,) = telemetry.metric_points("jobtrace.job.queue_wait")
    assert 5 <= point.min <= point.max < 600
    (span,) = telemetry.process_spans("Later")
    assert 5 <= (span.attributes or {})["jobtrace.job.queue_wait_s"] < 600


def test_queue_wait_from_a_foreign_producers_due_time(telemetry: CapturedTelemetry) -> None:
    """``jobtrace-due-at`` written by another producer is read too (contract 1.1)."""
    now = time.time()
    metadata = {
        md.KEY_VERSION: "1.1",
        md.KEY_JOB_ID: "later-1",
        md.KEY_ROOT_JOB_ID: "later-1",
        md.KEY_DEPTH: "0",
        md.KEY_RELATIONSHIP: "child",
        md.KEY_ENQUEUED_AT: f"{now - 7200:.6f}",
        md.KEY_DUE_AT: f"{now - 10:.6f}",
    }
    with jobtrace.trace_job(metadata, name="Later"):
        pass
    (point,) = telemetry.metric_points("jobtrace.job.queue_wait")
    assert 10 <= point.min <= point.max < 600


@pytest.mark.parametrize(
    ("style", "queue", "send_name", "process_name"),
    [
        (None, "io", "send Fetch", "process Fetch"),
        ("job", "io", "send Fetch", "process Fetch"),
        ("conventions", "io", "send io", "process io"),
        ("conventions", None, "send", "process"),
    ],
)
def test_span_names_option(
    telemetry: CapturedTelemetry,
    style: str | None,
    queue: str | None,
    send_name: str,
    process_name: str,
) -> None:
    """``configure(span_names="conventions")`` names spans ``{operation} {destination}``; the
    default keeps the job's name."""
    if style is not None:
        jobtrace.configure(span_names=style, record=False, console=False)
    metadata = jobtrace.prepare_enqueue("Fetch", queue=queue)
    with jobtrace.trace_job(metadata, name="Fetch", queue=queue):
        pass
    assert [span.name for span in telemetry.send_spans("Fetch")] == [send_name]
    assert [span.name for span in telemetry.process_spans("Fetch")] == [process_name]


def test_span_names_option_refuses_other_values() -> None:
    """An unknown span naming style is refused when configured, not at the next job."""
    with pytest.raises(ValueError, match="span_names"):
        jobtrace.configure(span_names="queue", record=False, console=False)  # type: ignore[arg-type]


def test_server_attributes_on_the_spans(telemetry: CapturedTelemetry) -> None:
    """``server.address`` and ``server.port`` go on the send and process spans; a server without
    a port (a Unix socket) gets the address only."""
    with Enqueue("Fetch", server_address="/run/redis.sock") as send:
        pass
    with JobRun(send.metadata, name="Fetch", server_address="10.0.0.5", server_port=6380):
        pass
    (send_span,) = telemetry.send_spans("Fetch")
    assert (send_span.attributes or {})["server.address"] == "/run/redis.sock"
    assert "server.port" not in (send_span.attributes or {})
    (process_span,) = telemetry.process_spans("Fetch")
    assert (process_span.attributes or {})["server.address"] == "10.0.0.5"
    assert (process_span.attributes or {})["server.port"] == 6380


def test_redis_server_reads_the_client_without_connecting() -> None:
    """``redis_server`` gives host and port, or a socket path, from a client's pool settings."""
    assert redis_server(Redis(host="redis.example", port=6390)) == ("redis.example", 6390)
    assert redis_server(Redis(unix_socket_path="/run/redis.sock")) == ("/run/redis.sock", None)
    assert redis_server(object()) is None
