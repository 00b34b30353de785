"""The enqueue side: a PRODUCER span per job sent, and the metadata the job carries to its worker."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from jobtrace import records
from jobtrace._internal import semconv
from jobtrace._internal.config import Relationship, Settings, get_settings
from jobtrace._internal.current import active_job, record_exception
from jobtrace._internal.metadata import producer_job_id, write_lineage
from jobtrace._internal.redaction import args_text, safe_str
from jobtrace._internal.telemetry import TallyKey, instruments, tracer

logger = logging.getLogger("jobtrace")


def new_job_id() -> str:
    """A fresh job id for queues that have none of their own: 32 random hex digits.

    Ids must be unique, not unguessable, so this draws from ``random`` like the SDK's span ids
    (reseeded in forked children) instead of ``uuid4``'s system call on every enqueue.
    """
    return f"{random.getrandbits(128):032x}"


class Enqueue:
    """One job being sent: a ``send <job name>`` PRODUCER span and the metadata to carry.

    Use it as a context manager around the call that hands the job to the queue, so the span
    covers the send and records its failure; or call :meth:`start` and :meth:`end` from a
    framework's before/after hooks. :func:`prepare_enqueue` is the one-line form.

    ``span`` adopts a send span another instrumentation already started for this job instead of
    starting a second one: jobtrace sets its attributes on it and writes the metadata, and leaves
    ending the span to its owner. ``tracer_provider`` and ``meter_provider`` (an instrumentor's)
    replace the global ones. ``server_address`` and ``server_port`` name the broker, when known.

    Attributes:
        published: Whether the job is handed to a broker, and so counted and timed in the
            ``messaging.client.*`` metrics; an integration's in-process run (an eager mode) is not.
    """

    def __init__(
        self,
        name: str,
        *,
        queue: str | None = None,
        job_id: str | None = None,
        args: Any = None,
        relationship: Relationship | None = None,
        delay: float | None = None,
        system: str = "jobtrace",
        carrier: MutableMapping[str, Any] | None = None,
        span: trace.Span | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
    ) -> None:
        self.name = name
        self.queue = queue
        # The reader's rule for ids, so the queued row, the metadata and the run agree.
        self.job_id = producer_job_id(job_id, job_name=name, new_id=new_job_id)
        self.args = args
        self.requested_relationship = relationship
        self.delay = delay
        self.system = system
        self.metadata: MutableMapping[str, Any] = {} if carrier is None else carrier
        self.relationship: Relationship = "child"
        self.adopted_span = span
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.server = semconv.server_of(server_address, server_port)
        self.published = True
        self._span: trace.Span | None = None
        self._sent_at: float | None = None
        self._shape = _NO_SHAPE

    def start(self) -> MutableMapping[str, Any]:
        """Start the span and write the metadata; returns the metadata (the carrier, if given)."""
        try:
            self._start()
        except Exception:
            logger.warning("jobtrace: preparing job %s failed", self.name, exc_info=True)
        return self.metadata

    def _start(self) -> None:
        settings = get_settings()
        parent = active_job()
        now = time.time()
        if parent is not None:
            with parent.lock:
                parent.enqueued_children += 1
                fanout = parent.enqueued_children
            parent_job_id: str | None = parent.info.job_id
            root_job_id = parent.info.root_job_id
            depth = parent.info.depth + 1
        else:
            fanout = 0
            parent_job_id = None
            root_job_id = self.job_id
            depth = 0
        self.relationship = _choose_relationship(
            settings, self.name, self.requested_relationship, fanout, self.delay
        )
        self._shape = shape = _shape_of(self.system, self.name, self.queue, self.server)
        attributes: dict[str, Any] = {
            **shape.span_attributes,
            semconv.MESSAGING_MESSAGE_ID: self.job_id,
            semconv.JOB_ID: self.job_id,
            semconv.JOB_ROOT_ID: root_job_id,
            semconv.JOB_DEPTH: depth,
            semconv.RELATIONSHIP: self.relationship,
        }
        if parent_job_id is not None:
            attributes[semconv.JOB_PARENT_ID] = parent_job_id
        if self.delay:
            attributes[semconv.JOB_DELAY] = self.delay
        recorded_args = args_text(settings, self.args)
        if recorded_args is not None:
            attributes[semconv.JOB_ARGS] = recorded_args
        span = self.adopted_span
        if span is None:
            span = tracer(self.tracer_provider).start_span(
                shape.span_names[settings.span_names == "conventions"],
                kind=SpanKind.PRODUCER,
                attributes=attributes,
            )
        else:
            span.set_attributes(attributes)
        self._span = span
        self._sent_at = now
        due_at = now + self.delay if self.delay and self.delay > 0 else None
        if self.relationship != "none":
            try:
                propagate.inject(self.metadata, context=trace.set_span_in_context(span))
            except Exception:
                # A broken propagator costs the trace link, not the lineage keys below.
                logger.warning(
                    "jobtrace: injecting trace context into job %s failed", self.name, exc_info=True
                )
        write_lineage(
            self.metadata,
            job_id=self.job_id,
            parent_job_id=parent_job_id,
            root_job_id=root_job_id,
            depth=depth,
            enqueued_at=now,
            relationship=self.relationship,
            due_at=due_at,
        )
        if records.has_sinks():
            # The send's record straight from its fields: the JobInfo it was made of went nowhere.
            records.emit(
                records.enqueued_from(
                    self.job_id,
                    self.name,
                    root_job_id,
                    depth,
                    self.queue,
                    parent_job_id,
                    self.system,
                    f"{span.get_span_context().trace_id:032x}",
                    at=now,
                    args=recorded_args,
                    due_at=due_at,
                )
            )

    def end(self, error: BaseException | None = None) -> None:
        """End the span; an ``error`` (the send failed) marks it as an error."""
        span, self._span = self._span, None
        if span is None:
            return
        error_type = None if error is None else semconv.error_type(error)
        self._measure(error_type)
        if span is self.adopted_span:
            return
        try:
            if error is not None:
                record_exception(span, error)
                span.set_attribute(semconv.ERROR_TYPE, error_type)
                span.set_status(
                    Status(
                        StatusCode.ERROR,
                        semconv.status_description(safe_str(error, 200), error_type),
                    )
                )
            span.end()
        except Exception:
            logger.warning("jobtrace: ending the send span of %s failed", self.name, exc_info=True)

    def _measure(self, error_type: str | None) -> None:
        """The send's ``messaging.client.sent.messages`` and ``.operation.duration``."""
        sent_at, self._sent_at = self._sent_at, None
        if sent_at is None or not self.published:
            return
        try:
            shape = self._shape
            if error_type is None:
                sent_key, attributes = shape.sent_key, shape.duration_attributes
            else:
                failed = {**shape.messaging, semconv.ERROR_TYPE: error_type}
                sent_key = tuple(failed.items())
                attributes = {**failed, semconv.MESSAGING_OPERATION_TYPE: semconv.OPERATION_SEND}
            metrics = instruments(self.meter_provider)
            metrics.sent.add(sent_key)
            metrics.operation_duration.record(max(0.0, time.time() - sent_at), attributes)
        except Exception:
            logger.warning("jobtrace: measuring the send of %s failed", self.name, exc_info=True)

    def __enter__(self) -> Enqueue:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end(exc)


class _Shape:
    """What every send of one job name, queue, system and broker has in common, made once.

    The span's constant attributes and both span names, the send metrics' attribute set and the
    counter's key; the dicts are shared by every send and never changed.
    """

    __slots__ = ("duration_attributes", "messaging", "sent_key", "span_attributes", "span_names")

    def __init__(
        self, system: str, name: str, queue: str | None, server: semconv.Server | None
    ) -> None:
        attributes: dict[str, Any] = {
            semconv.MESSAGING_SYSTEM: system,
            semconv.MESSAGING_OPERATION_TYPE: semconv.OPERATION_SEND,
            semconv.MESSAGING_OPERATION_NAME: semconv.OPERATION_SEND,
            semconv.JOB_NAME: name,
        }
        messaging: dict[str, str | int] = {
            semconv.MESSAGING_SYSTEM: system,
            semconv.MESSAGING_OPERATION_NAME: semconv.OPERATION_SEND,
        }
        if queue is not None:
            attributes[semconv.MESSAGING_DESTINATION_NAME] = queue
            messaging[semconv.MESSAGING_DESTINATION_NAME] = queue
        if server is not None:
            found = semconv.server_attributes(server)
            attributes.update(found)
            messaging.update(found)
        self.span_attributes = attributes
        self.span_names = (
            semconv.span_name(semconv.OPERATION_SEND, name, queue, "job"),
            semconv.span_name(semconv.OPERATION_SEND, name, queue, "conventions"),
        )
        self.messaging = messaging
        self.sent_key: TallyKey = tuple(messaging.items())
        self.duration_attributes: dict[str, str | int] = {
            **messaging,
            semconv.MESSAGING_OPERATION_TYPE: semconv.OPERATION_SEND,
        }


_NO_SHAPE = _Shape("jobtrace", "", None, None)
_shapes: dict[tuple[str, str, str | None, semconv.Server | None], _Shape] = {}
_MAX_SHAPES = 4096  # job names are few; this bounds a stream of made-up ones


def _shape_of(system: str, name: str, queue: str | None, server: semconv.Server | None) -> _Shape:
    key = (system, name, queue, server)
    shape = _shapes.get(key)
    if shape is None:
        if len(_shapes) >= _MAX_SHAPES:
            _shapes.clear()
        shape = _shapes[key] = _Shape(system, name, queue, server)
    return shape


def prepare_enqueue(
    name: str,
    *,
    queue: str | None = None,
    job_id: str | None = None,
    args: Any = None,
    relationship: Relationship | None = None,
    delay: float | None = None,
    system: str = "jobtrace",
) -> dict[str, str]:
    """Prepare the metadata of a job about to be enqueued.

    Records a ``send <name>`` PRODUCER span and returns the metadata to store with the job: trace
    context through the globally configured propagator, and the lineage keys of
    ``docs/metadata.md``. The job id is under ``"jobtrace-job-id"``.

    Args:
        name: The job's name (its task or function name).
        queue: The queue it goes to.
        job_id: The queue's own id for the job, when it has one; otherwise one is made.
        args: The job's arguments, recorded redacted and truncated.
        relationship: ``child``, ``link`` or ``none`` for this job, over the configured policy.
        delay: Seconds until the job may run, when it is scheduled for later.
        system: The queue system's name, for ``messaging.system``.
    """
    metadata: dict[str, str] = {}
    enqueue = Enqueue(
        name,
        queue=queue,
        job_id=job_id,
        args=args,
        relationship=relationship,
        delay=delay,
        system=system,
        carrier=metadata,
    )
    enqueue.start()
    enqueue.end()
    return metadata


def _choose_relationship(
    settings: Settings,
    name: str,
    requested: Relationship | None,
    fanout: int,
    delay: float | None,
) -> Relationship:
    """The caller's choice wins; a configured ``child`` turns into ``link`` for huge or late fan-out."""
    if requested is not None:
        return requested
    relationship = settings.relationship_for(name)
    if relationship != "child":
        return relationship
    if settings.link_after_fanout is not None and fanout > settings.link_after_fanout:
        return "link"
    if (
        settings.link_after_delay is not None
        and delay is not None
        and delay > settings.link_after_delay
    ):
        return "link"
    return relationship
