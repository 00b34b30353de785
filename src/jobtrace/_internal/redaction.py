"""Turning job arguments into a short, redacted JSON string fit for a span and a database row.

Arguments are whatever the caller passed: an int too long to print, an object whose ``__repr__``
raises, a mapping whose iteration raises, ``str`` subclasses overriding every method. None of it
may cost the job its span or its row, so each part that cannot be turned into text is replaced by
a marker (:func:`unrepresentable`) and the rest is recorded as usual.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jobtrace._internal.config import Settings

REDACTED = "[REDACTED]"
TRUNCATED = "…[truncated]"
_MAX_NESTING = 8
_MAX_ITEMS = 100
_MAX_STRING = 1000
_MAX_REPR = 200
# Python refuses to print an int of more than ``sys.get_int_max_str_digits()`` digits (4300 by
# default, 640 at the least); ints this small print under any setting.
_INT_LIMIT = 1 << 2048

_SCALARS = (bool, float, type(None))


def unrepresentable(value: object) -> str:
    """The marker recorded in place of a value that cannot be turned into text."""
    return f"<unrepresentable: {type(value).__name__}>"


def safe_str(value: object, limit: int) -> str:
    """``str(value)`` cut to ``limit`` characters; a marker when ``__str__`` raises.

    An exception's message is such a value: one whose ``__str__`` raises must still leave its
    job a ``finished`` record.
    """
    try:
        text = str(value)
        return str.__str__(text)[:limit]  # a str subclass from __str__ could override slicing
    except Exception:
        return unrepresentable(value)


def _text(value: str) -> str:
    if type(value) is not str:
        value = str.__str__(value)  # a plain copy: no overridden method runs from here on
    return value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + TRUNCATED


def _big_int(value: int) -> str:
    return f"<int of {value.bit_length()} bits>"


def _clean(value: Any, redact_keys: frozenset[str], level: int) -> Any:
    kind = type(value)
    if kind is str:
        return value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + TRUNCATED
    if kind is int:
        return value if -_INT_LIMIT < value < _INT_LIMIT else _big_int(value)
    if kind in _SCALARS:
        return value
    try:
        return _clean_other(value, redact_keys, level)
    except Exception:
        return unrepresentable(value)


def _clean_other(value: Any, redact_keys: frozenset[str], level: int) -> Any:
    """Everything but the plain scalars: subclasses, containers, arbitrary objects."""
    if type(value) is dict:  # the usual arguments: no ABC check, no scalar checks first
        return _clean_mapping(value, redact_keys, level) if level < _MAX_NESTING else "…"
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, int):
        number = int.__int__(value)  # the plain int, whatever the subclass overrides
        return number if -_INT_LIMIT < number < _INT_LIMIT else _big_int(number)
    if isinstance(value, float):
        return float.__float__(value)
    if level >= _MAX_NESTING:
        return "…"
    if isinstance(value, Mapping):
        return _clean_mapping(value, redact_keys, level)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        cleaned = [_clean(item, redact_keys, level + 1) for item in items[:_MAX_ITEMS]]
        if len(items) > _MAX_ITEMS:
            cleaned.append(f"… {len(items) - _MAX_ITEMS} more")
        return cleaned
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str.__str__(repr(value))[:_MAX_REPR]


def _clean_mapping(value: Mapping[Any, Any], redact_keys: frozenset[str], level: int) -> Any:
    """A mapping's items cleaned, secrets replaced; a plain dict of short scalars without a call."""
    secrets = _secrets(redact_keys)
    out: dict[str, Any] = {}
    for index, (key, item) in enumerate(value.items()):
        if index >= _MAX_ITEMS:
            out["…"] = f"{len(value) - _MAX_ITEMS} more"
            break
        name = key if type(key) is str else _key_text(key)
        secret = secrets.get(name)
        if secret is None:
            secret = is_secret(name, redact_keys)
        item_kind = type(item)
        if secret:
            out[name] = REDACTED
        elif item_kind is str:
            out[name] = item if len(item) <= _MAX_STRING else item[:_MAX_STRING] + TRUNCATED
        elif item_kind is int:
            out[name] = item if -_INT_LIMIT < item < _INT_LIMIT else _big_int(item)
        elif item_kind in _SCALARS:
            out[name] = item
        else:
            out[name] = _clean(item, redact_keys, level + 1)
    return out


def _key_text(key: object) -> str:
    """A mapping key as JSON names it: a string as itself, anything else as its ``str``."""
    if isinstance(key, str):
        return str.__str__(key)
    if type(key) is int and not -_INT_LIMIT < key < _INT_LIMIT:
        return _big_int(key)
    return safe_str(key, _MAX_REPR)


_secret_cache: dict[frozenset[str], dict[str, bool]] = {}
_MAX_CACHED_KEYS = 4096


def _secrets(redact_keys: frozenset[str]) -> dict[str, bool]:
    """The cached answers of :func:`is_secret` for this key set (argument name to answer)."""
    cache = _secret_cache.get(redact_keys)
    if cache is None:
        if len(_secret_cache) > 16:
            _secret_cache.clear()
        cache = _secret_cache.setdefault(redact_keys, {})
    return cache


def is_secret(key: str, redact_keys: frozenset[str]) -> bool:
    """Whether an argument named ``key`` must not be recorded (case-insensitive substring).

    Jobs pass the same argument names over and over, so answers are cached per key set.
    """
    cache = _secrets(redact_keys)
    found = cache.get(key)
    if found is None:
        lowered = key.lower()
        found = any(secret in lowered for secret in redact_keys)
        if len(cache) < _MAX_CACHED_KEYS:
            cache[key] = found
    return found


