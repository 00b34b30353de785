"""Argument recording: secrets redacted, size bounded, anything at all turned into JSON."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import jobtrace
from jobtrace._internal.config import Settings, update_settings
from jobtrace._internal.redaction import (
    _INT_LIMIT,
    _MAX_ITEMS,
    _MAX_STRING,
    REDACTED,
    TRUNCATED,
    args_text,
    call_args,
    is_secret,
    redact_args,
    safe_str,
)
from jobtrace.testing import CapturedTelemetry

DEFAULT = Settings()


def _recorded(args: object, settings: Settings = DEFAULT) -> object:
    text = args_text(settings, args)
    assert text is not None
    return json.loads(text)


def test_default_secret_keys_are_redacted_at_any_depth() -> None:
    """password/token/secret/authorization/api_key are redacted in any case, nested anywhere."""
    args = {
        "Password": "hunter2",
        "user": {"name": "ana", "API_KEY": "k-1", "tokens": ["t-1"]},
        "requests": [{"headers": {"Authorization": "Bearer x"}}, {"client_secret": "s"}],
        "page": 3,
    }
    assert _recorded(args) == {
        "Password": REDACTED,
        "user": {"name": "ana", "API_KEY": REDACTED, "tokens": REDACTED},
        "requests": [{"headers": {"Authorization": REDACTED}}, {"client_secret": REDACTED}],
        "page": 3,
    }


def test_redact_keys_are_configurable() -> None:
    """A configured key list replaces the default one."""
    settings = update_settings(redact_keys=["ssn"])
    assert _recorded({"SSN": "123", "password": "p"}, settings) == {
        "SSN": REDACTED,
        "password": "p",
    }


def test_is_secret_matches_substrings_case_insensitively() -> None:
    """A key containing a secret word, in any case, is secret."""
    keys = frozenset({"token"})
    assert is_secret("X-Refresh-TOKEN", keys)
    assert not is_secret("page", keys)


def test_huge_args_are_truncated_to_max_args_length() -> None:
    """A 1 MB argument is cut to ``max_args_length`` characters, marked as truncated."""
    for max_length in (100, 4096):
        settings = update_settings(max_args_length=max_length)
        for args in ({"blob": "x" * 1_000_000}, ["y" * 999] * 1000):
            text = args_text(settings, args)
            assert text is not None
            assert len(text) <= max_length
            assert TRUNCATED in text


def test_huge_collections_and_nesting_are_bounded() -> None:
    """Long collections and deep nesting are summarised instead of walked in full."""
    text = redact_args(list(range(10_000)), redact_keys=frozenset(), max_length=10**6)
    assert "9900 more" in text
    deep: object = "bottom"
    for _ in range(50):
        deep = {"d": deep}
    assert "bottom" not in redact_args(deep, redact_keys=frozenset(), max_length=10**6)


def test_non_json_values_survive_as_repr() -> None:
    """Values JSON cannot hold are recorded as their repr (bytes as their size)."""

    class Movie:
        def __repr__(self) -> str:
            return "<Movie 42>"

    recorded = _recorded(
        {
            "when": dt.date(2024, 5, 1),
            "price": Decimal("9.50"),
            "movie": Movie(),
            "ids": (1, 2),
            "raw": b"abc",
        }
    )
    assert recorded == {
        "when": "datetime.date(2024, 5, 1)",
        "price": "Decimal('9.50')",
        "movie": "<Movie 42>",
        "ids": [1, 2],
        "raw": "<3 bytes>",
    }


def test_nothing_is_recorded_when_turned_off() -> None:
    """``record_args=False`` and ``args=None`` record nothing."""
    assert args_text(Settings(record_args=False), {"a": 1}) is None
    assert args_text(DEFAULT, None) is None


def test_call_args_shape() -> None:
    """Keyword-only calls record a dict, positional-only a list, mixed calls both."""
    assert call_args((), {"a": 1}) == {"a": 1}
    assert call_args((1,), {}) == [1]
    assert call_args((1,), {"a": 2}) == {"args": [1], "kwargs": {"a": 2}}


def test_span_args_attributes_are_redacted(telemetry: CapturedTelemetry) -> None:
    """Neither the send span nor the process span carries a secret argument's value."""
    args = {"user": "ana", "password": "hunter2"}
    meta = jobtrace.prepare_enqueue("Login", args=args)
    with jobtrace.trace_job(meta, name="Login", args=args):
        pass

    @jobtrace.wrap_job
    def login(user: str, api_key: str) -> None:
        return None

    login(None, user="bo", api_key="k-123")
    recorded = [
        str((span.attributes or {})["jobtrace.job.args"])
        for span in telemetry.spans()
        if "jobtrace.job.args" in (span.attributes or {})
    ]
    assert len(recorded) == 3
    assert all("hunter2" not in text and "k-123" not in text for text in recorded)
    assert all(REDACTED in text for text in recorded)
    assert all(record.args is None or "hunter2" not in record.args for record in telemetry.records)


