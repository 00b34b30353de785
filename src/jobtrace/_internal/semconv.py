"""Attribute, event and metric names jobtrace writes, and the few rules that shape their values.

The ``messaging.*``, ``server.*`` and ``error.type`` names follow the OpenTelemetry messaging
semantic conventions; ``jobtrace.*`` names carry what the conventions have no word for (lineage,
attempts, outcomes, item counts). ``docs/conventions.md`` lists where jobtrace departs from them.
"""

from __future__ import annotations

from typing import Any, Final, Literal

MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
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

OPERATION_SEND: Final = "send"
OPERATION_PROCESS: Final = "process"

# The conventions' metrics.
METRIC_PROCESS_DURATION: Final = "messaging.process.duration"
METRIC_OPERATION_DURATION: Final = "messaging.client.operation.duration"
METRIC_SENT_MESSAGES: Final = "messaging.client.sent.messages"
METRIC_CONSUMED_MESSAGES: Final = "messaging.client.consumed.messages"
# jobtrace's own: the conventions have no queue wait and no outcome count.
METRIC_QUEUE_WAIT: Final = "jobtrace.job.queue_wait"
METRIC_OUTCOMES: Final = "jobtrace.job.outcomes"

CLIENT_DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
"""The conventions' advice for ``messaging.client.operation.duration`` (seconds)."""
JOB_DURATION_BUCKETS: Final[tuple[float, ...]] = (
    *CLIENT_DURATION_BUCKETS, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
"""The conventions' advice, which stops at 10 s, carried on to an hour: jobs run for minutes.

For ``messaging.process.duration`` and ``jobtrace.job.queue_wait`` (seconds).
"""

SpanNames = Literal["job", "conventions"]
SPAN_NAMES: Final[frozenset[str]] = frozenset({"job", "conventions"})


def span_name(operation: str, job_name: str, destination: str | None, style: str) -> str:
    """A job span's name: ``{operation} {job name}``, or the conventions' ``{operation} {destination}``.

    Under ``conventions`` a job with no known destination is named by its operation alone, as
    the conventions say when the destination is not available.
    """
    if style == "conventions":
        return f"{operation} {destination}" if destination else operation
    return f"{operation} {job_name}"


def status_description(message: str, error_type: str | None) -> str | None:
    """The ERROR status description of a failure: the exception's message, cut to 200 characters.

    ``None`` when the message says nothing beyond ``error.type`` (empty, or the type's name again):
    the conventions advise against repeating ``error.type`` in the description.
    """
    text = message.strip()
    if not text or text == error_type:
        return None
    if error_type is not None and text == error_type.rpartition(".")[2]:
        return None
    return message[:200]


def error_type(error: BaseException) -> str:
    """``error.type`` for an exception: its fully qualified class name (builtins unqualified)."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


Server = tuple[str, int | None]
"""A broker's ``server.address`` and ``server.port`` (``None`` when it has no port)."""


def server_of(address: object, port: object = None) -> Server | None:
    """``(address, port)`` when ``address`` is a non-empty string; a port must be 1–65535."""
    if not isinstance(address, str) or not address:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        port = None
    return address, port


def redis_server(client: object) -> Server | None:
    """The Redis server a ``redis`` client (sync or asyncio) connects to; ``None`` if unknown.

    Read from its connection pool's keywords, no network involved: a host and port, or a Unix
    socket's path. Sentinel and cluster clients name no single server and give ``None``.
    """
    try:
        kwargs: Any = client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
        if not isinstance(kwargs, dict):
            return None
        found = server_of(kwargs.get("host"), kwargs.get("port"))
        return found if found is not None else server_of(kwargs.get("path"))
    except Exception:
        return None


def server_attributes(server: Server | None) -> dict[str, str | int]:
    """``server.address`` and ``server.port`` for a known server; nothing otherwise."""
    if server is None:
        return {}
    address, port = server
    if port is None:
        return {SERVER_ADDRESS: address}
    return {SERVER_ADDRESS: address, SERVER_PORT: port}
