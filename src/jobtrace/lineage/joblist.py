"""Job lists that scale: filtered, keyset-paged and streamed, and the queues across runs.

A list is the jobs one :class:`JobFilter` matches, oldest enqueued first (``enqueued_at``, then
``job_id``; jobs without an enqueue time last, by id). Pages follow a :class:`Cursor` (the last
row's sort key, never an ``OFFSET``), so page 1,000 of a 100k-job stage costs what page 1 costs:
with a run, a stage and a state, every page is one range of the ``(root_job_id, depth, name,
state, enqueued_at, job_id)`` index (revision 0006). :func:`iter_jobs` walks every page on one
connection, for CSV and JSON streams that never hold the list in memory.

States are :class:`~jobtrace.JobState` values plus ``scheduled``, as the per-stage counts show
them: ``queued`` is a queued job due now, ``scheduled`` one whose ``due_at`` is still ahead. So a
count's link lists exactly the jobs it counted. The guide is ``docs/web.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    Table,
    and_,
    case,
    cast,
    false,
    func,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause

from jobtrace.lineage.models import (
    ACTIVE_QUEUE_STATES,
    ACTIVE_STATE_VALUES,
    ID_LENGTH,
    NAME_LENGTH,
    RARE_STATE_VALUES,
    RARE_STATES,
)
from jobtrace.records import JobState

__all__ = [
    "LIST_STATES",
    "MAX_COUNT",
    "MAX_PAGE",
    "SCHEDULED",
    "ArgsMatch",
    "Cursor",
    "FilterError",
    "JobFilter",
    "JobPage",
    "QueueRun",
    "QueueView",
    "iter_jobs",
    "job_page",
    "parse_filter",
    "queues",
]

#: Not a stored state: a queued job whose ``due_at`` is still ahead (as the stage counts say).
SCHEDULED = "scheduled"
#: The stored states of the partial indexes' predicates (models.py builds both from these).
_ACTIVE = frozenset(ACTIVE_STATE_VALUES)
_RARE = frozenset(RARE_STATE_VALUES)
#: Every state a list filters on: the stored ones and ``scheduled``.
LIST_STATES = (*(state.value for state in JobState), SCHEDULED)
#: Most jobs on one page.
MAX_PAGE = 1000
#: A list counts its jobs up to this many and then says "more than".
MAX_COUNT = 10_000
#: The query parameters :func:`parse_filter` reads, in the order links write them.
FILTER_PARAMS = (
    "run",
    "parent",
    "depth",
    "name",
    "state",
    "queue",
    "since",
    "until",
    "trace",
    "id",
    "args",
    "text",
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|[0-9]+")
_TRACE = re.compile(r"[0-9a-f]{32}")
_TEXT_LENGTH = 500
_DEPTH_MAX = 10_000


class FilterError(ValueError):
    """A filter or cursor a list cannot use; the message is one sentence, ready to show."""


@dataclass(frozen=True)
class ArgsMatch:
    """Jobs whose JSON args hold ``value`` at ``path`` (``movie_id=42``: ``{"movie_id": 42}``).

    ``value`` matches the scalar at the path as text: ``42`` matches ``42`` and ``"42"``.
    """

    path: tuple[str, ...]
    value: str

    def __str__(self) -> str:
        return ".".join(self.path) + "=" + self.value


@dataclass(frozen=True)
class JobFilter:
    """What a list holds; every field left ``None`` (or empty) matches every job.

    Attributes:
        run: The root job id of the run.
        parent: The parent's job id (its children).
        depth: The stage's depth; ``-1`` for jobs no record gave a depth.
        name: The job name (with ``depth``: one stage).
        states: Any of these states (:data:`LIST_STATES`).
        queue: The queue.
        since: Enqueued at or after.
        until: Enqueued before.
        trace_id: The trace (32 lowercase hex digits).
        id_prefix: Job ids starting with this, as typed (``7d1e`` or ``7d1e…``).
        args: A JSON path match on the args.
        text: Text the args contain, ignoring case.
    """

    run: str | None = None
    parent: str | None = None
    depth: int | None = None
    name: str | None = None
    states: tuple[str, ...] = ()
    queue: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    trace_id: str | None = None
    id_prefix: str | None = None
    args: ArgsMatch | None = None
    text: str | None = None

    def params(self) -> dict[str, str]:
        """The filter as query parameters, which :func:`parse_filter` reads back."""
        values: dict[str, Any] = {
            "run": self.run,
            "parent": self.parent,
            "depth": self.depth,
            "name": self.name,
            "state": ",".join(self.states) or None,
            "queue": self.queue,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "trace": self.trace_id,
            "id": self.id_prefix,
            "args": None if self.args is None else str(self.args),
            "text": self.text,
        }
        return {name: str(values[name]) for name in FILTER_PARAMS if values[name] is not None}

    @property
    def empty(self) -> bool:
        """Whether nothing narrows the list (every job in the store)."""
        return not self.params()


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the sort key of its last job. Opaque to clients (:meth:`encode`)."""

    enqueued_at: datetime | None
    job_id: str

    def encode(self) -> str:
        """The cursor as URL-safe text."""
        raw = json.dumps([_iso(self.enqueued_at), self.job_id], ensure_ascii=False)
        return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """A cursor from :meth:`encode`'s text.

        Raises:
            FilterError: Not a cursor a list wrote.
        """
        bad = FilterError("the cursor is not one a job list wrote: start from the first page")
        if len(text) > 4 * ID_LENGTH:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            value = json.loads(raw.decode("utf-8"))
        except (binascii.Error, ValueError, UnicodeError):
            raise bad from None
        if not (
            isinstance(value, list)
            and len(value) == 2
            and (value[0] is None or isinstance(value[0], str))
            and isinstance(value[1], str)
            and 0 < len(value[1]) <= ID_LENGTH
        ):
            raise bad
        enqueued = None
        if value[0] is not None:
            try:
                enqueued = _utc(datetime.fromisoformat(value[0]))
            except ValueError:
                raise bad from None
        return cls(enqueued, value[1])


