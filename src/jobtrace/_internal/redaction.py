"""Turning job arguments into a short, redacted JSON string fit for a span and a database row."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jobtrace._internal.config import Settings

REDACTED = "[REDACTED]"
TRUNCATED = "…[truncated]"
_MAX_NESTING = 8
_MAX_ITEMS = 100
_MAX_STRING = 1000


_SCALARS = (bool, int, float, type(None))
# One encoder for every call: ``json.dumps`` with options builds a new one each time.
_encoder = json.JSONEncoder(ensure_ascii=False, default=repr, separators=(",", ":"))


def _clean(value: Any, redact_keys: frozenset[str], level: int) -> Any:
    kind = type(value)
    if kind is str:
        return value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + TRUNCATED
    if kind in _SCALARS:
        return value
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + TRUNCATED
    if level >= _MAX_NESTING:
        return "…"
    if kind is dict or isinstance(value, Mapping):  # skip the slow ABC check for plain dicts
        out: dict[str, Any] = {}
        for index, (key, item) in enumerate(value.items()):
            if index >= _MAX_ITEMS:
                out["…"] = f"{len(value) - _MAX_ITEMS} more"
                break
            name = key if type(key) is str else str(key)
            if is_secret(name, redact_keys):
                out[name] = REDACTED
            elif type(item) in _SCALARS:  # the usual argument: no call needed
                out[name] = item
            else:
                out[name] = _clean(item, redact_keys, level + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        cleaned = [_clean(item, redact_keys, level + 1) for item in items[:_MAX_ITEMS]]
        if len(items) > _MAX_ITEMS:
            cleaned.append(f"… {len(items) - _MAX_ITEMS} more")
        return cleaned
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return repr(value)[:200]


_secret_cache: dict[frozenset[str], dict[str, bool]] = {}
_MAX_CACHED_KEYS = 4096


def is_secret(key: str, redact_keys: frozenset[str]) -> bool:
    """Whether an argument named ``key`` must not be recorded (case-insensitive substring).

    Jobs pass the same argument names over and over, so answers are cached per key set.
    """
    cache = _secret_cache.get(redact_keys)
    if cache is None:
        if len(_secret_cache) > 16:
            _secret_cache.clear()
        cache = _secret_cache.setdefault(redact_keys, {})
    found = cache.get(key)
    if found is None:
        lowered = key.lower()
        found = any(secret in lowered for secret in redact_keys)
        if len(cache) < _MAX_CACHED_KEYS:
            cache[key] = found
    return found


def redact_args(args: Any, *, redact_keys: frozenset[str], max_length: int) -> str:
    """JSON of ``args`` with secrets replaced and the whole cut to ``max_length`` characters.

    Strings are never scanned for secrets, only keys are: a secret passed positionally is the
    caller's to leave out.
    """
    cleaned = _clean(args, redact_keys, 0)
    text = _encoder.encode(cleaned)
    if len(text) > max_length:
        keep = max(0, max_length - len(TRUNCATED))
        text = text[:keep] + TRUNCATED
    return text


def args_text(settings: Settings, args: Any) -> str | None:
    """The recorded form of a job's arguments under ``settings``, or ``None`` when not recorded."""
    if args is None or not settings.record_args:
        return None
    return redact_args(args, redact_keys=settings.redact_keys, max_length=settings.max_args_length)


def call_args(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """A call's arguments as recorded: keyword arguments alone when there are no positional ones."""
    if not args:
        return dict(kwargs)
    if not kwargs:
        return list(args)
    return {"args": list(args), "kwargs": dict(kwargs)}
