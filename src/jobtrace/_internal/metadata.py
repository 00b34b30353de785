"""The job metadata contract: what a producer writes into a job's metadata and how it is read.

Every value is a short string, so any queue (and any language) can carry it; the numeric keys also
accept JSON numbers, which JavaScript producers write. Reading is defensive: metadata comes from
other processes and other programs, and a malformed value costs one warning and the lineage or
trace link it carried, never the job. Warnings are rate-limited per kind, so a flood of bad jobs
does not flood the logs. See ``docs/metadata.md``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, NamedTuple

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
VERSION_1_1 = "1.1"
"""Written instead of ``VERSION`` by a producer that writes a key added in 1.1 (``jobtrace-due-at``)."""

KEY_VERSION = "jobtrace-version"
KEY_JOB_ID = "jobtrace-job-id"
KEY_PARENT_JOB_ID = "jobtrace-parent-job-id"
KEY_ROOT_JOB_ID = "jobtrace-root-job-id"
KEY_DEPTH = "jobtrace-depth"
KEY_ENQUEUED_AT = "jobtrace-enqueued-at"
KEY_DUE_AT = "jobtrace-due-at"  # 1.1
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
    KEY_DUE_AT,
    KEY_RELATIONSHIP,
    KEY_ATTEMPT,
    KEY_PREVIOUS_SPAN,
)
# Keys only a producer writing lineage writes: with any of them, a missing version is a mistake.
# (The retry keys alone are not: an integration may hand them to the next attempt by themselves.)
_PRODUCER_KEYS = (
    KEY_JOB_ID,
    KEY_PARENT_JOB_ID,
    KEY_ROOT_JOB_ID,
    KEY_DEPTH,
    KEY_ENQUEUED_AT,
    KEY_DUE_AT,
    KEY_RELATIONSHIP,
)
# Keys whose value may come as a JSON number instead of its decimal string.
_NUMERIC_KEYS = frozenset({KEY_VERSION, KEY_DEPTH, KEY_ATTEMPT, KEY_ENQUEUED_AT, KEY_DUE_AT})

MAX_ID_LENGTH = 255
MAX_VALUE_LENGTH = 8192  # W3C baggage's own limit; nothing legitimate here is longer
MAX_DEPTH = 10_000
MAX_ATTEMPT = 1_000_000
_MAX_NUMBER_LENGTH = 32  # no valid number here is longer; int() of 8192 digits is not free
_SPAN_REF = re.compile(r"^([0-9a-f]{32})-([0-9a-f]{16})$")
_INTEGER = re.compile(r"-?[0-9]+(?:\.0+)?")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_TIME = re.compile(r"[0-9]+(?:\.[0-9]+)?").fullmatch
_VERSION_TEXT = re.compile(r"([0-9]+)(?:\.[0-9]+)*")
# What a job id may not contain: control characters (C0, DEL, C1), line and paragraph separators,
# and unpaired surrogates (no store can encode them). A fixed set, unlike ``str.isprintable``,
# whose answer for a new emoji depends on the reader's Unicode version.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class Incoming(NamedTuple):
    """What a job run learns from its metadata; fields are ``None`` where nothing valid came.

    A named tuple, built positionally: it is made once per job run, on the job's thread.
    """

    context: Context | None
    job_id: str | None
    parent_job_id: str | None
    root_job_id: str | None
    depth: int | None
    enqueued_at: float | None
    relationship: Relationship | None
    attempt: int | None
    previous_span: SpanContext | None
    due_at: float | None = None
    """When a delayed job became due to run (1.1); ``None`` for a job due when enqueued."""


_new_tuple = tuple.__new__
_EMPTY = Incoming(None, None, None, None, None, None, None, None, None)

# -- job ids ----------------------------------------------------------------------------------------


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def is_valid_job_id(value: str) -> bool:
    """Whether ``value`` is a job id as the contract allows: 1–255 characters, none forbidden."""
    if not 0 < len(value) <= MAX_ID_LENGTH:
        return False
    return value.isprintable() or _FORBIDDEN.search(value) is None


def repair_job_id(value: str) -> str:
    """The valid job id a non-empty invalid one is read as; the same everywhere, every time.

    Each forbidden character becomes its escape (``\\x0a``, ``\\ud800``); an id still longer than
    255 characters keeps its first 190 and a ``~`` and the SHA-256 of the whole, so long ids stay
    distinct (the lineage store shortens over-long ids the same way). A valid id is returned as is.
    """
    fixed = _FORBIDDEN.sub(_escape, str.__str__(value))
    if len(fixed) > MAX_ID_LENGTH:
        digest = hashlib.sha256(fixed.encode("utf-8")).hexdigest()
        fixed = f"{fixed[: MAX_ID_LENGTH - len(digest) - 1]}~{digest}"
    return fixed


def producer_job_id(job_id: object, *, job_name: str, new_id: Callable[[], str]) -> str:
    """The id a producer records and sends for a job whose caller may have named one.

    The caller's id under the reader's own rule (:func:`repair_job_id`), so the ``queued`` row,
    the metadata and the run all carry the same id: an invalid one is repaired, with a warning.
    No id (``None`` or empty) gets ``new_id()``, and so, with a warning, does one that is not a
    string at all. Never raises.

    Args:
        job_id: What the caller passed as the job's id.
        job_name: Names the job in the warning.
        new_id: Makes a fresh id.
    """
    if job_id is None:
        return new_id()  # the common case: the queue has no id of its own
    if type(job_id) is str and 0 < len(job_id) <= MAX_ID_LENGTH and job_id.isprintable():
        return job_id  # the other common case, first and cheap
    try:
        return _producer_job_id(job_id, job_name, new_id)
    except Exception:
        return new_id()


def _producer_job_id(job_id: object, job_name: str, new_id: Callable[[], str]) -> str:
    if job_id is None:
        return new_id()
    if not isinstance(job_id, str):
        made = new_id()
        _warn(
            ("producer", "type"),
            "jobtrace: job %s was given a job_id that is a %s, not a string; it is sent and "
            "recorded as %s",
            _printable(job_name),
            type(job_id).__name__,
            made,
        )
        return made
    text = str.__str__(job_id)
    if not text:
        return new_id()
    if is_valid_job_id(text):
        return text
    fixed = repair_job_id(text)
    _warn(
        ("producer", "invalid"),
        "jobtrace: job %s was given the job_id %s, which is not a valid job id; it is sent and "
        "recorded as %s",
        _printable(job_name),
        _shown(text),
        fixed,
    )
    return fixed


# -- warnings ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    since: float
    logged: int
    suppressed: int


class _Limiter:
    """Deduplicates warnings by kind: ``burst`` of one kind per ``window`` seconds are logged.

    The rest are counted, and the first one logged in the next window says how many were not.
    """

    def __init__(self, burst: int, window: float, max_kinds: int = 1024) -> None:
        self.burst = burst
        self.window = window
        self.max_kinds = max_kinds
        self.clock: Callable[[], float] = time.monotonic
        self._tallies: dict[object, _Tally] = {}
        self._once: set[object] = set()
        self._lock = threading.Lock()

    def admit(self, kind: object) -> int | None:
        """``None`` to stay quiet, else how many of this kind went unlogged before this one."""
        now = self.clock()
        with self._lock:
            tally = self._tallies.get(kind)
            if tally is None or now - tally.since >= self.window:
                suppressed = 0 if tally is None else tally.suppressed
                if tally is None and len(self._tallies) >= self.max_kinds:
                    self._tallies.clear()  # kinds are few; this bounds a pathological stream
                self._tallies[kind] = _Tally(now, 1, 0)
                return suppressed
            if tally.logged < self.burst:
                tally.logged += 1
                return 0
            tally.suppressed += 1
            return None

    def first(self, kind: object) -> bool:
        """Whether this is the first time ``kind`` is seen in this process."""
        with self._lock:
            if kind in self._once or len(self._once) >= self.max_kinds:
                return False
            self._once.add(kind)
            return True

    def reset(self) -> None:
        """Forget everything seen (tests)."""
        with self._lock:
            self._tallies.clear()
            self._once.clear()


_limiter = _Limiter(burst=10, window=60.0)


def _warn(kind: object, message: str, *args: object) -> None:
    suppressed = _limiter.admit(kind)
    if suppressed is None:
        return
    if suppressed:
        message += " (and %d more like it in the %g s before, not logged)"
        args = (*args, suppressed, _limiter.window)
    logger.warning(message, *args)


def _printable(text: str) -> str:
    """``text`` fit for a log line: forbidden characters escaped."""
    try:
        return _FORBIDDEN.sub(_escape, str.__str__(text))
    except Exception:
        return "<unprintable>"


def _shown(value: str, limit: int = 64) -> str:
    """A value quoted for a warning: escaped, and cut short."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + "…"