@dataclass(frozen=True)
class JobPage:
    """One page of a list: its jobs, the cursor of the next page, and how many match in all.

    ``count`` stops at :data:`MAX_COUNT` (``count_capped`` then says there are more).
    """

    jobs: tuple[Any, ...]
    next: Cursor | None
    count: int
    count_capped: bool


@dataclass(frozen=True)
class QueueRun:
    """The jobs one run has waiting or running on one queue."""

    root_job_id: str | None
    root_name: str | None
    root_enqueued_at: datetime | None
    states: dict[str, int]
    oldest_enqueued_at: datetime | None

    @property
    def total(self) -> int:
        """Jobs of this run on the queue."""
        return sum(self.states.values())


@dataclass(frozen=True)
class QueueView:
    """One queue across runs: what is on it, per run, the run waiting the longest first."""

    queue: str | None
    runs: tuple[QueueRun, ...] = field(default_factory=tuple)

    @property
    def total(self) -> int:
        """Jobs on the queue."""
        return sum(run.total for run in self.runs)

    @property
    def oldest_enqueued_at(self) -> datetime | None:
        """When the job waiting the longest was enqueued."""
        known = [run.oldest_enqueued_at for run in self.runs if run.oldest_enqueued_at]
        return min(known) if known else None


def parse_filter(params: Mapping[str, str]) -> JobFilter:
    """The filter query parameters describe (see :data:`FILTER_PARAMS` and ``docs/web.md``).

    Ids are taken as given; resolving a run's prefix is the store's business.

    Raises:
        FilterError: A bad value, said in one sentence.
    """
    for name in FILTER_PARAMS:
        value = params.get(name)
        if value is not None and _CONTROL.search(value):
            raise FilterError(f"{name} has no control characters")
    depth = None
    if params.get("depth"):
        try:
            depth = int(params["depth"])
        except ValueError:
            depth = -2
        if not -1 <= depth <= _DEPTH_MAX:
            raise FilterError(f"depth must be a whole number from -1 (unknown) to {_DEPTH_MAX}")
    states: tuple[str, ...] = ()
    if params.get("state"):
        states = tuple(dict.fromkeys(s.strip() for s in params["state"].split(",") if s.strip()))
        unknown = [s for s in states if s not in LIST_STATES]
        if unknown:
            raise FilterError(f"state {unknown[0]!r} is not one of {', '.join(LIST_STATES)}")
    trace = _text(params, "trace", 32)
    if trace is not None:
        trace = trace.lower()
        if not _TRACE.fullmatch(trace):
            raise FilterError("trace must be a trace id: 32 hexadecimal digits")
    since, until = _time(params, "since"), _time(params, "until")
    if since is not None and until is not None and until <= since:
        raise FilterError("until must be later than since")
    return JobFilter(
        run=_text(params, "run", ID_LENGTH),
        parent=_text(params, "parent", ID_LENGTH),
        depth=depth,
        name=_text(params, "name", NAME_LENGTH),
        states=states,
        queue=_text(params, "queue", NAME_LENGTH),
        since=since,
        until=until,
        trace_id=trace,
        id_prefix=_text(params, "id", ID_LENGTH),
        args=_args(params.get("args")),
        text=_text(params, "text", _TEXT_LENGTH),
    )


