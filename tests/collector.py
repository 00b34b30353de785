"""A fake OTLP/HTTP collector on loopback: counts the spans and names the metrics it is sent.

Put a :class:`tests.faults.TcpProxy` in front of it to make it refuse, black-hole or pause, and
point the real OTLP HTTP exporter at the proxy (``OTEL_EXPORTER_OTLP_ENDPOINT``).
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class FakeCollector:
    """What an OTLP/HTTP collector received: span and metric names in arrival order, sums."""

    def __init__(self) -> None:
        self.span_names: list[str] = []
        self.metric_names: list[str] = []
        #: The latest value of each sum metric's points, by name and attributes.
        self.sums: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.requests = 0
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                collector._receive(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="collector").start()

    def _receive(self, path: str, body: bytes) -> None:
        with self._lock:
            self.requests += 1
            if path.endswith("/v1/traces"):
                traces = ExportTraceServiceRequest.FromString(body)
                for resource in traces.resource_spans:
                    for scope in resource.scope_spans:
                        self.span_names.extend(span.name for span in scope.spans)
            elif path.endswith("/v1/metrics"):
                request = ExportMetricsServiceRequest.FromString(body)
                for resource_metrics in request.resource_metrics:
                    for scope_metrics in resource_metrics.scope_metrics:
                        for metric in scope_metrics.metrics:
                            self.metric_names.append(metric.name)
                            for point in metric.sum.data_points:
                                attributes = frozenset(
                                    (a.key, a.value.string_value) for a in point.attributes
                                )
                                value = (
                                    point.as_int if point.HasField("as_int") else point.as_double
                                )
                                self.sums[(metric.name, attributes)] = value

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def fake_collector() -> Iterator[FakeCollector]:
    """A :class:`FakeCollector` for the duration of a test."""
    collector = FakeCollector()
    try:
        yield collector
    finally:
        collector.close()
