"""How records of one job become one row, whatever order they arrive in.

A producer's ``enqueued`` record and a worker's ``started`` record come from different processes
and may reach the store in either order; a late ``finished`` must beat the reaper's ``crashed``.
The rules, applied both in Python (records of one batch) and in SQL (``INSERT .. ON CONFLICT DO
UPDATE``, atomic per row on SQLite and PostgreSQL):

- a later attempt replaces everything about the attempt; an earlier one changes nothing;
- within one attempt, the record further along the lifecycle (:data:`RANKS`) sets the state and
  its known fields win, the other fills only what is missing;
- fields that describe the job rather than the attempt (:data:`JOB_FIELDS`) are kept once known;
- nothing is invented: a field no record carried stays NULL (a record without a root leaves the
  root to the records that have one);
- a job named as a parent or a root that has no row gets a placeholder (state ``unknown``,
  attempt 0), which any record of the job itself replaces (:func:`placeholders`).
"""

from __future__ import annotations

import functools
import json
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import compress
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, case, false, func, literal_column, or_, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect

from jobtrace._internal.metadata import is_valid_job_id, repair_job_id
from jobtrace.lineage.models import ID_LENGTH, NAME_LENGTH, Attempt, Base, Job
from jobtrace.records import JobRecord, JobState

Row = dict[str, Any]
_JOBS: Table = Base.metadata.tables[Job.__tablename__]
_ATTEMPTS: Table = Base.metadata.tables[Attempt.__tablename__]

#: Lifecycle order within one attempt; every state not listed is an outcome (rank 4). ``crashed``
#: ranks with ``running``: the reaper's verdict and the worker's "still running" are the same
#: stage, and whichever came last is right (a late heartbeat revives; a late verdict stands),
#: while a late outcome beats both.
RANKS = {
    JobState.UNKNOWN.value: -1,
    JobState.QUEUED.value: 0,
    JobState.STALLED.value: 1,
    JobState.RUNNING.value: 2,
    JobState.CRASHED.value: 2,
}
OUTCOME_RANK = 4
JOB_FIELDS = (
    "name",
    "queue",
    "system",
    "parent_job_id",
    "root_job_id",
    "depth",
    "args",
    "enqueued_at",
    "due_at",
    "lost_at",
)
ATTEMPT_FIELDS = (
    "trace_id",
    "span_id",
    "error_type",
    "error_message",
    "reason",
    "host",
    "pid",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "heartbeat_interval",
)
ITEM_FIELDS = ("items_total", "items_processed", "items_failed", "items_skipped", "progress")
MAX_TEXT = 64_000
_JOB_ATTEMPT_FIELDS = (*ATTEMPT_FIELDS, *ITEM_FIELDS)


def rank(state: str) -> int:
    return RANKS.get(state, OUTCOME_RANK)


def safe_id(value: str | None) -> str | None:
    """An id under the metadata contract's rule, so the store and every reader agree on it.

    A record built from a raw queue id may carry one a reader would repair (a control character,
    a lone surrogate, which PostgreSQL cannot store, or more than 255 characters): the store files
    it under the same repaired id (:func:`jobtrace._internal.metadata.repair_job_id`).
    """
    if value is None:
        return None
    if len(value) <= ID_LENGTH and value.isascii() and value.isprintable():
        return value  # the common case
    return value if is_valid_job_id(value) else repair_job_id(value)


def _text(value: str | None, limit: int) -> str | None:
    """No NUL (PostgreSQL refuses it), no unpaired surrogate, at most ``limit`` characters."""
    if value is None:
        return None
    if len(value) > limit:
        value = value[:limit]
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if value.isascii():
        return value  # the common case: nothing to re-encode
    return value.encode("utf-8", "replace").decode("utf-8")


_INT_MAX = 2**31 - 1


def _int(value: int | None) -> int | None:
    """An integer that fits a 32-bit column: one absurd count must not fail a whole batch."""
    if value is None:
        return None
    return max(-_INT_MAX, min(int(value), _INT_MAX))


_HEARTBEATING_KINDS = frozenset({"started", "heartbeat"})