def job_page(
    conn: Connection,
    jobs: Table,
    where: JobFilter,
    *,
    after: Cursor | None = None,
    limit: int = 50,
    now: datetime,
    count: bool = True,
) -> JobPage:
    """One page of the list: up to ``limit`` jobs after ``after``, from the table ``jobs``.

    Jobs with an enqueue time come first, by ``(enqueued_at, job_id)``, a row-value comparison
    an index serves as a range; then those without one, by ``job_id``: two queries, because
    neither database orders NULLs the same way nor puts them in an index range alike.
    """
    conditions = _conditions(conn, jobs, where, now)
    base = select(jobs).where(*conditions)
    rows: list[Any] = []
    if after is None or after.enqueued_at is not None:
        timed = base.where(jobs.c.enqueued_at.is_not(None))
        if after is not None:
            key = tuple_(jobs.c.enqueued_at, jobs.c.job_id)
            last = tuple_(
                literal(after.enqueued_at, jobs.c.enqueued_at.type), literal(after.job_id, String())
            )
            timed = timed.where(key > last)
        timed = timed.order_by(jobs.c.enqueued_at, jobs.c.job_id).limit(limit + 1)
        rows = list(conn.execute(timed))
    if len(rows) <= limit and where.since is None and where.until is None:
        untimed = base.where(jobs.c.enqueued_at.is_(None))
        if after is not None and after.enqueued_at is None:
            untimed = untimed.where(jobs.c.job_id > after.job_id)
        untimed = untimed.order_by(jobs.c.job_id).limit(limit + 1 - len(rows))
        rows += list(conn.execute(untimed))
    page = rows[:limit]
    following = None
    if len(rows) > limit and page:
        last = page[-1]
        following = Cursor(last.enqueued_at, last.job_id)
    total, capped = (0, False)
    if count:
        counted = (
            select(literal(1)).select_from(jobs).where(*conditions).limit(MAX_COUNT + 1)
        ).subquery()
        total = int(conn.execute(select(func.count()).select_from(counted)).scalar_one())
        total, capped = min(total, MAX_COUNT), total > MAX_COUNT
    return JobPage(tuple(page), following, total, capped)


def iter_jobs(
    conn: Connection, jobs: Table, where: JobFilter, *, now: datetime, batch_size: int = 1000
) -> Iterator[Any]:
    """Every job of the list in order, one keyset page of ``batch_size`` at a time."""
    after: Cursor | None = None
    while True:
        page = job_page(conn, jobs, where, after=after, limit=batch_size, now=now, count=False)
        yield from page.jobs
        if page.next is None:
            return
        after = page.next