# -- values that cannot be turned into text -------------------------------------------------------


class _RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _NonStrRepr:
    def __repr__(self) -> Any:
        return 42


class _EvilKey(str):
    """A key whose ``__str__``, ``lower`` and slicing raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def lower(self) -> str:  # type: ignore[override]
        raise RuntimeError("no lower")

    def __getitem__(self, index: Any) -> str:  # type: ignore[override]
        raise RuntimeError("no slicing")

    def __len__(self) -> int:
        raise RuntimeError("no len")


class _RaisingMapping(Mapping[str, int]):
    def __getitem__(self, key: str) -> int:
        raise RuntimeError("no lookup")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("no iteration")

    def __len__(self) -> int:
        raise RuntimeError("no len")


class _RaisingList(list[int]):
    def __iter__(self) -> Iterator[int]:
        raise RuntimeError("no iteration")


class _BigInt(int):
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_unprintable_parts_are_replaced_and_the_rest_kept() -> None:
    """Each part that cannot become text is a marker; its siblings are recorded as usual."""
    huge = 10**5000  # past Python's int -> str limit
    recorded = _recorded(
        {
            "huge": huge,
            "huge_key": {huge: 1},
            "nested": [huge, -huge],
            "subclass": _BigInt(10**5000),
            "small": _BigInt(5),
            "repr": _RaisingRepr(),
            "not_str": _NonStrRepr(),
            "mapping": _RaisingMapping(),
            "list": _RaisingList([1]),
            "page": 3,
        }
    )
    bits = f"<int of {huge.bit_length()} bits>"
    assert recorded == {
        "huge": bits,
        "huge_key": {bits: 1},
        "nested": [bits, bits],
        "subclass": bits,
        "small": 5,
        "repr": "<unrepresentable: _RaisingRepr>",
        "not_str": "<unrepresentable: _NonStrRepr>",
        "mapping": "<unrepresentable: _RaisingMapping>",
        "list": "<unrepresentable: _RaisingList>",
        "page": 3,
    }


def test_str_subclass_keys_and_values_are_recorded_as_plain_text() -> None:
    """A ``str`` subclass is recorded by its characters, whatever its methods do."""
    assert _recorded({_EvilKey("Password"): "p", "name": _EvilKey("ana")}) == {
        "Password": REDACTED,
        "name": "ana",
    }


def test_safe_str_never_raises() -> None:
    """``safe_str`` is ``str`` cut short, or a marker when ``__str__`` raises or is not text."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message")

    class Sneaky:
        def __str__(self) -> str:
            return _EvilKey("sneaky message")

    assert safe_str(ValueError("bad value"), 3) == "bad"
    assert safe_str(Unprintable(), 100) == "<unrepresentable: Unprintable>"
    assert safe_str(Sneaky(), 6) == "sneaky"
    assert type(safe_str(Sneaky(), 6)) is str