#: A row as the writer builds it: the table's values in column order, times already as the text
#: the column stores. Tuples, not dicts: a record costs one tuple, and the upsert's parameters
#: are these tuples themselves (SQLite) or one JSON array of them (PostgreSQL).
Values = tuple[Any, ...]

_EPOCH = datetime(1970, 1, 1)


# Cached: a record's times recur in its job's attempt row and in its other records, and a
# batch's rows share one ``updated_at``.
@functools.lru_cache(maxsize=16_384)
def stored_time(value: float | datetime) -> str:
    """A time as the column stores it: naive UTC text to the microsecond (SQLAlchemy's SQLite
    format, which PostgreSQL also reads as a ``timestamp``)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat(" ", "microseconds")
    return (_EPOCH + timedelta(seconds=value)).isoformat(" ", "microseconds")


def job_values(
    record: JobRecord, updated_at: str, heartbeat_interval: float | None = None
) -> Values:
    """The ``jobtrace_jobs`` row one record stands for, in column order (:data:`JOB_COLUMNS`).

    Args:
        updated_at: The batch's time, as :func:`stored_time` gives it.
        heartbeat_interval: How often the writer heartbeats the attempts running in its process;
            stored with the records that say an attempt runs there.
    """
    (
        kind,
        job_id,
        attempt,
        name,
        state,
        queue,
        system,
        parent_job_id,
        root_job_id,
        depth,
        trace_id,
        span_id,
        args,
        items,
        progress,
        error_type,
        error_message,
        reason,
        host,
        pid,
        enqueued_at,
        due_at,
        started_at,
        finished_at,
        heartbeat_at,
    ) = record
    if items:
        total, processed, failed, skipped = (
            _int(items.get("total")),
            _int(items.get("processed")),
            _int(items.get("failed")),
            _int(items.get("skipped")),
        )
    else:
        total = processed = failed = skipped = None
    # ``None if x is None else f(x)``: most fields of a record are empty, and a call costs more
    # than the test.
    return (
        safe_id(job_id),
        _text(name, NAME_LENGTH),
        None if queue is None else _text(queue, NAME_LENGTH),
        None if system is None else _text(system, 64),
        state.value,
        _int(attempt) or 1,
        None if parent_job_id is None else safe_id(parent_job_id),
        None if root_job_id is None else safe_id(root_job_id),
        None if depth is None else _int(depth),
        None if trace_id is None else _text(trace_id, 32),
        None if span_id is None else _text(span_id, 16),
        None if args is None else _text(args, MAX_TEXT),
        total,
        processed,
        failed,
        skipped,
        progress,
        None if error_type is None else _text(error_type, NAME_LENGTH),
        None if error_message is None else _text(error_message, MAX_TEXT),
        None if reason is None else _text(reason, MAX_TEXT),
        None if host is None else _text(host, NAME_LENGTH),
        None if pid is None else _int(pid),
        None if enqueued_at is None else stored_time(enqueued_at),
        None if started_at is None else stored_time(started_at),
        None if finished_at is None else stored_time(finished_at),
        None if heartbeat_at is None else stored_time(heartbeat_at),
        updated_at,
        None if due_at is None else stored_time(due_at),
        heartbeat_interval if kind in _HEARTBEATING_KINDS else None,
        updated_at if kind == "lost" else None,
    )


#: The column order :func:`job_values` writes; checked against the model at import.
JOB_COLUMNS = (
    "job_id",
    "name",
    "queue",
    "system",
    "state",
    "attempt",
    "parent_job_id",
    "root_job_id",
    "depth",
    "trace_id",
    "span_id",
    "args",
    "items_total",
    "items_processed",
    "items_failed",
    "items_skipped",
    "progress",
    "error_type",
    "error_message",
    "reason",
    "host",
    "pid",
    "enqueued_at",
    "started_at",
    "finished_at",
    "heartbeat_at",
    "updated_at",
    "due_at",
    "heartbeat_interval",
    "lost_at",
)
if tuple(column.name for column in _JOBS.columns) != JOB_COLUMNS:
    raise ImportError("jobtrace_jobs' columns changed: update jobtrace.lineage._merge.job_values")
_AT = {column: i for i, column in enumerate(JOB_COLUMNS)}
_JOB_ID, _STATE, _ATTEMPT, _UPDATED = _AT["job_id"], _AT["state"], _AT["attempt"], _AT["updated_at"]
_ROOT, _PARENT, _DEPTH, _SYSTEM = (
    _AT["root_job_id"],
    _AT["parent_job_id"],
    _AT["depth"],
    _AT["system"],
)
_JOB_FILL = tuple(_AT[key] for key in JOB_FIELDS)
_SAME_ATTEMPT_FILL = tuple(_AT[key] for key in (*JOB_FIELDS, *ATTEMPT_FIELDS, *ITEM_FIELDS))
#: The ``jobtrace_attempts`` row of a job row: its columns' positions in the job row.
attempt_values: Callable[[Values], Values] = operator.itemgetter(
    *(_AT[column.name] for column in _ATTEMPTS.columns)
)


def _merged(old: Values, new: Values) -> Values:
    if new[_ATTEMPT] != old[_ATTEMPT]:
        later, earlier = (new, old) if new[_ATTEMPT] > old[_ATTEMPT] else (old, new)
        merged = list(later)
        fill = _JOB_FILL
    else:
        first, earlier = (new, old) if rank(new[_STATE]) >= rank(old[_STATE]) else (old, new)
        merged = list(first)
        fill = _SAME_ATTEMPT_FILL
    for i in fill:
        if merged[i] is None:
            merged[i] = earlier[i]
    merged[_UPDATED] = max(old[_UPDATED], new[_UPDATED])  # same-format text: ordered as times
    return tuple(merged)


def rows(
    batch: Sequence[JobRecord], now: float, heartbeat_interval: float | None = None
) -> tuple[list[Values], list[Values]]:
    """One job row per job and one attempt row per attempt, sorted by key (no lock-order cycles).

    Records merge per attempt first (the attempt rows), then attempts per job (the job rows).
    """
    updated_at = stored_time(now)
    merged: dict[tuple[str, int], Values] = {}
    for record in batch:
        row = job_values(record, updated_at, heartbeat_interval)
        key = (row[_JOB_ID], row[_ATTEMPT])
        old = merged.get(key)
        merged[key] = row if old is None else _merged(old, row)
    keys = sorted(merged)
    if len(keys) == len({key[0] for key in keys}):  # one attempt per job: the common case
        jobs = [merged[key] for key in keys]
        return jobs, list(map(attempt_values, jobs))
    by_job: dict[str, Values] = {}
    for key in keys:  # attempts of one job in order
        row = merged[key]
        old = by_job.get(key[0])
        by_job[key[0]] = row if old is None else _merged(old, row)
    return list(by_job.values()), [attempt_values(merged[key]) for key in keys]


PLACEHOLDER_NAME = "?"


def placeholders(jobs: Iterable[Values], skip: Callable[[str], bool], now: float) -> list[Row]:
    """Rows for the parents and roots ``jobs`` name, so every query finds a run's whole frame.

    A producer in another language, or a parent whose records were dropped, leaves a job that the
    store knows only by name. Its placeholder is inserted only where no row exists (``DO
    NOTHING``) and has attempt 0, so the job's own first record replaces every field it carries.
    Of the batch's records that name it, one that says where it stands (root and depth) wins,
    whatever the order.

    Args:
        jobs: Job rows about to be written.
        skip: Ids known to have a row already (this writer wrote them), to spare the insert.
        now: The batch's time.
    """
    jobs = list(jobs)
    written = {job[_JOB_ID] for job in jobs}
    found: dict[str, Row] = {}
    for job in jobs:
        root, parent, depth = job[_ROOT], job[_PARENT], job[_DEPTH]
        if parent is not None and parent not in written and not skip(parent):
            parent_depth = None if depth is None else max(depth - 1, 0)
            if parent not in found or found[parent]["depth"] is None:
                found[parent] = _placeholder(parent, root, parent_depth, job, "parent", now)
        untold = root not in found or found[root]["depth"] is None
        if root is not None and root not in written and untold and not skip(root):
            found[root] = _placeholder(root, root, 0, job, "root", now)
    return [found[key] for key in sorted(found)]


def _placeholder(
    job_id: str, root: str | None, depth: int | None, child: Values, role: str, now: float
) -> Row:
    return {
        "job_id": job_id,
        "attempt": 0,
        "state": JobState.UNKNOWN.value,
        "name": PLACEHOLDER_NAME,
        "root_job_id": root,
        "depth": depth,
        "reason": f"named as the {role} of {child[_JOB_ID]}; no record of it reached the store",
        "system": child[_SYSTEM],
        "updated_at": now,
    }


def insert_placeholders(conn: Connection, rows: list[Row]) -> None:
    """Insert ``rows`` (from :func:`placeholders`) where the job has no row yet."""
    if not rows:
        return
    insert = _INSERTS[conn.dialect.name]
    conn.execute(insert(_JOBS).on_conflict_do_nothing(index_elements=["job_id"]), rows)


_ATTEMPT_ONLY_FIELDS = ("enqueued_at", *ATTEMPT_FIELDS)

# -- the same rules in SQL ---------------------------------------------------------------------

Insert = Callable[[Table], Any]
_INSERTS: dict[str, Insert] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_statements: dict[tuple[str, str, int | None], Any] = {}


def _rank_sql(state: ColumnElement[str]) -> ColumnElement[int]:
    # Literals, not bound parameters: the statement is compiled once and run with row values only.
    whens: list[tuple[ColumnElement[bool], ColumnElement[int]]] = [
        (state == literal_column(f"'{name}'"), literal_column(str(rank)))
        for name, rank in RANKS.items()
    ]
    return case(*whens, else_=literal_column(str(OUTCOME_RANK)))


def _advances(new_rank: int | None, new: Any, old: Any) -> ColumnElement[bool]:
    """Whether the incoming row is as far along its attempt as the stored one, or further.

    With the incoming rows' rank known (a statement per rank, SQLite), only the stored state is
    tested, at most once: an outcome is as far as any (rank 4 is the highest), another rank is
    as far as the states ranked at most as high.
    """
    if new_rank is None:
        return _rank_sql(new.state) >= _rank_sql(old.state)
    if new_rank >= OUTCOME_RANK:
        return true()
    behind: list[ColumnElement[str]] = [
        literal_column(f"'{name}'") for name, rank in RANKS.items() if rank <= new_rank
    ]
    # Equalities, not IN: SQLite builds an IN list's lookup table again for every row.
    return or_(*(old.state == name for name in behind)) if behind else false()


def _upsert(dialect: str, table: Table, new_rank: int | None = None) -> Any:
    """The merge of ``table`` as ``INSERT .. ON CONFLICT DO UPDATE``; for incoming rows of rank
    ``new_rank`` only, when it is given."""
    cached = _statements.get((dialect, table.name, new_rank))
    if cached is not None:
        return cached
    insert = _INSERTS.get(dialect)
    if insert is None:
        raise NotImplementedError(
            f"the lineage store supports SQLite and PostgreSQL, not {dialect}"
        )
    stmt = insert(table)
    new, old = stmt.excluded, table.c
    advances = _advances(new_rank, new, old)
    values: dict[str, Any]
    if table.name == Job.__tablename__:
        later = new.attempt > old.attempt
        same = new.attempt == old.attempt
        values = {key: func.coalesce(new[key], old[key]) for key in JOB_FIELDS}
        for key in _JOB_ATTEMPT_FIELDS:
            values[key] = case(
                (later, new[key]),
                (and_(same, advances), func.coalesce(new[key], old[key])),
                (same, func.coalesce(old[key], new[key])),
                else_=old[key],
            )
        values["state"] = case(
            (later, new.state), (and_(same, advances), new.state), else_=old.state
        )
        values["attempt"] = case((later, new.attempt), else_=old.attempt)
        values["updated_at"] = new.updated_at
        keys = ["job_id"]
    else:
        values = {
            key: case(
                (advances, func.coalesce(new[key], old[key])),
                else_=func.coalesce(old[key], new[key]),
            )
            for key in _ATTEMPT_ONLY_FIELDS
        }
        values["state"] = case((advances, new.state), else_=old.state)
        keys = ["job_id", "attempt"]
    statement = stmt.on_conflict_do_update(index_elements=keys, set_=values)
    _statements[(dialect, table.name, new_rank)] = statement
    return statement


@dataclass(frozen=True)
class _Prepared:
    """An upsert compiled once per dialect, executed with plain DBAPI parameters.

    Row values skip SQLAlchemy's per-row parameter processing, which cost more than the database
    write itself; :func:`job_values` builds them as the columns store them. PostgreSQL gets the
    whole batch as one JSON parameter (``jsonb_array_elements``): one round trip, one parse and
    one C-speed encoding per batch (array parameters were dumped value by value in Python, at
    more than half the cost of a write; objects with keys took twice as long to encode). SQLite
    gets one ``executemany`` per rank of the rows' state and set of empty columns
    (:func:`_groups`): the statement tests only the stored row's rank, and writes the empty
    columns as ``NULL`` in its text, not as parameters.
    """

    sql: str
    as_json: bool  # PostgreSQL: the batch as one JSON array of rows
    source: str  # the rows: ``VALUES (?, ..)`` (SQLite), a ``SELECT`` from the JSON parameter
    head: str  # ``INSERT INTO t (columns) ``
    tail: str  # `` ON CONFLICT ...``
    state_at: int  # the position of ``state`` in a row


_prepared: dict[tuple[str, str, int | None], _Prepared] = {}


def _prepare(dialect: Dialect, table: Table, new_rank: int | None = None) -> _Prepared:
    cached = _prepared.get((dialect.name, table.name, new_rank))
    if cached is not None:
        return cached
    sql = str(_upsert(dialect.name, table, new_rank).compile(dialect=dialect))

    quote = dialect.identifier_preparer.quote
    columns = tuple(column.name for column in table.columns)
    head = f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))}) "
    sqlite = dialect.name == "sqlite"
    if sqlite:
        source = f"VALUES ({', '.join(['?'] * len(columns))})"
    else:  # a row per array element, each value cast to its column's type (jsonb: O(1) index)
        casts = [
            f"(r->>{i})::{c.type.compile(dialect)} AS {quote(c.name)}"
            for i, c in enumerate(table.columns)
        ]
        source = f"SELECT {', '.join(casts)} FROM jsonb_array_elements(%s::jsonb) AS r"
    tail = sql[sql.index(" ON CONFLICT") :]
    prepared = _Prepared(
        sql=head + source + tail,
        source=source,
        as_json=not sqlite,
        head=head,
        tail=tail,
        state_at=columns.index("state"),
    )
    _prepared[(dialect.name, table.name, new_rank)] = prepared
    return prepared


def _execute(conn: Connection, table: Table, rows: list[Values]) -> None:
    if not rows:
        return
    prepared = _prepare(conn.dialect, table)
    if prepared.as_json:
        conn.exec_driver_sql(prepared.sql, (_json(rows),))
        return
    for (new_rank, nulls), group in _groups(rows, prepared.state_at).items():
        sql, keep = _null_statement(_prepare(conn.dialect, table, new_rank), new_rank, nulls)
        if keep is not None:
            group = [tuple(compress(row, keep)) for row in group]
        conn.exec_driver_sql(sql, group)


_NONES: tuple[None, ...] = (None,) * 64


def _groups(rows: list[Values], state_at: int) -> dict[tuple[int, tuple[bool, ...]], list[Values]]:
    """``rows`` grouped by their state's rank (:func:`_advances`) and which values are ``None``.

    SQLite's driver passes every ``None`` parameter through its adapter lookup (it binds other
    values at once), at a fifth of the upsert's time when most columns are empty: a group's
    statement writes its empty columns as ``NULL`` instead. A batch has one row per job (or
    attempt), so the groups' order does not change what is stored; SQLite has a single writer,
    so it cannot change the locks' order either (PostgreSQL's one statement keeps the rows in
    key order, and its rank test generic).
    """
    nones = _NONES[: len(rows[0])]
    ranks = RANKS.get
    groups: dict[tuple[int, tuple[bool, ...]], list[Values]] = {}
    for row in rows:
        key = (ranks(row[state_at], OUTCOME_RANK), tuple(map(operator.is_, row, nones)))
        group = groups.get(key)
        if group is None:
            groups[key] = [row]
        else:
            group.append(row)
    return groups


_MAX_NULL_STATEMENTS = 256
_null_statements: dict[tuple[str, int, tuple[bool, ...]], tuple[str, tuple[bool, ...] | None]] = {}


def _null_statement(
    prepared: _Prepared, new_rank: int, nulls: tuple[bool, ...]
) -> tuple[str, tuple[bool, ...] | None]:
    """The SQLite upsert of rows of ``new_rank`` empty where ``nulls`` says, and which values it
    binds."""
    key = (prepared.head, new_rank, nulls)
    cached = _null_statements.get(key)
    if cached is not None:
        return cached
    if not any(nulls):
        result: tuple[str, tuple[bool, ...] | None] = (prepared.sql, None)
    else:
        values = ", ".join("NULL" if null else "?" for null in nulls)
        keep = tuple(not null for null in nulls)
        result = (f"{prepared.head}VALUES ({values}){prepared.tail}", keep)
    if len(_null_statements) < _MAX_NULL_STATEMENTS:
        _null_statements[key] = result
    return result


def _json(rows: list[Values]) -> str:
    """``rows`` as one JSON array of arrays in column order."""
    try:
        return json.dumps(rows, allow_nan=False)
    except ValueError:  # NaN or an infinity, which JSON lacks: as text PostgreSQL's float reads
        return json.dumps([[_finite(value) for value in row] for row in rows])


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    return value


_both: dict[str, str] = {}


def _upsert_both(conn: Connection, rows: list[Values]) -> None:
    """PostgreSQL, one attempt per job (the common case): both upserts in one statement, from one
    JSON parameter parsed once (the attempt rows are columns of the job rows). The attempts'
    source waits on all of the jobs' upsert (a count of what it returned), so every writer
    locks a batch's job rows before its attempt rows, in key order, as with two statements."""
    sql = _both.get(conn.dialect.name)
    if sql is None:
        jobs, attempts = _prepare(conn.dialect, _JOBS), _prepare(conn.dialect, _ATTEMPTS)
        quote = conn.dialect.identifier_preparer.quote
        job_columns = ", ".join(quote(column.name) for column in _JOBS.columns)
        attempt_columns = ", ".join(quote(column.name) for column in _ATTEMPTS.columns)
        sql = (
            f"WITH source AS MATERIALIZED ({jobs.source}),"
            f" upserted AS ({jobs.head}SELECT {job_columns} FROM source{jobs.tail} RETURNING 1)"
            f" {attempts.head}SELECT {attempt_columns} FROM source"
            f" WHERE (SELECT count(*) FROM upserted) >= 0{attempts.tail}"
        )
        _both[conn.dialect.name] = sql
    conn.exec_driver_sql(sql, (_json(rows),))