def queues(conn: Connection, jobs: Table, *, now: datetime) -> list[QueueView]:
    """Every queue holding jobs that wait or run, with those jobs per run; oldest queue first.

    One ``GROUP BY`` over the active jobs only, which the ``(state, queue, root_job_id,
    enqueued_at, due_at)`` index (revision 0006) covers; jobs not due yet are left out (they are
    not waiting on the queue yet).
    """
    due = or_(jobs.c.due_at.is_(None), jobs.c.due_at <= now)
    stmt = (
        select(
            jobs.c.queue,
            jobs.c.root_job_id,
            jobs.c.state,
            func.count(),
            func.min(jobs.c.enqueued_at),
        )
        .where(text(ACTIVE_QUEUE_STATES), due)
        .group_by(jobs.c.queue, jobs.c.root_job_id, jobs.c.state)
    )
    grouped: dict[str | None, dict[str | None, tuple[dict[str, int], datetime | None]]] = {}
    for queue, root_id, state, number, oldest in conn.execute(stmt):
        states, known = grouped.setdefault(queue, {}).get(root_id, ({}, None))
        states[state] = int(number)
        grouped[queue][root_id] = (states, _earliest(known, oldest))
    root_ids = sorted({root for runs in grouped.values() for root in runs if root is not None})
    roots: dict[str, tuple[str, datetime | None]] = {}
    for start in range(0, len(root_ids), 500):
        chunk = root_ids[start : start + 500]
        found = select(jobs.c.job_id, jobs.c.name, jobs.c.enqueued_at).where(
            jobs.c.job_id.in_(chunk)
        )
        roots.update({job_id: (name, at) for job_id, name, at in conn.execute(found)})
    views = []
    for queue, runs in grouped.items():
        entries = [
            QueueRun(
                root_id,
                roots.get(root_id or "", (None, None))[0],
                roots.get(root_id or "", (None, None))[1],
                dict(sorted(states.items())),
                oldest,
            )
            for root_id, (states, oldest) in runs.items()
        ]
        entries.sort(key=lambda run: (_sort_time(run.oldest_enqueued_at), run.root_job_id or ""))
        views.append(QueueView(queue, tuple(entries)))
    views.sort(key=lambda view: (_sort_time(view.oldest_enqueued_at), view.queue or ""))
    return views


# The conditions of a filter.


def _conditions(
    conn: Connection, jobs: Table, where: JobFilter, now: datetime
) -> list[ColumnElement[bool] | TextClause]:
    c = jobs.c
    found: list[ColumnElement[bool] | TextClause] = []
    if where.run is not None:
        found.append(c.root_job_id == where.run)
    if where.parent is not None:
        found.append(c.parent_job_id == where.parent)
    if where.depth is not None:
        found.append(c.depth.is_(None) if where.depth == -1 else c.depth == where.depth)
    if where.name is not None:
        found.append(c.name == where.name)
    if where.states:
        found.append(_states(jobs, where.states, now))
        # The predicate of the partial index holding every one of these states, written out so
        # SQLite sees the query implies it: a list across runs by state reads that index.
        stored = {JobState.QUEUED.value if s == SCHEDULED else s for s in where.states}
        for states, predicate in ((_ACTIVE, ACTIVE_QUEUE_STATES), (_RARE, RARE_STATES)):
            if stored <= states:
                found.append(text(predicate))
    if where.queue is not None:
        found.append(c.queue == where.queue)
    if where.since is not None:
        found.append(c.enqueued_at >= where.since)
    if where.until is not None:
        found.append(c.enqueued_at < where.until)
    if where.trace_id is not None:
        found.append(c.trace_id == where.trace_id)
    if where.id_prefix is not None:
        found.append(_id_prefix(conn, jobs, where.id_prefix))
    if where.args is not None:
        found.append(_args_match(conn, jobs, where.args))
    if where.text is not None:
        found.append(c.args.ilike("%" + _escape(where.text) + "%", escape="\\"))
    return found


def _states(jobs: Table, states: tuple[str, ...], now: datetime) -> ColumnElement[bool]:
    """Stored states as they are, except that ``queued`` is due now and ``scheduled`` is not."""
    c = jobs.c
    queued = JobState.QUEUED.value
    not_due = and_(c.state == queued, c.due_at > now)
    plain = [s for s in states if s not in (queued, SCHEDULED)]
    parts: list[ColumnElement[bool]] = []
    if plain:
        parts.append(c.state.in_(plain))
    if queued in states and SCHEDULED in states:
        parts.append(c.state == queued)
    elif queued in states:
        parts.append(and_(c.state == queued, or_(c.due_at.is_(None), c.due_at <= now)))
    elif SCHEDULED in states:
        parts.append(not_due)
    return or_(*parts) if len(parts) > 1 else parts[0]


