"""One read transaction per request, so a page reloaded mid-run never contradicts itself.

Each :class:`~jobtrace.lineage.queries.LineageStore` method opens its own connection, and each
statement outside a transaction sees the store as it is at that moment: the stage table and the
failures table of one page, read a few milliseconds apart while workers write, disagree.
:func:`snapshot` hands out a store whose every method runs on one connection inside one
transaction that sees a single moment: ``REPEATABLE READ READ ONLY`` on PostgreSQL, one deferred
``BEGIN`` on SQLite (in WAL mode a reader's snapshot holds until it ends, and writers go on).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, cast

from sqlalchemy.engine import Connection, Engine

from jobtrace.lineage.queries import LineageStore

__all__ = ["snapshot"]


@contextmanager
def snapshot(store: LineageStore) -> Iterator[LineageStore]:
    """A view of ``store`` frozen at one moment, for the duration of the ``with`` block.

    The transaction only reads and is rolled back at the end.
    """
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            # A page's reads are index ranges of one run at most: starting parallel workers for
            # them cost more than they saved (the run page's grouped read of a 100k-job run,
            # 64 ms in parallel, 22 ms without). For this transaction only.
            conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
        elif conn.dialect.name == "sqlite":
            # pysqlite opens transactions only before writes: open the read transaction by hand.
            conn.exec_driver_sql("BEGIN")
        frozen = copy.copy(store)
        frozen.engine = cast(Engine, _PinnedEngine(conn))
        try:
            yield frozen
        finally:
            conn.rollback()


class _PinnedEngine:
    """Stands in for the store's engine: every ``connect()`` lends the same open connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def connect(self) -> _Lent:
        return _Lent(self._conn)

    def dispose(self) -> None:
        """The real engine outlives the snapshot."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn.engine, name)


class _Lent:
    """A ``with`` block over the pinned connection that leaves it open (and its transaction)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def __enter__(self) -> Connection:
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
