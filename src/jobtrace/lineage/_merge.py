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
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, case, func, literal_column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect

from jobtrace._internal.metadata import is_valid_job_id, repair_job_id
from jobtrace.lineage.models import ID_LENGTH, NAME_LENGTH, Attempt, Base, Job, UTCDateTime
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


def job_row(record: JobRecord, now: float, heartbeat_interval: float | None = None) -> Row:
    """The ``jobtrace_jobs`` row one record stands for.

    Args:
        heartbeat_interval: How often the writer heartbeats the attempts running in its process;
            stored with the records that say an attempt runs there.
    """
    job_id = safe_id(record.job_id)
    items = record.items or {}
    return {
        "job_id": job_id,
        "attempt": _int(record.attempt) or 1,
        "state": record.state.value,
        "name": _text(record.name, NAME_LENGTH),
        "queue": _text(record.queue, NAME_LENGTH),
        "system": _text(record.system, 64),
        "parent_job_id": safe_id(record.parent_job_id),
        "root_job_id": safe_id(record.root_job_id),
        "depth": _int(record.depth),
        "args": _text(record.args, MAX_TEXT),
        "enqueued_at": record.enqueued_at,
        "due_at": record.due_at,
        "trace_id": _text(record.trace_id, 32),
        "span_id": _text(record.span_id, 16),
        "error_type": _text(record.error_type, NAME_LENGTH),
        "error_message": _text(record.error_message, MAX_TEXT),
        "reason": _text(record.reason, MAX_TEXT),
        "host": _text(record.host, NAME_LENGTH),
        "pid": _int(record.pid),
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "heartbeat_at": record.heartbeat_at,
        "heartbeat_interval": heartbeat_interval if record.kind in _HEARTBEATING_KINDS else None,
        "lost_at": now if record.kind == "lost" else None,
        "items_total": _int(items.get("total")),
        "items_processed": _int(items.get("processed")),
        "items_failed": _int(items.get("failed")),
        "items_skipped": _int(items.get("skipped")),
        "progress": record.progress,
        "updated_at": now,
    }


_ATTEMPT_KEYS = ("job_id", "attempt", "state", "enqueued_at", *ATTEMPT_FIELDS)


def attempt_row(job: Row) -> Row:
    """The ``jobtrace_attempts`` part of a job row."""
    return {key: job[key] for key in _ATTEMPT_KEYS}


def _merged(old: Row, new: Row, job_fields: Iterable[str], attempt_fields: Iterable[str]) -> Row:
    if new["attempt"] != old["attempt"]:
        later, earlier = (new, old) if new["attempt"] > old["attempt"] else (old, new)
        merged = dict(later)
        for key in job_fields:
            if merged[key] is None:
                merged[key] = earlier[key]
    else:
        first, second = (new, old) if rank(new["state"]) >= rank(old["state"]) else (old, new)
        merged = dict(first)
        for key in (*job_fields, *attempt_fields):
            if merged[key] is None:
                merged[key] = second[key]
    if "updated_at" in merged:
        merged["updated_at"] = max(old["updated_at"], new["updated_at"])
    return merged


def rows(
    batch: Sequence[JobRecord], now: float, heartbeat_interval: float | None = None
) -> tuple[list[Row], list[Row]]:
    """One job row per job and one attempt row per attempt, sorted by key (no lock-order cycles).

    Records merge per attempt first (the attempt rows), then attempts per job (the job rows).
    """
    merged: dict[tuple[str, int], Row] = {}
    for record in batch:
        row = job_row(record, now, heartbeat_interval)
        key = (row["job_id"], row["attempt"])
        old = merged.get(key)
        merged[key] = row if old is None else _merged(old, row, JOB_FIELDS, _JOB_ATTEMPT_FIELDS)
    keys = sorted(merged)
    jobs: dict[str, Row] = {}
    for key in keys:  # attempts of one job in order
        row = merged[key]
        old = jobs.get(key[0])
        jobs[key[0]] = row if old is None else _merged(old, row, JOB_FIELDS, _JOB_ATTEMPT_FIELDS)
    return list(jobs.values()), [attempt_row(merged[key]) for key in keys]