def _id_prefix(conn: Connection, jobs: Table, typed: str) -> ColumnElement[bool]:
    """Ids starting with ``typed`` (its ``…`` dropped): a primary-key range where it can be."""
    from jobtrace.lineage._sql import _orders_by_code_point, _prefix_upper
    from jobtrace.lineage.results import ELLIPSIS

    prefix = typed.removesuffix(ELLIPSIS)
    if not prefix:
        return true()
    column = jobs.c.job_id
    if _orders_by_code_point(conn):
        upper = _prefix_upper(prefix)
        return column >= prefix if upper is None else and_(column >= prefix, column < upper)
    return column.like(_escape(prefix) + "%", escape="\\")


def _args_match(conn: Connection, jobs: Table, match: ArgsMatch) -> ColumnElement[bool]:
    """The scalar at ``match.path`` of the args' JSON, as text, equals ``match.value``.

    Args that are not JSON match nothing (and never fail the query): SQLite checks
    ``json_valid`` first; PostgreSQL before 16 has no safe cast to ``jsonb``, so the text must
    look like an object or an array (``{…}``, ``[…]``) and is then read as JSON, and a store
    whose args are not all JSON should use ``text=`` there.
    """
    args = jobs.c.args
    if conn.dialect.name == "sqlite":
        json_path = "$" + "".join(
            f"[{key}]" if key.isdigit() else f'."{key}"' for key in match.path
        )
        value = func.json_extract(args, json_path)
        valid = func.json_valid(args) == 1
        text = case((valid, cast(value, String())), else_=None)
        # json_extract gives true/false as 1/0: compare those as JSON says them.
        kind = case((valid, func.json_type(args, json_path)), else_=None)
        wanted = {"true": "1", "false": "0"}.get(match.value)
        if wanted is not None:
            return and_(kind == match.value, text == wanted)
        return and_(kind.not_in(("object", "array", "null")), text == match.value)
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY, JSONB

        looks_like_json = or_(args.like("{%}"), args.like("[%]"))
        document = case((looks_like_json, cast(args, JSONB)), else_=None)
        path = literal(list(match.path), ARRAY(String()))
        found: ColumnElement[bool] = document.op("#>>")(path) == match.value
        return found
    return false()


def _args(raw: str | None) -> ArgsMatch | None:
    if not raw:
        return None
    if _CONTROL.search(raw) or len(raw) > _TEXT_LENGTH:
        raise FilterError(f"args has no control characters and at most {_TEXT_LENGTH} characters")
    path, equals, value = raw.partition("=")
    keys = path.strip().split(".")
    if keys and keys[0] == "args" and len(keys) > 1:
        keys = keys[1:]
    if not equals or not all(_KEY.fullmatch(key) for key in keys):
        raise FilterError(
            "args must be a JSON path and a value, like args=movie_id=42 or args=user.id=7"
            " (keys of letters, digits, _ and -; use text= to search the args' text)"
        )
    return ArgsMatch(tuple(keys), value)


def _text(params: Mapping[str, str], name: str, length: int) -> str | None:
    value = params.get(name)
    if not value:
        return None
    if len(value) > length:
        raise FilterError(f"{name} has at most {length} characters")
    return value


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace(" ", "T", 1))
    except ValueError:
        raise FilterError(
            f"{name} must be a time like 2024-11-23T02:00:00Z (ISO 8601, UTC unless it says)"
        ) from None
    return _utc(moment)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    known = [t for t in (a, b) if t is not None]
    return min(known) if known else None


_LAST = datetime.max.replace(tzinfo=timezone.utc)


def _sort_time(moment: datetime | None) -> datetime:
    return _LAST if moment is None else moment