def test_recorded_text_is_the_standard_encoders_compact_json() -> None:
    """The args text is what ``json.dumps`` (compact, non-ASCII kept) makes of the cleaned args."""
    args = {
        "name": "café ✓",
        "quote": 'say "hi"\n',
        "n": 3,
        "x": 2.5,
        "ok": True,
        "none": None,
        "inf": float("inf"),
        "nested": {"list": [1, "two", [3.0]], "token": "t"},
    }
    text = redact_args(args, redact_keys=DEFAULT.redact_keys, max_length=10_000)
    expected = {**args, "nested": {"list": [1, "two", [3.0]], "token": REDACTED}}
    assert text == json.dumps(expected, ensure_ascii=False, separators=(",", ":"))


class _PlainStr(str):
    pass


class _PlainInt(int):
    pass


class _PlainFloat(float):
    pass


# Dicts ``args_text`` records without the general walk: only str keys, and values of exactly
# bool, None, int (within the limit), float and str (within the limit), at most the item limit.
_FAST_PATH_CASES: list[dict[str, Any]] = [
    {},
    {"source": "example-cinema", "movie_id": 4402192, "page": 3, "api_key": "k-123"},
    {
        "yes": True,
        "no": False,
        "none": None,
        "zero": 0,
        "negative": -7,
        "x": 2.5,
        "negative_zero": -0.0,
        "tiny": 5e-324,
        "largest": 1.7976931348623157e308,
        "inf": float("inf"),
        "minus_inf": float("-inf"),
        "nan": float("nan"),
        "one": 1,
        "one_float": 1.0,
    },
    {
        "unicode": "café ✓ 日本語 😀",
        "quote": 'say "hi"',
        "backslash": "C:\\path\\ and \\u0041",
        "control": "\x00\x01\x08\t\n\x0b\x0c\r\x1b\x1f\x7f\x85",
        "separators": "\u2028\u2029",
        "surrogate": "\ud800",
        "empty": "",
    },
    {'k"ey': 1, "k\\ey": 2, "clé\n": 3, "": 4, "\x00": 5, "😀": 6},
    {"Password": "p", "API_KEY": 1, "x_token_y": None, "secret": 2.5, "page": 3},
    {f"k{i}": i for i in range(_MAX_ITEMS)},  # exactly the item limit
    {"at_limit": "y" * _MAX_STRING, "unicode_at_limit": "é" * _MAX_STRING},
    {"big": _INT_LIMIT - 1, "small": -_INT_LIMIT + 1},  # the largest ints printed as they are
]

# Dicts the fast way declines, each for one reason (most of them one past a limit); the general
# walk records them.
_GENERAL_PATH_CASES: list[dict[Any, Any]] = [
    {f"k{i}": i for i in range(_MAX_ITEMS + 1)},  # one item over the limit
    {f"k{i}": i for i in range(150)},
    {"page": 3, "over_limit": "y" * (_MAX_STRING + 1)},
    {"page": 3, "long": "y" * 5000},
    {"password": "p" * (_MAX_STRING + 1)},  # a secret, but too long to take the fast way
    {"big": _INT_LIMIT},
    {"small": -_INT_LIMIT},
    {"big": 1 << 3000},
    {1: "a", "b": 2},
    {"name": _PlainStr("ana")},
    {"page": _PlainInt(3)},
    {"x": _PlainFloat(2.5)},
    {"ids": (1, 2)},
    {"nested": {"page": 1}},
    {"password": [1, 2], "list": [1]},
    {"n": 1, "ok": True, "x": 1.0, "none": None, "inf": float("-inf"), "big": 1 << 3000},
    {"name": "café ✓", "quote": 'say "hi"\n', "long": "y" * 5000},
]


