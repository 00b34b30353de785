"""The worker app: ``rq worker --worker-class tests.integrations.rq.worker.Worker <queue>``.

Importing it sets up the test telemetry (spans to ``JOBTRACE_TEST_SPANS``, lineage to
``JOBTRACE_DATABASE_URL``) and instruments RQ, as an application's worker module would;
``JOBTRACE_RQ_INSTRUMENT=0`` leaves jobtrace out.
"""

from __future__ import annotations

import os

import rq

from jobtrace.integrations.rq import instrument_rq
from tests.integrations.harness import setup_worker_telemetry

setup_worker_telemetry()
if os.environ.get("JOBTRACE_RQ_INSTRUMENT", "1") == "1":
    instrument_rq()


class Worker(rq.Worker):
    """RQ's forking worker: one work horse per job."""


class SimpleWorker(rq.SimpleWorker):
    """RQ's worker that runs jobs in its own process."""


class SpawnWorker(rq.SpawnWorker):
    """RQ's worker that starts a fresh interpreter (``posix_spawn``) per job."""
