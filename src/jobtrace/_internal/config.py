"""Process-wide settings: relationship policy, redaction, limits, flushing.

Settings are an immutable snapshot swapped atomically by :func:`update_settings`, so the hot path
reads one global without a lock.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from jobtrace._internal.semconv import SPAN_NAMES, SpanNames

Relationship = Literal["child", "link", "none"]
RELATIONSHIPS: frozenset[str] = frozenset(get_args(Relationship))

DEFAULT_REDACT_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "authorization",
        "api_key",
        "apikey",
        "cookie",
        "credential",
        "private_key",
    }
)


@dataclass(frozen=True)
class Settings:
    """What jobtrace does on every enqueue and every job run.

    Attributes:
        relationship: How a child job's trace relates to its producer's by default.
        relationship_by_name: Per job name overrides of ``relationship``.
        link_after_fanout: A parent's enqueues past this count use ``link`` (``None``: never).
        link_after_delay: Jobs delayed by more than this many seconds use ``link`` (``None``: never).
        redact_keys: Argument keys whose values are never recorded (case-insensitive substring).
        max_args_length: Longest recorded argument JSON, in characters.
        max_attribute_length: Longest string a custom attribute keeps, in characters.
        record_args: Whether job arguments are recorded at all.
        error_on_retry: Whether a failed attempt that will be retried gets ERROR status.
        span_names: ``job`` names spans ``process <job name>`` / ``send <job name>``;
            ``conventions`` names them ``process <queue>`` / ``send <queue>``, as the messaging
            conventions do.
        flush_on_job_end: Flush telemetry when a job ends: ``None`` does it in forked processes only.
        flush_timeout: Longest a job's end waits for its spans, metrics and lineage records to go
            out, in seconds: one budget shared by the three, not one each.
        exit_timeout: Longest a process exit waits for the same, in seconds; also how long one
            export of jobtrace's OTLP exporters may take, retries included.
    """

    relationship: Relationship = "child"
    relationship_by_name: Mapping[str, Relationship] = field(default_factory=dict)
    link_after_fanout: int | None = 1000
    link_after_delay: float | None = 3600.0
    redact_keys: frozenset[str] = DEFAULT_REDACT_KEYS
    max_args_length: int = 4096
    max_attribute_length: int = 4096
    record_args: bool = True
    error_on_retry: bool = False
    span_names: SpanNames = "job"
    flush_on_job_end: bool | None = None
    flush_timeout: float = 1.0
    exit_timeout: float = 3.0

    def relationship_for(self, job_name: str) -> Relationship:
        """The configured relationship for ``job_name``, before automatic ``link`` rules."""
        return self.relationship_by_name.get(job_name, self.relationship)


def _check_relationship(value: str) -> Relationship:
    if value not in RELATIONSHIPS:
        raise ValueError(f"relationship must be one of {sorted(RELATIONSHIPS)}, not {value!r}")
    return value  # type: ignore[return-value]


def check_seconds(name: str, value: object) -> float:
    """``value`` as a number of seconds, not negative; ``ValueError``/``TypeError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"{name} must be 0 or more seconds, not {value!r}")
    return seconds


def _seconds_from_env(variable: str, default: float) -> float:
    """A duration from the environment; a bad value costs a warning, never the import."""
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return default
    try:
        return check_seconds(variable, float(raw))
    except ValueError:
        logging.getLogger("jobtrace").warning(
            "jobtrace: %s=%r is not a number of seconds; using %s", variable, raw, default
        )
        return default


def _from_env() -> Settings:
    """Settings from ``JOBTRACE_*`` variables, so workers can be tuned without code."""
    base = Settings()
    relationship = os.environ.get("JOBTRACE_RELATIONSHIP")
    record_args = os.environ.get("JOBTRACE_RECORD_ARGS")
    return dataclasses.replace(
        base,
        relationship=_check_relationship(relationship) if relationship else base.relationship,
        record_args=base.record_args if record_args is None else record_args != "0",
        flush_timeout=_seconds_from_env("JOBTRACE_FLUSH_TIMEOUT", base.flush_timeout),
        exit_timeout=_seconds_from_env("JOBTRACE_EXIT_TIMEOUT", base.exit_timeout),
    )


_settings = _from_env()


def get_settings() -> Settings:
    """The settings in force."""
    return _settings


def update_settings(**changes: Any) -> Settings:
    """Replace some settings; unknown names and bad relationships raise ``TypeError``/``ValueError``."""
    global _settings
    if "relationship" in changes:
        _check_relationship(changes["relationship"])
    if "relationship_by_name" in changes:
        by_name = dict(changes["relationship_by_name"])
        for value in by_name.values():
            _check_relationship(value)
        changes["relationship_by_name"] = by_name
    if "span_names" in changes and changes["span_names"] not in SPAN_NAMES:
        raise ValueError(
            f"span_names must be one of {sorted(SPAN_NAMES)}, not {changes['span_names']!r}"
        )
    if "redact_keys" in changes:
        changes["redact_keys"] = frozenset(k.lower() for k in _as_iterable(changes["redact_keys"]))
    for name in ("flush_timeout", "exit_timeout"):
        if name in changes:
            changes[name] = check_seconds(name, changes[name])
    _settings = dataclasses.replace(_settings, **changes)
    return _settings


def reset_settings() -> None:
    """Back to the defaults (and the environment): for tests."""
    global _settings
    _settings = _from_env()


def _as_iterable(value: Iterable[str] | str) -> Iterable[str]:
    return [value] if isinstance(value, str) else value
