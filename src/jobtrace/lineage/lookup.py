"""Which job an id typed by a person names: the whole id, or a prefix only one job's id starts with."""

from __future__ import annotations

from sqlalchemy import (
    and_,
    select,
)
from sqlalchemy.engine import Connection

from jobtrace.lineage._merge import safe_id
from jobtrace.lineage._sql import (
    JOBS,
    _job,
    _job_rows,
    _orders_by_code_point,
    _prefix_upper,
)
from jobtrace.lineage.results import (
    ELLIPSIS,
    AmbiguousJobIdError,
    JobNotFoundError,
)

__all__ = [
    "resolve",
]


def resolve(conn: Connection, typed: str, candidates: int) -> str:
    """See :meth:`LineageStore.resolve`: an exact id first, then a prefix."""
    # Ids are stored as the metadata contract repairs them (control characters and lone
    # surrogates escaped), so look up what the store would have filed ``typed`` under.
    exact = safe_id(typed) or ""
    if exact:
        try:
            return _job(conn, exact).job_id
        except JobNotFoundError:
            pass
    prefix = safe_id(typed.removesuffix(ELLIPSIS)) or ""
    if not prefix:
        raise JobNotFoundError(typed)
    column = JOBS.c.job_id
    if _orders_by_code_point(conn):
        # Ids compare by their UTF-8 bytes, i.e. by code point: a range on the primary key's
        # index. (SQLite's LIKE ignores ASCII case and cannot use that index.)
        match = column >= prefix
        upper = _prefix_upper(prefix)
        if upper is not None:
            match = and_(match, column < upper)
    else:
        # Under a language collation a range is not a prefix; LIKE is, in any collation.
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        match = column.like(escaped + "%", escape="\\")
    stmt = select(JOBS).where(match).order_by(column).limit(candidates + 1)
    found = [job for job in _job_rows(conn, stmt) if job.job_id.startswith(prefix)]
    if not found:
        raise JobNotFoundError(typed)
    if len(found) == 1:
        return found[0].job_id
    raise AmbiguousJobIdError(prefix, tuple(found[:candidates]), len(found) > candidates)