def upsert_jobs(conn: Connection, jobs: list[Values]) -> None:
    """Merge ``jobs`` (one row per job id, from :func:`rows`) into ``jobtrace_jobs``."""
    _execute(conn, _JOBS, jobs)


def upsert_attempts(conn: Connection, attempts: list[Values]) -> None:
    """Merge ``attempts`` (one row per job id and attempt) into ``jobtrace_attempts``."""
    _execute(conn, _ATTEMPTS, attempts)


def write(
    conn: Connection,
    batch: Sequence[JobRecord],
    now: float,
    heartbeat_interval: float | None = None,
    known: Callable[[str], bool] = lambda job_id: False,
) -> list[str]:
    """Merge ``batch`` into the store in ``conn``'s transaction; returns the ids given a row.

    Args:
        known: Ids that already have a row (the writer wrote them), to spare their placeholders.
    """
    jobs, attempts = rows(batch, now, heartbeat_interval)
    frames = placeholders(jobs, known, now)
    if conn.dialect.name == "postgresql" and jobs and len(attempts) == len(jobs):
        _upsert_both(conn, jobs)  # one attempt per job: its row is the job row's columns
    else:
        upsert_jobs(conn, jobs)
        upsert_attempts(conn, attempts)
    insert_placeholders(conn, frames)
    return [*(row[_JOB_ID] for row in jobs), *(row["job_id"] for row in frames)]
