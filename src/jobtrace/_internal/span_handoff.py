"""Spans of forked processes handed to the process they came from, which exports them.

The span processor :func:`jobtrace.configure` installs sends, in a forked child (an RQ work horse,
a prefork child), each ended span through :mod:`~jobtrace._internal.forkchannel` as plain data;
the long-lived parent rebuilds it and hands it to its own batch processor, which exports it with
the parent's spans. A horse's flush at the job's end then has no span to wait for, and the horse
never connects to the collector. A child killed mid-job loses only the spans it had not ended; a
span that cannot be sent is exported by the child itself, as without a hand-off.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from jobtrace._internal import forkchannel

logger = logging.getLogger("jobtrace")

KIND = "span"


class HandoffSpanProcessor(SpanProcessor):
    """``inner`` (a batch processor) in the parent; in a forked child, a send to the parent."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self._kept_here = False  # in a child: a span that could not be sent waits in ``inner``
        forkchannel.handle(KIND, self._take)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if forkchannel.in_child():
            try:
                if forkchannel.send(KIND, encode(span)):
                    return
            except Exception:  # a span that cannot be taken apart is exported here
                logger.debug("jobtrace: span not handed over", exc_info=True)
            self._kept_here = True
        self.inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if forkchannel.in_child() and not self._kept_here:
            return True  # every span went to the parent as it ended: nothing is buffered here
        return self.inner.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def _take(self, payload: Any) -> None:
        """In the parent: a span a child ended."""
        self.inner.on_end(decode(payload))


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


_Resource = tuple[tuple[tuple[str, Any], ...], str]
_Scope = tuple[str, str | None, str | None]

# A process's spans share one resource and a few scopes: each is taken apart (in a child) and
# rebuilt (in the parent) once, not per span; building a ``Resource`` was two thirds of a decode.
_encoded_resources: dict[int, tuple[Resource, _Resource]] = {}
_decoded_resources: dict[_Resource, Resource] = {}
_decoded_scopes: dict[_Scope, InstrumentationScope] = {}
_CACHE_LIMIT = 64  # distinct resources or scopes kept; past it, new ones are built each time


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _encode_resource(resource: Resource) -> _Resource:
    cached = _encoded_resources.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1]
    encoded = (
        tuple((key, _hashable(value)) for key, value in resource.attributes.items()),
        resource.schema_url,
    )
    if len(_encoded_resources) < _CACHE_LIMIT:
        _encoded_resources[id(resource)] = (resource, encoded)  # holding it keeps its id unique
    return encoded


def _decode_resource(data: _Resource) -> Resource:
    try:
        cached = _decoded_resources.get(data)
    except TypeError:  # a value that does not hash (a nested list): built each time
        return Resource(dict(data[0]), data[1])
    if cached is None:
        cached = Resource(dict(data[0]), data[1])
        if len(_decoded_resources) < _CACHE_LIMIT:
            _decoded_resources[data] = cached
    return cached


def _decode_scope(data: _Scope) -> InstrumentationScope:
    cached = _decoded_scopes.get(data)
    if cached is None:
        cached = InstrumentationScope(*data)
        if len(_decoded_scopes) < _CACHE_LIMIT:
            _decoded_scopes[data] = cached
    return cached


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
        _encode_resource(span.resource),
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
        resource,
        scope,
    ) = data
    return ReadableSpan(
        name=name,
        context=_span_context(context),
        parent=_span_context(parent),
        resource=_decode_resource(resource),
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
        instrumentation_scope=None if scope is None else _decode_scope(scope),
    )
