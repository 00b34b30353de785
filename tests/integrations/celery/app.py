"""The worker module: ``celery -A tests.integrations.celery.app worker -Q <queue>``.

Reads ``JOBTRACE_CELERY_BROKER`` (``redis`` or ``rabbitmq``) and ``JOBTRACE_CELERY_QUEUE``; spans go
to ``JOBTRACE_TEST_SPANS`` (held in a one-minute batch when ``JOBTRACE_CELERY_BATCH_SPANS=1``, so
only a flush gets them out), lineage to ``JOBTRACE_DATABASE_URL``.
``JOBTRACE_CELERY_INSTRUMENT`` is ``jobtrace`` (default), ``contrib``, ``both`` or ``none``; with
``contrib`` and ``both``, contrib is instrumented the way its guide says, in ``worker_process_init``,
after jobtrace. ``JOBTRACE_CELERY_FLUSH=0`` turns the flush after each task off.
``JOBTRACE_CELERY_HEARTBEAT`` sets the recorder's heartbeat interval in seconds.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_process_init

from tests.integrations.celery.tasks import make_app
from tests.integrations.harness import SPANS_ENV, JsonLinesSpanExporter, setup_worker_telemetry

if os.environ.get("JOBTRACE_CELERY_BATCH_SPANS") == "1":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    exporter = JsonLinesSpanExporter(os.environ[SPANS_ENV])
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    trace.set_tracer_provider(provider)
setup_worker_telemetry()

if heartbeat := os.environ.get("JOBTRACE_CELERY_HEARTBEAT"):
    from jobtrace.lineage.recorder import start_recorder

    start_recorder(heartbeat_interval=float(heartbeat))

app = make_app(
    os.environ.get("JOBTRACE_CELERY_BROKER", "redis"), os.environ["JOBTRACE_CELERY_QUEUE"]
)
mode = os.environ.get("JOBTRACE_CELERY_INSTRUMENT", "jobtrace")
if mode in ("jobtrace", "both"):
    from jobtrace.integrations.celery import instrument_celery

    flush_env = os.environ.get("JOBTRACE_CELERY_FLUSH")
    instrument_celery(app, flush_on_job_end=None if flush_env is None else flush_env == "1")
if mode in ("contrib", "both"):

    @worker_process_init.connect(weak=False)
    def instrument_contrib(**kwargs: Any) -> None:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