# One encoder for every call: ``json.dumps`` with options builds a new one each time. ``_clean``
# leaves only JSON's own types, so ``default`` is a last resort that never raises; and it builds
# new containers nested at most ``_MAX_NESTING`` deep, so there is no cycle to check for.
_encoder = json.JSONEncoder(
    ensure_ascii=False, default=unrepresentable, separators=(",", ":"), check_circular=False
)


def _make_fast_encode() -> Callable[[Any], str]:
    """``_encoder.encode`` without the per-call set-up (a closure and a C encoder made each time).

    The C encoder ``JSONEncoder`` itself builds, made once, when this Python has one (CPython
    3.10-3.13 share its signature) and it encodes a probe as ``_encoder`` does; else the encoder.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _encoder.encode
    try:
        # markers (no cycle check), default, string encoder, indent, key and item separators,
        # sort_keys, skipkeys, allow_nan: what ``_encoder`` passes.
        iterencode = make(
            None, unrepresentable, json.encoder.encode_basestring, None, ":", ",", False, False, True
        )  # fmt: skip
        probe = {"a": [1, 2.5, None, True, 'é\n"'], "b": {"c": float("inf")}, "d": object()}
        if "".join(iterencode(probe, 0)) != _encoder.encode(probe):
            return _encoder.encode
    except Exception:
        return _encoder.encode

    def encode(value: Any) -> str:
        return "".join(iterencode(value, 0))

    return encode


_encode = _make_fast_encode()


def redact_args(args: Any, *, redact_keys: frozenset[str], max_length: int) -> str:
    """JSON of ``args`` with secrets replaced and the whole cut to ``max_length`` characters.

    Strings are never scanned for secrets, only keys are: a secret passed positionally is the
    caller's to leave out. Parts that cannot be turned into text are replaced by a marker.
    """
    try:
        text = _encode(_clean(args, redact_keys, 0))
    except Exception:  # nothing known gets here; the job's record matters more than its args
        text = _encoder.encode(unrepresentable(args))
    if len(text) > max_length:
        keep = max(0, max_length - len(TRUNCATED))
        text = text[:keep] + TRUNCATED
    return text


def _plain_dict(
    items: tuple[tuple[Any, Any], ...], redact_keys: frozenset[str]
) -> dict[str, Any] | None:
    """:func:`_clean` of a dict's ``items`` if they are short plain scalars under string keys.

    The same dict :func:`_clean_mapping` makes of it, else ``None``. Such arguments' JSON depends
    on nothing but the keys in order and the (immutable) values, which :func:`args_text` relies
    on. ``items`` is one snapshot of the dict, so its text and its cache entry say the same.
    """
    if len(items) > _MAX_ITEMS:
        return None
    secrets = _secrets(redact_keys)
    out: dict[str, Any] = {}
    for key, item in items:
        if type(key) is not str:
            return None
        kind = type(item)
        if kind is str:
            if len(item) > _MAX_STRING:
                return None
        elif kind is int:
            if not -_INT_LIMIT < item < _INT_LIMIT:
                return None
        elif kind not in _SCALARS:
            return None
        secret = secrets.get(key)
        if secret is None:
            secret = is_secret(key, redact_keys)
        out[key] = REDACTED if secret else item
    return out


_second = operator.itemgetter(1)
_last: tuple[dict[Any, Any], tuple[str, ...], tuple[object, ...], frozenset[str], int, str] | None
_last = None
"""The last plain dict of arguments recorded: the dict, its keys and values, the redacted keys and
length limit, and its text. One entry: a job's run in the process that sent it (``LocalQueue``, an
eager mode, a benchmark) records the very dict the send did, unchanged, so its text is the
send's."""


def args_text(settings: Settings, args: Any) -> str | None:
    """The recorded form of a job's arguments under ``settings``, or ``None`` when not recorded.

    A dict of plain scalars recorded just before, the same object with the same keys in the same
    order and the same (immutable) values, under the same settings, is not redacted again.
    """
    global _last
    if args is None or not settings.record_args:
        return None
    redact_keys = settings.redact_keys
    max_length = settings.max_args_length
    if type(args) is not dict:
        return redact_args(args, redact_keys=redact_keys, max_length=max_length)
    last = _last
    if (
        last is not None
        and last[0] is args
        and last[3] is redact_keys
        and last[4] == max_length
        and last[1] == tuple(args)
        and all(map(operator.is_, args.values(), last[2]))
    ):
        return last[5]
    try:
        items = tuple(args.items())  # one read: another thread may write the dict meanwhile
    except RuntimeError:  # changed size while read: the general way says what it can
        return redact_args(args, redact_keys=redact_keys, max_length=max_length)
    plain = _plain_dict(items, redact_keys)
    if plain is None:
        return redact_args(args, redact_keys=redact_keys, max_length=max_length)
    text = _encode(plain)
    if len(text) > max_length:
        text = text[: max(0, max_length - len(TRUNCATED))] + TRUNCATED
    _last = (args, tuple(plain), tuple(map(_second, items)), redact_keys, max_length, text)
    return text


def call_args(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """A call's arguments as recorded: keyword arguments alone when there are no positional ones."""
    if not args:
        return dict(kwargs)
    if not kwargs:
        return list(args)
    return {"args": list(args), "kwargs": dict(kwargs)}
