"""The example's worker class: ``rq worker --worker-class examples.batch_upload.worker.Worker``.

Importing it sets jobtrace up the way an application's worker module does: telemetry (OTLP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else a line per job on stderr), lineage recording into
``JOBTRACE_DATABASE_URL``, and RQ instrumented.
"""

from __future__ import annotations

import rq

import jobtrace
from jobtrace.integrations.rq import instrument_rq

jobtrace.configure(service_name="batch-upload-worker")
instrument_rq()


class Worker(rq.Worker):
    """RQ's forking worker: every job runs in a work horse of its own."""
