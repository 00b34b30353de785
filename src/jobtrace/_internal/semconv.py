"""Attribute and event names written on job spans.

The ``messaging.*`` names follow the OpenTelemetry messaging semantic conventions; ``jobtrace.*``
names carry what the conventions have no word for (lineage, attempts, outcomes, item counts).
"""

from typing import Final

MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
ERROR_TYPE: Final = "error.type"

JOB_ID: Final = "jobtrace.job.id"
JOB_NAME: Final = "jobtrace.job.name"
JOB_PARENT_ID: Final = "jobtrace.job.parent_id"
JOB_ROOT_ID: Final = "jobtrace.job.root_id"
JOB_DEPTH: Final = "jobtrace.job.depth"
JOB_ATTEMPT: Final = "jobtrace.job.attempt"
JOB_ARGS: Final = "jobtrace.job.args"
JOB_OUTCOME: Final = "jobtrace.job.outcome"
JOB_OUTCOME_REASON: Final = "jobtrace.job.outcome_reason"
JOB_WILL_RETRY: Final = "jobtrace.job.will_retry"
JOB_QUEUE_WAIT: Final = "jobtrace.job.queue_wait_s"
JOB_DELAY: Final = "jobtrace.job.delay_s"
RELATIONSHIP: Final = "jobtrace.relationship"
LINK_TYPE: Final = "jobtrace.link.type"
ITEMS_PREFIX: Final = "jobtrace.items."
PROGRESS: Final = "jobtrace.progress"

EVENT_RETRY: Final = "jobtrace.retry"
EVENT_FAILED: Final = "jobtrace.failed"
EVENT_PROGRESS: Final = "jobtrace.progress"
EVENT_OUTCOME: Final = "jobtrace.outcome"

METRIC_DURATION: Final = "jobtrace.job.duration"
METRIC_QUEUE_WAIT: Final = "jobtrace.job.queue_wait"
METRIC_OUTCOMES: Final = "jobtrace.job.outcomes"


def error_type(error: BaseException) -> str:
    """``error.type`` for an exception: its fully qualified class name (builtins unqualified)."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
