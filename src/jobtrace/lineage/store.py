"""Where the lineage lives: the database URL, engines tuned per dialect, and schema upgrades.

The schema is versioned with Alembic (``jobtrace/lineage/migrations``) in its own version table,
``jobtrace_alembic_version``, so a database the application already migrates with Alembic is not
disturbed. :func:`ensure_schema` is what the recorder calls: a single cheap query when the schema
is current, an upgrade under a lock otherwise.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from jobtrace.exceptions import StoreError

VERSION_TABLE = "jobtrace_alembic_version"
#: The newest migration; a test checks it against the migration scripts.
HEAD_REVISION = "0010"
SQLITE_BUSY_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10
_PG_LOCK_KEY = 0x6A6F6274  # "jobt": serialises concurrent upgrades on PostgreSQL


def default_url() -> str:
    """``JOBTRACE_DATABASE_URL``, else a SQLite file under the user's data directory."""
    url = os.environ.get("JOBTRACE_DATABASE_URL")
    if url:
        return url
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(data_home) / 'jobtrace' / 'jobtrace.db'}"


def create_store_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """An engine on the lineage store: SQLite in WAL mode with a busy timeout, or any other URL.

    Raises:
        StoreError: The URL cannot be parsed or its driver is not installed.
    """
    url = url or default_url()
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise StoreError(f"bad database URL: {error}") from None
    if parsed.get_backend_name() != "sqlite":
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            # libpq waits forever for an unreachable host by default; a worker must not.
            kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", CONNECT_TIMEOUT)
        try:
            engine = create_engine(parsed, pool_pre_ping=True, **kwargs)
        except NoSuchModuleError as error:
            raise StoreError(f"bad database URL: {error}") from None
        except ImportError as error:
            raise StoreError(
                f"cannot open {safe_url(url)}: {error} (is its database driver installed?)"
            ) from None
        if parsed.get_backend_name() == "postgresql":
            event.listen(engine, "connect", _tune_postgres)
        return engine
    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False}
    engine = create_engine(parsed, connect_args=connect_args, **kwargs)
    event.listen(engine, "connect", _tune_sqlite)
    return engine


def _tune_postgres(dbapi_connection: Any, _record: Any) -> None:
    """No JIT: the store's queries are short index reads, which PostgreSQL's cost guesses can
    push past ``jit_above_cost``; compiling them then took 200-600 ms of a 100k-job run page."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(
            "SELECT set_config('jit', 'off', false)"
            " WHERE current_setting('server_version_num')::int >= 110000"
        )
    finally:
        cursor.close()
    dbapi_connection.commit()  # a setting made in a transaction rolled back would be undone


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (the CLI) work while workers write; NORMAL sync is safe under WAL."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def safe_url(url: str) -> str:
    """``url`` with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable URL)"


def current_revision(conn: Connection) -> str | None:
    """The schema revision of the store, ``None`` when it has none yet."""
    try:
        row = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).first()
    except DBAPIError:
        conn.rollback()
        return None
    return None if row is None else str(row[0])


def ensure_schema(engine: Engine) -> None:
    """Bring the store to the latest schema unless it is there already (one query then)."""
    with engine.connect() as conn:
        if current_revision(conn) == HEAD_REVISION:
            return
    upgrade(engine)


def upgrade(url_or_engine: str | Engine | None = None, *, attempts: int = 5) -> None:
    """Create or migrate the lineage tables; safe to run from several processes at once.

    Raises:
        StoreError: The URL is unusable.
    """
    engine = (
        url_or_engine if isinstance(url_or_engine, Engine) else create_store_engine(url_or_engine)
    )
    try:
        for attempt in range(1, attempts + 1):
            try:
                _run_migrations(engine)
                return
            except DBAPIError:
                # Another process may have created the tables between our check and our DDL.
                with engine.connect() as conn:
                    if current_revision(conn) == HEAD_REVISION:
                        return
                if attempt == attempts:
                    raise
                time.sleep(0.1 * attempt)
    finally:
        if engine is not url_or_engine:
            engine.dispose()


def _run_migrations(engine: Engine) -> None:
    """Alembic's upgrade in one transaction that holds the store's write lock throughout."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "jobtrace.lineage:migrations")
    migration_engine = _locking_sqlite_engine(engine)
    try:
        with (migration_engine or engine).begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        if migration_engine is not None:
            migration_engine.dispose()


def _locking_sqlite_engine(engine: Engine) -> Engine | None:
    """For a SQLite file: an engine whose transactions start with ``BEGIN IMMEDIATE``.

    pysqlite runs DDL outside any transaction by default; taking the write lock first makes the
    migration atomic and makes a second process wait for the first instead of racing it.
    """
    url = engine.url
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    locking = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})

    @event.listens_for(locking, "connect")
    def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(locking, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return locking
