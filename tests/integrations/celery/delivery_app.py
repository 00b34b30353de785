"""The worker module of the delivery tests: ``celery -A tests.integrations.celery.delivery_app``.

jobtrace is set up as a user would: ``jobtrace.configure()`` with its OTLP exporters from
``OTEL_EXPORTER_OTLP_ENDPOINT`` (the tests point it at a fault proxy in front of a fake collector)
and lineage into ``JOBTRACE_DATABASE_URL``, then ``instrument_celery(app)``. The broker is Redis
database ``JOBTRACE_DELIVERY_REDIS`` (a URL), the queue ``JOBTRACE_DELIVERY_QUEUE``.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

import jobtrace
from jobtrace.integrations.celery import instrument_celery

REDIS_URL = os.environ["JOBTRACE_DELIVERY_REDIS"]

jobtrace.configure(service_name="delivery-celery")
app = Celery("delivery", broker=REDIS_URL)
app.conf.update(
    task_default_queue=os.environ["JOBTRACE_DELIVERY_QUEUE"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
instrument_celery(app)
_client: redis.Redis | None = None


@app.task(name="note")  # type: ignore[untyped-decorator]
def note(key: str, index: int, seconds: float = 0.02) -> None:
    """Sleep ``seconds``, then push when it started and ended (``time.time()``) to ``key``."""
    global _client
    started = time.time()
    time.sleep(seconds)
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    entry = {"index": index, "pid": os.getpid(), "started": started, "ended": time.time()}
    _client.rpush(key, json.dumps(entry))