# -- reading ----------------------------------------------------------------------------------------

Problem = tuple[str, str]  # (kind, what is wrong): warnings are rate-limited by their kinds


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


def _sanitise(metadata: object, problems: list[Problem]) -> dict[str, str]:
    """Only string keys with short string values survive; the rest is noted as a problem.

    Keys and values that are ``str`` subclasses become plain strings, numbers under the numeric
    keys become their decimal text, and a mapping that raises while it is read counts as empty.
    """
    found: list[Problem] = []
    try:
        if type(metadata) is not dict and not isinstance(metadata, Mapping):
            problems.append(("type", f"metadata is a {type(metadata).__name__}, not a mapping"))
            return {}
        clean = _clean_items(metadata.items(), found)
    except Exception as error:
        found.clear()
        try:
            if not isinstance(metadata, dict):
                raise
            # A dict subclass whose items() raises: its own storage is still readable.
            clean = _clean_items(dict.items(metadata), found)
        except Exception:
            problems.append(("unreadable", f"metadata could not be read ({type(error).__name__})"))
            return {}
    problems.extend(found)
    return clean


def _clean_items(items: Iterable[tuple[object, object]], problems: list[Problem]) -> dict[str, str]:
    fields = _propagation_fields()
    clean: dict[str, str] = {}
    for key, value in items:
        if type(value) is str and len(value) <= MAX_VALUE_LENGTH and type(key) is str:
            clean[key] = value  # the common case, first and cheap
            continue
        if not isinstance(key, str):
            continue
        if type(key) is not str:
            key = str.__str__(key)  # a plain copy: none of the subclass's overrides run
        relevant = key.startswith("jobtrace-") or key.lower() in fields
        if not isinstance(value, str):
            if not relevant:
                continue
            if key in _NUMERIC_KEYS and type(value) is not bool and isinstance(value, (int, float)):
                text = _number_text(value)
                if text is not None:
                    clean[key] = text
                else:
                    problems.append((f"{key} range", f"{key} is not a number in range"))
                continue
            problems.append((f"{key} type", f"{key} is a {type(value).__name__}, not a string"))
            continue
        if type(value) is not str:
            value = str.__str__(value)
        if len(value) > MAX_VALUE_LENGTH:
            if relevant:
                problems.append((f"{key} length", f"{key} is {len(value)} characters long"))
            continue
        clean[key] = value
    return clean


