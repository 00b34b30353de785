"""Spans of forked processes handed to the process they came from, which exports them.

RQ forks a work horse per job: a horse that exports its own spans opens a connection to the
collector and waits for it at the end of every job, and a collector that is slow or down makes
every job pay. So the span processor :func:`jobtrace.configure` installs opens a local datagram
socket pair before a fork; in the child each ended span is sent through it as plain data, and the
long-lived parent rebuilds it and hands it to its own batch processor, which exports it with the
parent's spans. A horse's flush at the job's end then has nothing to wait for. A child killed
mid-job loses only the spans it had not ended. Sending never blocks: a full socket (the parent is
busy or gone) makes the child export that span itself, as without a hand-off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import threading
import weakref
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

logger = logging.getLogger("jobtrace")

_RECEIVE_SIZE = 4 * 1024 * 1024


def enabled() -> bool:
    """``JOBTRACE_HANDOFF=0`` makes forked processes export their spans themselves."""
    return os.environ.get("JOBTRACE_HANDOFF", "1") != "0"


class HandoffSpanProcessor(SpanProcessor):
    """``inner`` (a batch processor) in the parent; in a forked child, a send to the parent."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self._parent_end: socket.socket | None = None
        self._child_end: socket.socket | None = None
        self._owner = os.getpid()
        self._in_child = False
        self._reader: threading.Thread | None = None
        self._closed = False
        _instances.add(self)

    # -- the SpanProcessor interface ------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self._in_child and self._send(span):
            return
        self.inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if self._in_child:
            return True  # every span went to the parent as it ended: nothing is buffered here
        return self.inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._closed = True
        for end in (self._parent_end, self._child_end):
            if end is not None:
                with contextlib.suppress(OSError):
                    end.close()
        self.inner.shutdown()

    # -- the child's side -------------------------------------------------------------------------

    def _send(self, span: ReadableSpan) -> bool:
        end = self._child_end
        if end is None:
            return False
        try:
            end.send(pickle.dumps(encode(span), pickle.HIGHEST_PROTOCOL))
        except Exception:  # full, the parent gone, or a value pickle refuses: export it here
            return False
        return True

    def _after_fork_in_child(self) -> None:
        if self._child_end is None:
            return
        self._in_child = True
        self._reader = None  # the parent's thread did not come along
        if self._parent_end is not None:
            with contextlib.suppress(OSError):
                self._parent_end.close()
            self._parent_end = None

    # -- the parent's side -------------------------------------------------------------------------

    def _before_fork(self) -> None:
        """Open the channel (once) and read it, before this process forks its first child."""
        if self._closed or self._in_child or os.getpid() != self._owner:
            return
        if self._parent_end is None:
            try:
                self._parent_end, self._child_end = socket.socketpair(
                    socket.AF_UNIX, socket.SOCK_DGRAM
                )
            except OSError as error:
                logger.warning("jobtrace: forked processes will export their spans: %s", error)
                return
            self._child_end.setblocking(False)
        if self._reader is None:
            self._reader = threading.Thread(
                target=self._read, name="jobtrace-span-handoff", daemon=True
            )
            self._reader.start()

    def _read(self) -> None:
        end = self._parent_end
        while end is not None and not self._closed:
            try:
                data = end.recv(_RECEIVE_SIZE)
            except InterruptedError:
                continue
            except OSError:
                return  # closed
            try:
                self.inner.on_end(decode(pickle.loads(data)))
            except Exception:
                logger.warning("jobtrace: a span handed over by a child was lost", exc_info=True)


_instances: weakref.WeakSet[HandoffSpanProcessor] = weakref.WeakSet()


def _before_fork() -> None:
    for processor in list(_instances):
        processor._before_fork()


def _after_fork_in_child() -> None:
    for processor in list(_instances):
        processor._after_fork_in_child()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


# -- a span as plain data and back ------------------------------------------------------------------

_Context = tuple[int, int, bool, int, tuple[tuple[str, str], ...]]


def _context(context: SpanContext | None) -> _Context | None:
    if context is None:
        return None
    return (
        context.trace_id,
        context.span_id,
        context.is_remote,
        int(context.trace_flags),
        tuple(context.trace_state.items()),
    )


def _span_context(data: _Context | None) -> SpanContext | None:
    if data is None:
        return None
    trace_id, span_id, is_remote, flags, state = data
    return SpanContext(trace_id, span_id, is_remote, TraceFlags(flags), TraceState(list(state)))


def encode(span: ReadableSpan) -> tuple[Any, ...]:
    """``span`` as tuples, dicts and numbers (its attributes' locks do not pickle)."""
    scope = span.instrumentation_scope
    return (
        span.name,
        _context(span.context),
        _context(span.parent),
        dict(span.attributes or {}),
        [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        [(_context(link.context), dict(link.attributes or {})) for link in span.links],
        span.kind.value,
        (span.status.status_code.value, span.status.description),
        span.start_time,
        span.end_time,
        dict(span.resource.attributes),
        span.resource.schema_url,
        None if scope is None else (scope.name, scope.version, scope.schema_url),
    )


def decode(data: tuple[Any, ...]) -> ReadableSpan:
    """The span :func:`encode` took apart."""
    (
        name,
        context,
        parent,
        attributes,
        events,
        links,
        kind,
        (status_code, description),
        start_time,
        end_time,
        resource_attributes,
        schema_url,
        scope,
    ) = data
    return ReadableSpan(
        name=name,
        context=_span_context(context),
        parent=_span_context(parent),
        resource=Resource(resource_attributes, schema_url),
        attributes=attributes,
        events=[Event(event, attrs, timestamp) for event, attrs, timestamp in events],
        links=[
            Link(_span_context(link) or trace_api.INVALID_SPAN_CONTEXT, attrs)
            for link, attrs in links
        ],
        kind=SpanKind(kind),
        status=Status(StatusCode(status_code), description),
        start_time=start_time,
        end_time=end_time,
        instrumentation_scope=None if scope is None else InstrumentationScope(*scope),
    )
