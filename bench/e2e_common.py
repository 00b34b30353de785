"""What the end-to-end pipeline's workers share: the pipeline's shape, its counter, telemetry setup.

Imported by ``bench/pipeline_e2e.py`` (the producer) and by the worker modules ``e2e_celery`` and
``e2e_rq``, which read their mode from the environment when a worker imports them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from redis import Redis

#: Environment of a worker: its mode, its Redis, its queue, the prefix of its keys, and a folder
#: for cProfile dumps of its work horses or pool children (``--profile``; off when unset).
MODE_ENV, REDIS_ENV, QUEUE_ENV, PREFIX_ENV, PROFILE_ENV = (
    "BENCH_E2E_MODE",
    "BENCH_E2E_REDIS",
    "BENCH_E2E_QUEUE",
    "BENCH_E2E_PREFIX",
    "BENCH_E2E_PROFILE",
)
#: Set to ``1`` (``--celery-no-flush``): Celery's jobtrace workers get ``flush_on_job_end=False``.
NO_FLUSH_ENV = "BENCH_E2E_NO_FLUSH"
#: Modes whose worker installs its own providers with exporters that drop everything.
LOCAL_EXPORT = ("bare", "contrib", "spans", "lineage")
#: Modes that configure jobtrace (``jobtrace.configure`` and the integration's instrument function).
JOBTRACE_MODES = ("spans", "lineage", "healthy", "down")
#: What every job is called with besides the pipeline's own arguments: the redaction and the
#: argument JSON of jobtrace have something to do, as in a real scraper.
JOB_KWARGS: dict[str, Any] = {"source": "example-cinema", "api_key": "k-123", "lang": "en"}

_redis: Redis | None = None


class DropSpanExporter(SpanExporter):
    """Accepts every batch and keeps nothing: the export path runs, no network is needed."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class DropMetricExporter(MetricExporter):
    """Accepts every collection and keeps nothing."""

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def install_local_telemetry() -> None:
    """Global providers as an application sets them up, their exports dropped in process."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropSpanExporter()))
    trace.set_tracer_provider(provider)
    reader = PeriodicExportingMetricReader(DropMetricExporter())
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))


def setup_worker_telemetry(mode: str, service_name: str) -> bool:
    """The worker's telemetry for ``mode``; whether jobtrace is to be instrumented.

    Local-export modes get in-process providers first; then, for jobtrace's modes,
    ``jobtrace.configure`` keeps them, or (``healthy``, ``down``) installs OTLP exporters from
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, and starts the lineage recorder unless ``JOBTRACE_RECORD=0``.
    """
    if mode in LOCAL_EXPORT:
        install_local_telemetry()
    if mode not in JOBTRACE_MODES:
        return False
    import jobtrace

    jobtrace.configure(service_name=service_name, console=False)
    return True


def redis_client() -> Redis:
    """This process's connection to the benchmark's Redis (redis-py reconnects after a fork)."""
    global _redis
    if _redis is None:
        _redis = Redis.from_url(os.environ[REDIS_ENV])
    return _redis


def shape_for(jobs: int) -> tuple[int, int, int]:
    """Fan-outs (pages per root, details per page, items per detail) giving at least ``jobs``."""
    fan = max(1, round(jobs ** (1 / 3)))
    items = max(1, math.ceil((jobs - 1 - fan - fan * fan) / (fan * fan)))
    return fan, fan, items


def total_jobs(shape: Sequence[int]) -> int:
    """Jobs in one pipeline of ``shape``: the root, the pages, the details, the items."""
    pages, details, items = shape
    return 1 + pages + pages * details + pages * details * items


def job_done(key: str, shape: Sequence[int], job_id: str | None = None) -> None:
    """Count a finished job; the last one of the pipeline tells the producer.

    ``job_id`` (RQ) is kept in a list so the producer can read each job's start and end.
    """
    pipe = redis_client().pipeline(transaction=False)
    if job_id is not None:
        pipe.rpush(f"{key}:ids", job_id)
    pipe.incr(key)
    if pipe.execute()[-1] == total_jobs(shape):
        redis_client().rpush(f"{key}:done", 1)