def _number_text(value: int | float) -> str | None:
    """A JSON number as the decimal text the contract writes; ``None`` when out of any range."""
    if isinstance(value, int):
        number = int.__int__(value)
        return str(number) if number.bit_length() < 64 else None
    real = float.__float__(value)
    if not math.isfinite(real) or abs(real) >= 2.0**63:
        return None
    return str(int(real)) if real.is_integer() else repr(real)


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


def _read_id(carrier: Mapping[str, str], key: str, problems: list[Problem]) -> str | None:
    value = carrier.get(key)
    if value is None:
        return None
    if 0 < len(value) <= MAX_ID_LENGTH and value.isprintable():
        return value
    if not value:
        problems.append((f"{key} empty", f"{key} is empty"))
        return None
    if is_valid_job_id(value):
        return value
    fixed = repair_job_id(value)
    problems.append(
        (f"{key} invalid", f"{key} {_shown(value)} is not a valid job id, read as {fixed}")
    )
    return fixed


def _read_int(
    carrier: Mapping[str, str], key: str, low: int, high: int, problems: list[Problem]
) -> int | None:
    value = carrier.get(key)
    if value is None:
        return None
    if value.isascii() and value.isdigit() and len(value) < 19:  # plain digits: the usual
        number = int(value)
    elif len(value) <= _MAX_NUMBER_LENGTH and _INTEGER.fullmatch(value):
        number = int(value.split(".", 1)[0])
    else:
        problems.append((f"{key} format", f"{key} {_shown(value)} is not a decimal integer"))
        return None
    if not low <= number <= high:
        problems.append((f"{key} range", f"{key} {number} is out of range"))
        return None
    return number


