"""jobtrace: see background-job pipelines.

One OpenTelemetry span per job run, joined across queues into one trace per pipeline run, and every
job run recorded in a SQL lineage store. The enqueue side calls :func:`prepare_enqueue` (or
:class:`Enqueue`); the job side runs under :func:`trace_job` (or :func:`wrap_job`); code inside a job
adds fields with :func:`set_attribute`, :func:`count`, :func:`progress` and friends.
"""

from jobtrace._internal.config import Relationship, Settings, get_settings
from jobtrace._internal.consumer import JobRun, trace_job, wrap_job
from jobtrace._internal.current import (
    add_event,
    cancel,
    count,
    current_job,
    discard,
    progress,
    record_error,
    section,
    set_attribute,
    set_attributes,
    skip,
)
from jobtrace._internal.delivery import TelemetryStatus, telemetry_status
from jobtrace._internal.producer import Enqueue, prepare_enqueue
from jobtrace._internal.setup import configure
from jobtrace._internal.telemetry import flush
from jobtrace._version import __version__
from jobtrace.records import JobInfo, JobState

__all__ = [
    "Enqueue",
    "JobInfo",
    "JobRun",
    "JobState",
    "Relationship",
    "Settings",
    "TelemetryStatus",
    "__version__",
    "add_event",
    "cancel",
    "configure",
    "count",
    "current_job",
    "discard",
    "flush",
    "get_settings",
    "prepare_enqueue",
    "progress",
    "record_error",
    "section",
    "set_attribute",
    "set_attributes",
    "skip",
    "telemetry_status",
    "trace_job",
    "wrap_job",
]
