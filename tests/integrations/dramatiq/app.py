"""The worker app: ``dramatiq tests.integrations.dramatiq.app --queues <queue>``.

Reads ``JOBTRACE_DRAMATIQ_BROKER`` (``redis`` or ``rabbitmq``) and ``JOBTRACE_DRAMATIQ_QUEUE``; spans go
to ``JOBTRACE_TEST_SPANS`` (batched when ``JOBTRACE_DRAMATIQ_BATCH_SPANS=1``), lineage to
``JOBTRACE_DATABASE_URL``. ``JOBTRACE_DRAMATIQ_INSTRUMENT=0`` leaves jobtrace out.
"""

from __future__ import annotations

import os

import dramatiq

from jobtrace.integrations.dramatiq import instrument_dramatiq
from tests.integrations.dramatiq.actors import declare_actors, make_broker
from tests.integrations.harness import SPANS_ENV, JsonLinesSpanExporter, setup_worker_telemetry

if os.environ.get("JOBTRACE_DRAMATIQ_BATCH_SPANS") == "1":
    # Spans wait in a batch for a minute: only the flush at worker shutdown writes them out.
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    exporter = JsonLinesSpanExporter(os.environ[SPANS_ENV])
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    trace.set_tracer_provider(provider)
setup_worker_telemetry()
broker = make_broker(os.environ.get("JOBTRACE_DRAMATIQ_BROKER", "redis"))
dramatiq.set_broker(broker)
if os.environ.get("JOBTRACE_DRAMATIQ_INSTRUMENT", "1") == "1":
    instrument_dramatiq(broker)
actors = declare_actors(broker, os.environ["JOBTRACE_DRAMATIQ_QUEUE"])