_JOB_ATTEMPT_FIELDS = (*ATTEMPT_FIELDS, *ITEM_FIELDS)
PLACEHOLDER_NAME = "?"


def placeholders(jobs: Iterable[Row], skip: Callable[[str], bool]) -> list[Row]:
    """Rows for the parents and roots ``jobs`` name, so every query finds a run's whole frame.

    A producer in another language, or a parent whose records were dropped, leaves a job that the
    store knows only by name. Its placeholder is inserted only where no row exists (``DO
    NOTHING``) and has attempt 0, so the job's own first record replaces every field.

    Args:
        jobs: Job rows about to be written.
        skip: Ids known to have a row already (this writer wrote them), to spare the insert.
    """
    written = {job["job_id"] for job in jobs}
    found: dict[str, Row] = {}
    for job in jobs:
        root, parent, depth = job["root_job_id"], job["parent_job_id"], job["depth"]
        if parent is not None and parent not in written and not skip(parent):
            parent_depth = None if depth is None else max(depth - 1, 0)
            if parent not in found or found[parent]["depth"] is None:
                found[parent] = _placeholder(parent, root, parent_depth, job, "parent")
        if root is not None and root not in written and root not in found and not skip(root):
            found[root] = _placeholder(root, root, 0, job, "root")
    return [found[key] for key in sorted(found)]


def _placeholder(job_id: str, root: str | None, depth: int | None, child: Row, role: str) -> Row:
    return {
        "job_id": job_id,
        "attempt": 0,
        "state": JobState.UNKNOWN.value,
        "name": PLACEHOLDER_NAME,
        "root_job_id": root,
        "depth": depth,
        "reason": f"named as the {role} of {child['job_id']}; no record of it reached the store",
        "system": child["system"],
        "updated_at": child["updated_at"],
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
_statements: dict[tuple[str, str], Any] = {}


def _rank_sql(state: ColumnElement[str]) -> ColumnElement[int]:
    # Literals, not bound parameters: the statement is compiled once and run with row values only.
    whens: list[tuple[ColumnElement[bool], ColumnElement[int]]] = [
        (state == literal_column(f"'{name}'"), literal_column(str(rank)))
        for name, rank in RANKS.items()
    ]
    return case(*whens, else_=literal_column(str(OUTCOME_RANK)))


def _upsert(dialect: str, table: Table) -> Any:
    cached = _statements.get((dialect, table.name))
    if cached is not None:
        return cached
    insert = _INSERTS.get(dialect)
    if insert is None:
        raise NotImplementedError(
            f"the lineage store supports SQLite and PostgreSQL, not {dialect}"
        )
    stmt = insert(table)
    new, old = stmt.excluded, table.c
    advances = _rank_sql(new.state) >= _rank_sql(old.state)
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
    _statements[(dialect, table.name)] = statement
    return statement


@dataclass(frozen=True)
class _Prepared:
    """An upsert compiled once per dialect, executed with plain DBAPI parameters.

    Row values skip SQLAlchemy's per-row parameter processing, which cost more than the database
    write itself; times are converted here, the way the column type stores them. PostgreSQL gets
    the whole batch as one JSON parameter (``jsonb_array_elements``): one round trip, one parse
    and one C-speed encoding per batch (array parameters were dumped value by value in Python, at
    more than half the cost of a write; objects with keys took twice as long to encode). SQLite
    gets one ``executemany``.
    """

    columns: tuple[str, ...]
    pick: Callable[[Row], tuple[Any, ...]]  # a row's values in column order (every row has all)
    sql: str
    times: tuple[int, ...]  # positions of the time columns
    time_format: Callable[[float], Any]
    as_json: bool  # PostgreSQL: the batch as one JSON array of rows


_prepared: dict[tuple[str, str], _Prepared] = {}


_EPOCH = datetime(1970, 1, 1)


# Cached: a job's row and its attempt's row carry the same times, and a batch's rows one
# ``updated_at``, so about half the conversions of a batch repeat one before them.
@functools.lru_cache(maxsize=16_384)
def _sqlite_time(seconds: float) -> str:
    # SQLAlchemy's SQLite DATETIME storage format, microseconds always written.
    return (_EPOCH + timedelta(seconds=seconds)).isoformat(" ", "microseconds")


def _prepare(dialect: Dialect, table: Table) -> _Prepared:
    cached = _prepared.get((dialect.name, table.name))
    if cached is not None:
        return cached
    sql = str(_upsert(dialect.name, table).compile(dialect=dialect))
    quote = dialect.identifier_preparer.quote
    columns = tuple(column.name for column in table.columns)
    head = f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))}) "
    sqlite = dialect.name == "sqlite"
    if sqlite:
        source = f"VALUES ({', '.join(['?'] * len(columns))})"
    else:  # a row per array element, each value cast to its column's type (jsonb: O(1) index)
        casts = [f"(r->>{i})::{c.type.compile(dialect)}" for i, c in enumerate(table.columns)]
        source = f"SELECT {', '.join(casts)} FROM jsonb_array_elements(%s::jsonb) AS r"
    times = tuple(i for i, c in enumerate(table.columns) if isinstance(c.type, UTCDateTime))
    prepared = _Prepared(
        columns=columns,
        pick=operator.itemgetter(*columns),
        sql=head + source + sql[sql.index(" ON CONFLICT") :],
        times=times,
        # The same text SQLite stores is a PostgreSQL ``timestamp`` literal, to the microsecond.
        time_format=_sqlite_time,
        as_json=not sqlite,
    )
    _prepared[(dialect.name, table.name)] = prepared
    return prepared