def _read_float(carrier: Mapping[str, str], key: str, problems: list[Problem]) -> float | None:
    value = carrier.get(key)
    if value is None:
        return None
    whole, dot, fraction = value.partition(".")
    if (
        len(value) <= _MAX_NUMBER_LENGTH
        and whole.isdigit()
        and whole.isascii()
        and (not dot or (fraction.isdigit() and fraction.isascii()))
    ):
        pass  # digits, maybe a fraction: what producers write, without the regular expression
    elif len(value) > _MAX_NUMBER_LENGTH or not _DECIMAL.fullmatch(value):
        problems.append((f"{key} format", f"{key} {_shown(value)} is not a decimal number"))
        return None
    number = float(value)
    if not 0.0 < number < 1e11:  # after 1970 and before 5138
        problems.append((f"{key} range", f"{key} {value} is out of range"))
        return None
    return number


def _check_version(
    version: str | None, carrier: Mapping[str, str], problems: list[Problem], job_description: str
) -> None:
    """Warn about a version other than ``1.x``; the keys are read by version 1's rules anyway.

    Reading on keeps the lineage of a newer producer's jobs whole, which ignoring its keys would
    not: the contract never changes what an existing key means (``docs/metadata.md``).
    """
    if version is None:
        if any(key in carrier for key in _PRODUCER_KEYS):
            problems.append(("version missing", f"{KEY_VERSION} is missing, read as {VERSION}"))
        return
    match = _VERSION_TEXT.fullmatch(version) if len(version) <= _MAX_NUMBER_LENGTH else None
    major = int(match.group(1)) if match is not None else 0
    if major == int(VERSION):
        return
    if major == 0:
        problems.append(
            (
                "version malformed",
                f"{KEY_VERSION} {_shown(version)} is malformed, read as {VERSION}",
            )
        )
        return
    if _limiter.first(("version", major)):
        logger.warning(
            "jobtrace: %s carries metadata of contract version %s; this jobtrace reads version %s,"
            " so it uses the keys it knows and ignores the rest (logged once per process)",
            _who(job_description, carrier),
            version,
            VERSION,
        )


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


def _extract(carrier: Mapping[str, str], problems: list[Problem]) -> Context | None:
    """The propagator's reading of the carrier; a propagator that raises costs the trace link."""
    try:
        return propagate.extract(carrier, getter=_getter)
    except Exception as error:
        problems.append(("propagator", f"the propagator failed ({type(error).__name__})"))
        return None


def _trace_context(carrier: dict[str, str], problems: list[Problem]) -> Context | None:
    fields = _propagation_fields()
    present: list[str] = []
    folded = False
    for key in carrier:
        lowered = key.lower()
        if lowered in fields:
            present.append(lowered)
            folded = folded or fields[lowered] != key
    if not present:
        return None
    if folded:
        # Some transports (HTTP-like headers) fold case: give the propagator its keys back.
        carrier = {fields.get(k.lower(), k): v for k, v in carrier.items()}
    context = _extract(carrier, problems)
    if context is None:
        return None
    if not get_current_span(context).get_span_context().is_valid and any(
        key not in _NOT_A_PARENT for key in present
    ):
        problems.append(("trace context", "trace context is malformed"))
        # Keep what else it carried (baggage), without a parent span.
        kept = {
            k: v for k, v in carrier.items() if k.lower() not in fields or k.lower() == "baggage"
        }
        context = _extract(kept, problems)
    return context


def read_metadata(metadata: object, *, job_description: str) -> Incoming:
    """Parse a job's metadata; whatever is malformed is dropped or repaired, with one warning.

    Never raises, whatever ``metadata`` is. The warning names the job by ``job_description`` and
    by the id its metadata carries, and is rate-limited (see the module's docstring).

    Args:
        metadata: The job's metadata as it arrived: anything at all.
        job_description: Names the job in the warning (its name, and its queue's id if known).
    """
    return _read_described(metadata, lambda: job_description)


def read_run_metadata(metadata: object, name: str, job_id: str | None) -> Incoming:
    """:func:`read_metadata` of a job run's metadata, the job described only if a warning needs it.

    The run of job ``name`` (with the queue's id ``job_id``, if any); the description is made for
    metadata that is not well formed, which is all a warning or an error log names.
    """
    return _read_described(metadata, lambda: f"job {name} {job_id or ''}".rstrip())


