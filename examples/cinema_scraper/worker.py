"""The worker module: ``celery -A examples.cinema_scraper.worker worker -Q pages,...``.

Importing it sets the app and jobtrace up the way an application's Celery module does: the broker
and the run's queues from ``CINEMA_BROKER_URL`` and ``CINEMA_RUN``, telemetry (OTLP when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else a line per task on stderr), lineage recording into
``JOBTRACE_DATABASE_URL``, and Celery instrumented. Prefork children inherit all of it.
"""

from __future__ import annotations

import os

import jobtrace
from examples.cinema_scraper.scraper import DEFAULT_BROKER, app, configure_app
from jobtrace.integrations.celery import instrument_celery

__all__ = ["app"]

configure_app(os.environ.get("CINEMA_BROKER_URL", DEFAULT_BROKER), os.environ.get("CINEMA_RUN", ""))
jobtrace.configure(service_name="cinema-worker")
instrument_celery(app)