def _values(prepared: _Prepared, row: Row) -> list[Any]:
    values = list(prepared.pick(row))
    for index in prepared.times:
        value = values[index]
        if isinstance(value, (int, float)):
            values[index] = prepared.time_format(value)
    return values


def _execute(conn: Connection, table: Table, rows: list[Row]) -> None:
    if not rows:
        return
    prepared = _prepare(conn.dialect, table)
    if prepared.as_json:
        conn.exec_driver_sql(prepared.sql, (_json(prepared, rows),))
    else:
        conn.exec_driver_sql(prepared.sql, [tuple(_values(prepared, row)) for row in rows])


def _json(prepared: _Prepared, rows: list[Row]) -> str:
    """``rows`` as one JSON array of arrays in column order, times as timestamp text."""
    values = [_values(prepared, row) for row in rows]
    try:
        return json.dumps(values, default=_json_time, allow_nan=False)
    except ValueError:  # NaN or an infinity, which JSON lacks: as text PostgreSQL's float reads
        return json.dumps([[_finite(value) for value in row] for row in values], default=_json_time)


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    return value


def _json_time(value: object) -> str:
    if isinstance(value, datetime):  # an aware time: stored as naive UTC, as the column type does
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat(" ", "microseconds")
    raise TypeError(f"{type(value).__name__} is not a lineage column value")


def upsert_jobs(conn: Connection, jobs: list[Row]) -> None:
    """Merge ``jobs`` (one row per job id) into ``jobtrace_jobs``."""
    _execute(conn, _JOBS, jobs)


def upsert_attempts(conn: Connection, attempts: list[Row]) -> None:
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
    frames = placeholders(jobs, known)
    upsert_jobs(conn, jobs)
    upsert_attempts(conn, attempts)
    insert_placeholders(conn, frames)
    return [row["job_id"] for row in (*jobs, *frames)]
