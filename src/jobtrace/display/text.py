"""Words and formats both front ends use: the state order, the marks, times, durations, args.

Arguments are the longest thing a job row shows and the most useful: in a list of crashed batches
the upload path comes first and is the same for all of them, while the document ids that tell
them apart come last. :func:`shorten_args` cuts each text around where the texts differ rather
than at its end.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone

STUCK = "⚠"
FAILING = "✗"
#: States in the order a reader scans them: what waits, what runs, how things ended.
STATE_ORDER = (
    "scheduled",
    "queued",
    "stalled",
    "retrying",
    "running",
    "succeeded",
    "skipped",
    "cancelled",
    "failed",
    "discarded",
    "crashed",
    "unknown",
)
ELLIPSIS = "…"
#: What comes before a key of recorded JSON (compact, or as pasted): a cut starts at the key.
_KEY_STARTS = ('{"', ',"', ', "')


def state_order(states: Iterable[str]) -> list[str]:
    """``states`` in reading order; unknown ones (a newer jobtrace's) last, by name."""
    known = {state: index for index, state in enumerate(STATE_ORDER)}
    return sorted(states, key=lambda s: (known.get(s, len(known)), s))


def when(moment: datetime | None) -> str:
    """A UTC time to the second, ``-`` when unknown."""
    if moment is None:
        return "-"
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def span(seconds: float | None) -> str:
    """A duration as people say it: ``850ms``, ``42s``, ``41m``, ``2h05m``, ``3d4h``."""
    if seconds is None:
        return "-"
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{sign}{seconds:.3g}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{sign}{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{sign}{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{sign}{days}d{hours}h"


def short(text: str | None, width: int = 60) -> str:
    """One line of at most ``width`` characters (``-`` for ``None``), cut at its end."""
    if text is None:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + ELLIPSIS


def shorten_args(texts: Sequence[str | None], width: int = 60) -> list[str]:
    """Each of ``texts`` on one line of at most ``width`` characters, cut where they differ.

    Texts that fit are kept whole. When the texts share a long beginning (the same upload path,
    the same source), a cut one keeps the first few characters, then ``…``, then the field where
    they start to differ (``{"upload":"s3://…"document_ids":[201,202,…``), so what tells the jobs
    apart is on screen. One text, or texts that differ early, are cut at the end like
    :func:`short`. ``None`` is ``-``.
    """
    width = max(width, 8)
    lines = [None if text is None else " ".join(text.split()) for text in texts]
    distinct = {line for line in lines if line is not None}
    # Character by character on purpose: where the texts stop being the same.
    shared = len(os.path.commonprefix(sorted(distinct))) if len(distinct) > 1 else 0  # noqa: RUF071
    return [_shorten(line, width, shared) for line in lines]


def _shorten(line: str | None, width: int, shared: int) -> str:
    if line is None:
        return "-"
    if len(line) <= width:
        return line
    lead = min(width // 4, 12)
    if shared + lead < width:  # cut at the end, the difference and a little after are shown
        return line[: width - 1] + ELLIPSIS
    start = max(_key_start(line, shared, before) for before in _KEY_STARTS)
    if start <= lead or shared - start > width // 3:  # no field start near: a little context
        start = max(lead, shared - width // 4)
    kept = line[:lead] + ELLIPSIS + line[start:]
    return kept if len(kept) <= width else kept[: width - 1] + ELLIPSIS


def _key_start(line: str, end: int, before: str) -> int:
    """Where the last key that ``before`` introduces, before ``end``, starts (its quote); or 0."""
    found = line.rfind(before, 0, end)
    return found + len(before) - 1 if found >= 0 else 0
