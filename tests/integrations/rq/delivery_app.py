"""The worker app of the delivery tests: ``rq worker --worker-class <this module>.Worker``.

jobtrace is set up as a user would: ``jobtrace.configure()`` with its OTLP exporters from
``OTEL_EXPORTER_OTLP_ENDPOINT`` (the tests point it at a fault proxy in front of a fake collector)
and lineage into ``JOBTRACE_DATABASE_URL``, then ``instrument_rq()``.
"""

from __future__ import annotations

import json
import os
import time

import rq

import jobtrace
from jobtrace.integrations.rq import instrument_rq

jobtrace.configure(service_name="delivery-rq")
instrument_rq()


class Worker(rq.Worker):
    """RQ's forking worker: one work horse per job."""


def note(key: str, index: int, seconds: float = 0.02) -> None:
    """Sleep ``seconds``, then push when it started and ended (``time.time()``) to ``key``."""
    started = time.time()
    time.sleep(seconds)
    job = rq.get_current_job()
    assert job is not None, "called outside an RQ job"
    entry = {"index": index, "pid": os.getpid(), "started": started, "ended": time.time()}
    job.connection.rpush(key, json.dumps(entry))
