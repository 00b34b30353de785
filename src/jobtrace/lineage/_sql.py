"""Internal: the SQL pieces every query module of the lineage store shares.

The tables, one job by id (or the placeholder another job's row implies), a *scope* (the rows of a
run, or of a subtree by a recursive walk down ``parent_job_id``), the error of a failed job, and
small helpers on times and counts. Private to :mod:`jobtrace.lineage`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Subquery,
    Table,
    and_,
    case,
    cast,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.engine import Connection

from jobtrace.lineage import results
from jobtrace.lineage.models import ID_LENGTH, Attempt, Base, Job
from jobtrace.lineage.results import (
    FAILURES,
    PLACEHOLDER_NAME,
    UNKNOWN,
    UNKNOWN_DEPTH,
    JobNotFoundError,
    JobRow,
)
from jobtrace.records import JobState

JOBS: Table = Base.metadata.tables[Job.__tablename__]


ATTEMPTS: Table = Base.metadata.tables[Attempt.__tablename__]


def _job(conn: Connection, job_id: str) -> JobRow:
    """One job by id, else a placeholder if another job names it; raises :class:`JobNotFoundError`."""
    row = conn.execute(select(JOBS).where(JOBS.c.job_id == job_id)).first()
    if row is not None:
        return JobRow(**row._mapping)
    # A store written before the writer kept placeholders: the job exists only as a name.
    roles: tuple[tuple[Any, Literal["root", "parent"]], ...] = (
        (JOBS.c.root_job_id, "root"),
        (JOBS.c.parent_job_id, "parent"),
    )
    for column, role in roles:
        named = _job_rows(conn, select(JOBS).where(column == job_id).limit(1))
        if named:
            return _placeholder(job_id, named[0], role)
    raise JobNotFoundError(job_id)


def _placeholder(job_id: str, child: JobRow, role: Literal["parent", "root"]) -> JobRow:
    """The row the writer keeps for a job ``child`` names as its parent or root (see _merge)."""
    if role == "root":
        root: str | None = job_id
        depth: int | None = 0
    else:
        root = child.root_job_id
        depth = None if child.depth is None else max(child.depth - 1, 0)
    empty: dict[str, Any] = dict.fromkeys(f.name for f in dataclasses.fields(JobRow))
    values = {
        "job_id": job_id,
        "name": PLACEHOLDER_NAME,
        "system": child.system,
        "state": UNKNOWN,
        "attempt": 0,
        "root_job_id": root,
        "depth": depth,
        "reason": f"named as the {role} of {child.job_id}; never recorded",
    }
    return JobRow(**{**empty, **values})


def _orders_by_code_point(conn: Connection) -> bool:
    """Whether the store compares ids by code point (SQLite; PostgreSQL under C collations)."""
    if conn.dialect.name == "sqlite":
        return True
    if conn.dialect.name != "postgresql":
        return False
    # The columns of pg_database vary by version (15 adds the provider, 17 ``datlocale``).
    found = conn.execute(
        text("SELECT to_jsonb(d) FROM pg_database d WHERE datname = current_database()")
    ).scalar()
    database: dict[str, Any] = found if isinstance(found, dict) else {}
    provider = database.get("datlocprovider", "c")
    locale = database.get("datlocale") if provider == "b" else database.get("datcollate")
    return provider in ("b", "c") and str(locale).lower() in _CODE_POINT_LOCALES


#: Locales whose collation is the order of code points (UTF-8 bytes).
_CODE_POINT_LOCALES = frozenset({"c", "posix", "c.utf-8", "c.utf8"})


def _prefix_upper(prefix: str) -> str | None:
    """The least string above every string starting with ``prefix`` (``None``: there is none)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:
            code = 0xE000  # surrogates are not characters
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _limit(limit: int | None) -> int:
    """The walk's limit: :data:`~jobtrace.lineage.results.MAX_DEPTH` read at call time, so a
    test (or a caller) can lower it."""
    return results.MAX_DEPTH if limit is None else max(limit, 0)


def _not_due(jobs: Table | Subquery, now: datetime) -> ColumnElement[bool]:
    """Queued and scheduled for after ``now``: what the per-stage counts call :data:`SCHEDULED`."""
    return and_(jobs.c.state == JobState.QUEUED.value, jobs.c.due_at > now)


def _depth(value: int | None) -> int:
    """A stage's depth: the stored one, or :data:`UNKNOWN_DEPTH` where no record said it."""
    return UNKNOWN_DEPTH if value is None else int(value)


def _at_depth(jobs: Subquery, depth: int) -> ColumnElement[bool]:
    """The jobs of a stage at ``depth`` (from :func:`_depth`)."""
    return jobs.c.depth.is_(None) if depth == UNKNOWN_DEPTH else jobs.c.depth == depth


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _latest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _earliest(*times: datetime | None) -> datetime | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _most_common(counts: Counter[str]) -> list[tuple[str, int]]:
    """Largest first, then by name: stable output for equal counts."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _job_rows(conn: Connection, stmt: Select[Any]) -> list[JobRow]:
    return [JobRow(**row._mapping) for row in conn.execute(stmt)]


def _scope(anchor: JobRow) -> Subquery:
    """The rows under ``anchor`` (itself included) as a subquery with every job column.

    A root's run is one indexed filter on ``root_job_id``; any other job's subtree is a recursive
    walk down ``parent_job_id`` (also indexed), to any depth. It is a ``UNION`` of job ids, not a
    ``UNION ALL``: a job met again adds no row, so each job is in the subtree once and a parent
    cycle ends the walk instead of repeating it. The walk starts from the id, so the subtree of a
    job known only by name (no row) is what hangs under it.
    """
    if anchor.is_root:
        return _run(anchor.job_id)
    start = cast(literal(anchor.job_id), String(ID_LENGTH)).label("job_id")
    down = select(start).cte("subtree", recursive=True)
    down = down.union(select(JOBS.c.job_id).join(down, JOBS.c.parent_job_id == down.c.job_id))
    return select(JOBS).join(down, JOBS.c.job_id == down.c.job_id).subquery("jobs")


def _error(jobs: Subquery) -> ColumnElement[str | None]:
    """A failed job's error in one word (error type, else reason, else state); NULL otherwise.

    Empty strings count as missing, as in :attr:`JobRow.error`.
    """
    return case(
        (
            jobs.c.state.in_(FAILURES),
            func.coalesce(
                func.nullif(jobs.c.error_type, ""), func.nullif(jobs.c.reason, ""), jobs.c.state
            ),
        ),
        else_=None,
    )


def _same_queue(jobs: Subquery, queue: str | None) -> ColumnElement[bool]:
    return jobs.c.queue.is_(None) if queue is None else jobs.c.queue == queue


def _run(root_id: str) -> Subquery:
    return select(JOBS).where(JOBS.c.root_job_id == root_id).subquery("jobs")