def test_plain_dict_args_are_recorded_as_the_general_way_records_them(monkeypatch: Any) -> None:
    """``args_text``'s way for dicts of plain scalars makes the text ``redact_args`` (which never
    takes it) makes, under several settings, and those dicts do take it; the dicts it declines
    (one past each limit, other types) are recorded the general way."""
    from jobtrace._internal import redaction

    results: list[object] = []
    real = redaction._plain_dict

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        results.append(result)
        return result

    monkeypatch.setattr(redaction, "_plain_dict", spy, raising=True)
    chosen_settings = (
        DEFAULT,
        Settings(max_args_length=60),
        Settings(redact_keys=frozenset({"page", "k1", "unicode"})),
    )
    for fast, cases in ((True, _FAST_PATH_CASES), (False, _GENERAL_PATH_CASES)):
        for args in cases:
            for chosen in chosen_settings:
                results.clear()
                expected = redact_args(
                    args, redact_keys=chosen.redact_keys, max_length=chosen.max_args_length
                )
                assert results == []  # the reference is the general walk alone
                assert args_text(chosen, dict(args)) == expected
                assert len(results) == 1
                assert (results[0] is not None) is fast, (fast, args)
                assert args_text(chosen, args) == expected
                assert args_text(chosen, args) == expected  # again: the same dict, unchanged


def test_the_same_unchanged_dict_is_not_redacted_twice(monkeypatch: Any) -> None:
    """A run of the dict its send just recorded (same process) reuses the send's text."""
    from jobtrace._internal import redaction

    args = {"source": "example-cinema", "movie_id": 4402192, "api_key": "k-123"}
    first = args_text(DEFAULT, args)
    calls: list[object] = []
    real = redaction._plain_dict
    monkeypatch.setattr(
        redaction, "_plain_dict", lambda *a: calls.append(a) or real(*a), raising=True
    )
    assert args_text(DEFAULT, args) == first
    assert calls == []
    assert args_text(DEFAULT, dict(args)) == first  # an equal copy is a different dict
    assert len(calls) == 1


def test_a_changed_dict_is_recorded_again() -> None:
    """A value replaced (even by an equal one of another type), keys reordered or added, other
    settings: each is recorded afresh, never the text of the dict as it was."""
    args: dict[str, Any] = {"page": 1, "name": "a"}
    assert args_text(DEFAULT, args) == '{"page":1,"name":"a"}'
    args["page"] = True  # == 1, and hashes alike
    assert args_text(DEFAULT, args) == '{"page":true,"name":"a"}'
    args["page"] = 1.0
    assert args_text(DEFAULT, args) == '{"page":1.0,"name":"a"}'
    del args["page"]
    args["page"] = 1.0  # same keys and values, another order
    assert args_text(DEFAULT, args) == '{"name":"a","page":1.0}'
    args["token"] = "t"
    assert args_text(DEFAULT, args) == '{"name":"a","page":1.0,"token":"[REDACTED]"}'
    assert (
        args_text(Settings(redact_keys=frozenset({"name"})), args)
        == '{"name":"[REDACTED]","page":1.0,"token":"t"}'
    )
    whole = '{"name":"a","page":1.0,"token":"[REDACTED]"}'
    assert args_text(Settings(max_args_length=20), args) == whole[: 20 - len(TRUNCATED)] + TRUNCATED


def test_a_dict_written_while_it_is_read_is_not_cached_with_another_moments_text(
    monkeypatch: Any,
) -> None:
    """The text and the cache entry come from one read: a later run of the dict is not stale."""
    from jobtrace._internal import redaction

    args: dict[str, Any] = {"page": 1, "a-key-no-test-has-seen": "x"}

    def another_thread_writes(key: str, redact_keys: frozenset[str]) -> bool:
        if key == "a-key-no-test-has-seen":
            args["page"] = 99  # another thread, between reading "page" and the last key
        return is_secret(key, redact_keys)

    monkeypatch.setattr(redaction, "is_secret", another_thread_writes)
    args_text(DEFAULT, args)
    monkeypatch.setattr(redaction, "is_secret", is_secret)
    assert args_text(DEFAULT, args) == redact_args(
        args, redact_keys=DEFAULT.redact_keys, max_length=DEFAULT.max_args_length
    )
