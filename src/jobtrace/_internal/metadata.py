"""The job metadata contract: what a producer writes into a job's metadata and how it is read.

Every value is a short string, so any queue (and any language) can carry it. Reading is defensive:
metadata comes from other processes and other programs, and a malformed value costs one warning and
the lineage or trace link it carried, never the job. See ``docs/metadata.md``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    SpanContext,
    TraceFlags,
    get_current_span,
)

from jobtrace._internal.config import RELATIONSHIPS, Relationship

logger = logging.getLogger("jobtrace")

VERSION = "1"

KEY_VERSION = "jobtrace-version"
KEY_JOB_ID = "jobtrace-job-id"
KEY_PARENT_JOB_ID = "jobtrace-parent-job-id"
KEY_ROOT_JOB_ID = "jobtrace-root-job-id"
KEY_DEPTH = "jobtrace-depth"
KEY_ENQUEUED_AT = "jobtrace-enqueued-at"
KEY_RELATIONSHIP = "jobtrace-relationship"
KEY_ATTEMPT = "jobtrace-attempt"
KEY_PREVIOUS_SPAN = "jobtrace-previous-span"

LINEAGE_KEYS = (
    KEY_VERSION,
    KEY_JOB_ID,
    KEY_PARENT_JOB_ID,
    KEY_ROOT_JOB_ID,
    KEY_DEPTH,
    KEY_ENQUEUED_AT,
    KEY_RELATIONSHIP,
    KEY_ATTEMPT,
    KEY_PREVIOUS_SPAN,
)

MAX_ID_LENGTH = 255
MAX_VALUE_LENGTH = 8192  # W3C baggage's own limit; nothing legitimate here is longer
MAX_DEPTH = 10_000
_SPAN_REF = re.compile(r"^([0-9a-f]{32})-([0-9a-f]{16})$")


@dataclass(frozen=True, slots=True)
class Incoming:
    """What a job run learns from its metadata; fields are ``None`` where nothing valid came."""

    context: Context | None
    job_id: str | None
    parent_job_id: str | None
    root_job_id: str | None
    depth: int | None
    enqueued_at: float | None
    relationship: Relationship | None
    attempt: int | None
    previous_span: SpanContext | None


_EMPTY = Incoming(None, None, None, None, None, None, None, None, None)


class _StringGetter(Getter[Mapping[str, str]]):
    """Reads only the sanitised string values; the propagator never sees anything else.

    Lookups are exact: :func:`read_metadata` has already restored the propagator's spelling of
    keys whose case a transport folded.
    """

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier.keys())


_getter = _StringGetter()


def _sanitise(metadata: object, problems: list[str]) -> dict[str, str]:
    """Only string keys with short string values survive; the rest is noted as a problem."""
    if metadata is None:
        return {}
    if type(metadata) is not dict and not isinstance(metadata, Mapping):
        problems.append(f"metadata is a {type(metadata).__name__}, not a mapping")
        return {}
    fields = _propagation_fields()
    clean: dict[str, str] = {}
    for key, value in metadata.items():
        if type(value) is str and len(value) <= MAX_VALUE_LENGTH and type(key) is str:
            clean[key] = value  # the common case, first and cheap
            continue
        if not isinstance(key, str):
            continue
        if not isinstance(value, str):
            if _is_ours(key) or key.lower() in fields:
                problems.append(f"{key} is a {type(value).__name__}, not a string")
            continue
        if len(value) > MAX_VALUE_LENGTH:
            if _is_ours(key) or key.lower() in fields:
                problems.append(f"{key} is {len(value)} characters long")
            continue
        clean[key] = value
    return clean


def _is_ours(key: str) -> bool:
    return key.startswith("jobtrace-")


# Keys a propagator may write that are not a parent span on their own: a carrier with only these
# (baggage from a producer that sent no trace context) is not a malformed trace context.
_NOT_A_PARENT = frozenset({"baggage", "tracestate"})
_fields_cache: tuple[object, dict[str, str]] | None = None


def _propagation_fields() -> dict[str, str]:
    """The global propagator's keys, lower-cased, to its own spelling; cached per propagator."""
    global _fields_cache
    propagator = propagate.get_global_textmap()
    cached = _fields_cache
    if cached is not None and cached[0] is propagator:
        return cached[1]
    fields = {field.lower(): field for field in propagator.fields}
    _fields_cache = (propagator, fields)
    return fields


def _read_id(carrier: Mapping[str, str], key: str, problems: list[str]) -> str | None:
    value = carrier.get(key)
    if value is None:
        return None
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        problems.append(f"{key} is not a valid job id")
        return None
    return value


def _read_int(
    carrier: Mapping[str, str], key: str, low: int, high: int, problems: list[str]
) -> int | None:
    value = carrier.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        problems.append(f"{key} is not an integer")
        return None
    if not low <= number <= high:
        problems.append(f"{key} is out of range")
        return None
    return number