def _read_described(metadata: object, describe: Callable[[], str]) -> Incoming:
    """The common case without a copy, else the checked way; ``describe()`` names the job."""
    if metadata is None:
        return _EMPTY
    try:
        if type(metadata) is dict:
            incoming = _read_well_formed(metadata)
            if incoming is not None:
                return incoming
        return _read_checked(metadata, describe())
    except Exception:  # a bug here must not cost the job its span
        logger.warning("jobtrace: reading the metadata of %s failed", describe(), exc_info=True)
        return _EMPTY


def _plain_id(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def _plain_int(value: object, low: int, high: int) -> int | None:
    if type(value) is not str or not (value.isascii() and value.isdigit() and len(value) < 19):
        return None
    number = int(value)
    return number if low <= number <= high else None


def _plain_time(value: object) -> float | None:
    # ASCII digits, maybe a fraction: what _read_float reads without a problem, in one match.
    if type(value) is not str or len(value) > _MAX_NUMBER_LENGTH or not _TIME(value):
        return None
    number = float(value)
    return number if 0.0 < number < 1e11 else None


def _read_well_formed(metadata: dict[Any, Any]) -> Incoming | None:
    """The common case, read without building a sanitised copy: ``None`` unless all is in order.

    In order means what :func:`_read_checked` would read without a single problem: plain string
    values, version 1 or 1.1, valid ids and numbers, the propagator's keys in its own spelling and
    a valid parent if any. Anything else (``None``) goes the checked way, which says what is wrong.
    """
    get = metadata.get
    found = 0
    version = get(KEY_VERSION)
    if version is not None:
        if version != VERSION and version != VERSION_1_1:
            return None
        found += 1
    job_id = get(KEY_JOB_ID)
    if job_id is not None:
        if not _plain_id(job_id):
            return None
        found += 1
    parent_job_id = get(KEY_PARENT_JOB_ID)
    if parent_job_id is not None:
        if not _plain_id(parent_job_id):
            return None
        found += 1
    root_job_id = get(KEY_ROOT_JOB_ID)
    if root_job_id is not None:
        if not _plain_id(root_job_id):
            return None
        found += 1
    if version is None and found:
        return None  # producer keys without a version: a warning to give
    raw = get(KEY_DEPTH)
    depth = None
    if raw is not None:
        depth = _plain_int(raw, 0, MAX_DEPTH)
        if depth is None:
            return None
        found += 1
    raw = get(KEY_ENQUEUED_AT)
    enqueued_at = None
    if raw is not None:
        enqueued_at = _plain_time(raw)
        if enqueued_at is None:
            return None
        found += 1
    raw = get(KEY_DUE_AT)
    due_at = None
    if raw is not None:
        due_at = _plain_time(raw)
        if due_at is None:
            return None
        found += 1
    relationship = get(KEY_RELATIONSHIP)
    if relationship is not None:
        if type(relationship) is not str or relationship not in RELATIONSHIPS:
            return None
        found += 1
    if version is None and found:
        return None
    raw = get(KEY_ATTEMPT)
    attempt = None
    if raw is not None:
        attempt = _plain_int(raw, 1, MAX_ATTEMPT)
        if attempt is None:
            return None
        found += 1
    raw = get(KEY_PREVIOUS_SPAN)
    previous_span = None
    if raw is not None:
        previous_span = parse_span_ref(raw) if type(raw) is str else None
        if previous_span is None:
            return None
        found += 1
    fields = _propagation_fields()
    present: list[str] = []
    for field in fields.values():
        value = get(field)
        if value is not None:
            if type(value) is not str or len(value) > MAX_VALUE_LENGTH:
                return None
            present.append(field)
    if found + len(present) != len(metadata):
        # Keys of others: harmless, unless one is a propagator's key in another case (or not a
        # plain string key), which the checked way deals with.
        for key in metadata:
            if type(key) is not str or (key not in present and key.lower() in fields):
                return None
    context = None
    if present:
        try:
            context = propagate.extract(metadata, getter=_getter)
        except Exception:
            return None
        if not get_current_span(context).get_span_context().is_valid and any(
            field not in _NOT_A_PARENT for field in present
        ):
            return None
    # All ten fields in order, without the named tuple's keyword-parsing __new__.
    incoming: Incoming = _new_tuple(
        Incoming,
        (
            context,
            job_id,
            parent_job_id,
            root_job_id,
            depth,
            enqueued_at,
            relationship,
            attempt,
            previous_span,
            due_at,
        ),
    )
    return incoming


def _read_checked(metadata: object, job_description: str) -> Incoming:
    """Any metadata at all: sanitised, each key checked, every problem named in one warning."""
    problems: list[Problem] = []
    carrier = _sanitise(metadata, problems)
    context = _trace_context(carrier, problems) if carrier else None
    version = carrier.get(KEY_VERSION)
    if version != VERSION and version != VERSION_1_1:
        _check_version(version, carrier, problems, job_description)
    relationship = carrier.get(KEY_RELATIONSHIP)
    if relationship is not None and relationship not in RELATIONSHIPS:
        problems.append(
            (KEY_RELATIONSHIP, f"{KEY_RELATIONSHIP} is not one of {sorted(RELATIONSHIPS)}")
        )
        relationship = None
    previous = carrier.get(KEY_PREVIOUS_SPAN)
    previous_span = parse_span_ref(previous)
    if previous is not None and previous_span is None:
        problems.append((KEY_PREVIOUS_SPAN, f"{KEY_PREVIOUS_SPAN} is malformed"))
    get = carrier.get
    incoming = Incoming(
        context,
        None if get(KEY_JOB_ID) is None else _read_id(carrier, KEY_JOB_ID, problems),
        None if get(KEY_PARENT_JOB_ID) is None else _read_id(carrier, KEY_PARENT_JOB_ID, problems),
        None if get(KEY_ROOT_JOB_ID) is None else _read_id(carrier, KEY_ROOT_JOB_ID, problems),
        _read_int(carrier, KEY_DEPTH, 0, MAX_DEPTH, problems),
        _read_float(carrier, KEY_ENQUEUED_AT, problems),
        relationship,  # type: ignore[arg-type]
        None
        if get(KEY_ATTEMPT) is None
        else _read_int(carrier, KEY_ATTEMPT, 1, MAX_ATTEMPT, problems),
        previous_span,
        None if get(KEY_DUE_AT) is None else _read_float(carrier, KEY_DUE_AT, problems),
    )
    if problems:
        _warn(
            tuple(kind for kind, _ in problems),
            "jobtrace: ignoring malformed metadata of %s: %s",
            _who(job_description, carrier, incoming.job_id),
            "; ".join(text for _, text in problems),
        )
    return incoming


def _who(job_description: str, carrier: Mapping[str, str], job_id: str | None = None) -> str:
    """The job as a warning names it: its description, and the id its metadata gives it."""
    who = _printable(job_description)
    if job_id is None:
        raw = carrier.get(KEY_JOB_ID)
        job_id = None if raw is None else repair_job_id(raw) if raw else None
    if job_id is not None and job_id not in who:
        who += f" (job id {_printable(job_id)} in its metadata)"
    return who


# -- writing ----------------------------------------------------------------------------------------


def write_lineage(
    carrier: MutableMapping[str, Any],
    *,
    job_id: str,
    parent_job_id: str | None,
    root_job_id: str,
    depth: int,
    enqueued_at: float,
    relationship: Relationship,
    due_at: float | None = None,
) -> None:
    """Write the lineage keys of a job about to be enqueued.

    Args:
        due_at: When a delayed job may run (Unix seconds); writes ``jobtrace-due-at`` and so
            contract version 1.1. ``None`` for a job that may run at once.
    """
    carrier[KEY_VERSION] = VERSION if due_at is None else VERSION_1_1
    carrier[KEY_JOB_ID] = job_id
    if parent_job_id is not None:
        carrier[KEY_PARENT_JOB_ID] = parent_job_id
    carrier[KEY_ROOT_JOB_ID] = root_job_id
    carrier[KEY_DEPTH] = str(depth)
    carrier[KEY_ENQUEUED_AT] = f"{enqueued_at:.6f}"
    if due_at is not None:
        carrier[KEY_DUE_AT] = f"{due_at:.6f}"
    carrier[KEY_RELATIONSHIP] = relationship


def retry_metadata(span_context: SpanContext, next_attempt: int) -> dict[str, str]:
    """Keys to carry into the next attempt so its span links back to this one."""
    keys = {KEY_ATTEMPT: str(next_attempt)}
    if span_context.is_valid and span_context != INVALID_SPAN_CONTEXT:
        keys[KEY_PREVIOUS_SPAN] = format_span_ref(span_context)
    return keys
