"""How records of one job become one row, whatever order they arrive in.

A producer's ``enqueued`` record and a worker's ``started`` record come from different processes
and may reach the store in either order; a late ``finished`` must beat the reaper's ``crashed``.
The rules, applied both in Python (records of one batch) and in SQL (``INSERT .. ON CONFLICT DO
UPDATE``, atomic per row on SQLite and PostgreSQL):

- a later attempt replaces everything about the attempt; an earlier one changes nothing;
- within one attempt, the record further along the lifecycle (:data:`RANKS`) sets the state and
  its known fields win, the other fills only what is missing;
- fields that describe the job rather than the attempt (:data:`JOB_FIELDS`) are kept once known.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, case, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from jobtrace._internal.records import JobRecord, JobState
from jobtrace.lineage.models import ID_LENGTH, NAME_LENGTH, Attempt, Job

Row = dict[str, Any]

#: Lifecycle order within one attempt; every state not listed is an outcome (rank 4).
RANKS = {
    JobState.QUEUED.value: 0,
    JobState.STALLED.value: 1,
    JobState.RUNNING.value: 2,
    JobState.CRASHED.value: 3,
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
)
ITEM_FIELDS = ("items_total", "items_processed", "items_failed", "items_skipped", "progress")
MAX_TEXT = 64_000


def rank(state: str) -> int:
    return RANKS.get(state, OUTCOME_RANK)


def safe_id(value: str | None) -> str | None:
    """An id that fits its column: long ids keep a prefix and a hash, so they stay distinct."""
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd")
    if len(value) <= ID_LENGTH:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{value[: ID_LENGTH - len(digest) - 1]}~{digest}"


def _text(value: str | None, limit: int) -> str | None:
    """No NUL (PostgreSQL refuses it), no unpaired surrogate, at most ``limit`` characters."""
    if value is None:
        return None
    value = value[:limit].replace("\x00", "\ufffd")
    return value.encode("utf-8", "replace").decode("utf-8")


def job_row(record: JobRecord, now: float) -> Row:
    """The ``jobtrace_jobs`` row one record stands for."""
    job_id = safe_id(record.job_id)
    items = record.items
    return {
        "job_id": job_id,
        "attempt": record.attempt,
        "state": record.state.value,
        "name": _text(record.name, NAME_LENGTH),
        "queue": _text(record.queue, NAME_LENGTH),
        "system": _text(record.system, 64),
        "parent_job_id": safe_id(record.parent_job_id),
        "root_job_id": safe_id(record.root_job_id) or job_id,
        "depth": record.depth,
        "args": _text(record.args, MAX_TEXT),
        "enqueued_at": record.enqueued_at,
        "trace_id": _text(record.trace_id, 32),
        "span_id": _text(record.span_id, 16),
        "error_type": _text(record.error_type, NAME_LENGTH),
        "error_message": _text(record.error_message, MAX_TEXT),
        "reason": _text(record.reason, MAX_TEXT),
        "host": _text(record.host, NAME_LENGTH),
        "pid": record.pid,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "heartbeat_at": record.heartbeat_at,
        "items_total": items.get("total"),
        "items_processed": items.get("processed"),
        "items_failed": items.get("failed"),
        "items_skipped": items.get("skipped"),
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


def rows(batch: Sequence[JobRecord], now: float) -> tuple[list[Row], list[Row]]:
    """One job row per job and one attempt row per attempt, sorted by key (no lock-order cycles)."""
    jobs: dict[str, Row] = {}
    attempts: dict[tuple[str, int], Row] = {}
    for record in batch:
        row = job_row(record, now)
        job_id = row["job_id"]
        old = jobs.get(job_id)
        jobs[job_id] = row if old is None else _merged(old, row, JOB_FIELDS, _JOB_ATTEMPT_FIELDS)
        attempt = attempt_row(row)
        key = (job_id, row["attempt"])
        old = attempts.get(key)
        attempts[key] = attempt if old is None else _merged(old, attempt, (), _ATTEMPT_ONLY_FIELDS)
    return [jobs[k] for k in sorted(jobs)], [attempts[k] for k in sorted(attempts)]


_JOB_ATTEMPT_FIELDS = (*ATTEMPT_FIELDS, *ITEM_FIELDS)
_ATTEMPT_ONLY_FIELDS = ("enqueued_at", *ATTEMPT_FIELDS)

# -- the same rules in SQL ---------------------------------------------------------------------

Insert = Callable[[Table], Any]
_INSERTS: dict[str, Insert] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_statements: dict[tuple[str, str], Any] = {}


def _rank_sql(state: ColumnElement[str]) -> ColumnElement[int]:
    return case(RANKS, value=state, else_=OUTCOME_RANK)


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


def upsert_jobs(conn: Connection, jobs: list[Row]) -> None:
    """Merge ``jobs`` (one row per job id) into ``jobtrace_jobs``."""
    if jobs:
        conn.execute(_upsert(conn.dialect.name, Job.__table__), jobs)  # type: ignore[arg-type]


def upsert_attempts(conn: Connection, attempts: list[Row]) -> None:
    """Merge ``attempts`` (one row per job id and attempt) into ``jobtrace_attempts``."""
    if attempts:
        conn.execute(_upsert(conn.dialect.name, Attempt.__table__), attempts)  # type: ignore[arg-type]