def _read_float(carrier: Mapping[str, str], key: str, problems: list[str]) -> float | None:
    value = carrier.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        problems.append(f"{key} is not a number")
        return None
    if not 0.0 < number < 1e11:  # finite, after 1970 and before 5138
        problems.append(f"{key} is out of range")
        return None
    return number


def parse_span_ref(value: str | None) -> SpanContext | None:
    """``<32 hex trace id>-<16 hex span id>`` as a remote span context, or ``None``."""
    if value is None:
        return None
    match = _SPAN_REF.match(value)
    if match is None:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(1))


def format_span_ref(context: SpanContext) -> str:
    """The inverse of :func:`parse_span_ref`."""
    return f"{context.trace_id:032x}-{context.span_id:016x}"


def read_metadata(metadata: object, *, job_description: str) -> Incoming:
    """Parse a job's metadata; whatever is malformed is dropped with a single warning.

    Args:
        metadata: The job's metadata as it arrived: anything at all.
        job_description: Names the job in the warning.
    """
    if metadata is None:
        return _EMPTY
    problems: list[str] = []
    carrier = _sanitise(metadata, problems)
    context: Context | None = None
    if carrier:
        fields = _propagation_fields()
        present: list[str] = []
        folded = False
        for key in carrier:
            lowered = key.lower()
            if lowered in fields:
                present.append(lowered)
                folded = folded or fields[lowered] != key
        if present:
            if folded:
                # Some transports (HTTP-like headers) fold case: give the propagator its keys back.
                carrier = {fields.get(k.lower(), k): v for k, v in carrier.items()}
            context = propagate.extract(carrier, getter=_getter)
            if not get_current_span(context).get_span_context().is_valid and any(
                key not in _NOT_A_PARENT for key in present
            ):
                problems.append("trace context is malformed")
                # Keep what else it carried (baggage), without a parent span.
                kept = {
                    k: v
                    for k, v in carrier.items()
                    if k.lower() not in fields or k.lower() == "baggage"
                }
                context = propagate.extract(kept, getter=_getter)
    version = carrier.get(KEY_VERSION)
    if version is not None and version.split(".", 1)[0] != VERSION:
        problems.append(f"{KEY_VERSION} {version!r} is not a version this jobtrace understands")
        carrier = {k: v for k, v in carrier.items() if not _is_ours(k)}
    relationship = carrier.get(KEY_RELATIONSHIP)
    if relationship is not None and relationship not in RELATIONSHIPS:
        problems.append(f"{KEY_RELATIONSHIP} is not one of {sorted(RELATIONSHIPS)}")
        relationship = None
    previous = carrier.get(KEY_PREVIOUS_SPAN)
    previous_span = parse_span_ref(previous)
    if previous is not None and previous_span is None:
        problems.append(f"{KEY_PREVIOUS_SPAN} is malformed")
    incoming = Incoming(
        context=context,
        job_id=_read_id(carrier, KEY_JOB_ID, problems),
        parent_job_id=_read_id(carrier, KEY_PARENT_JOB_ID, problems),
        root_job_id=_read_id(carrier, KEY_ROOT_JOB_ID, problems),
        depth=_read_int(carrier, KEY_DEPTH, 0, MAX_DEPTH, problems),
        enqueued_at=_read_float(carrier, KEY_ENQUEUED_AT, problems),
        relationship=relationship,  # type: ignore[arg-type]
        attempt=_read_int(carrier, KEY_ATTEMPT, 1, 1_000_000, problems),
        previous_span=previous_span,
    )
    if problems:
        logger.warning(
            "jobtrace: ignoring malformed metadata of %s: %s", job_description, "; ".join(problems)
        )
    return incoming


def write_lineage(
    carrier: MutableMapping[str, Any],
    *,
    job_id: str,
    parent_job_id: str | None,
    root_job_id: str,
    depth: int,
    enqueued_at: float,
    relationship: Relationship,
) -> None:
    """Write the lineage keys of a job about to be enqueued."""
    carrier[KEY_VERSION] = VERSION
    carrier[KEY_JOB_ID] = job_id
    if parent_job_id is not None:
        carrier[KEY_PARENT_JOB_ID] = parent_job_id
    carrier[KEY_ROOT_JOB_ID] = root_job_id
    carrier[KEY_DEPTH] = str(depth)
    carrier[KEY_ENQUEUED_AT] = f"{enqueued_at:.6f}"
    carrier[KEY_RELATIONSHIP] = relationship


def retry_metadata(span_context: SpanContext, next_attempt: int) -> dict[str, str]:
    """Keys to carry into the next attempt so its span links back to this one."""
    keys = {KEY_ATTEMPT: str(next_attempt)}
    if span_context.is_valid and span_context != INVALID_SPAN_CONTEXT:
        keys[KEY_PREVIOUS_SPAN] = format_span_ref(span_context)
    return keys
