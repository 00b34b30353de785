"""The store: URLs, engines, and schema upgrades that match the models on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from jobtrace.exceptions import StoreError
from jobtrace.lineage import store
from jobtrace.lineage.models import Base
from jobtrace.records import JobState


def test_head_revision_is_the_newest_migration() -> None:
    """HEAD_REVISION (the recorder's fast check) names the newest migration script."""
    config = Config()
    config.set_main_option("script_location", "jobtrace.lineage:migrations")
    assert ScriptDirectory.from_config(config).get_current_head() == store.HEAD_REVISION


def test_upgrade_builds_exactly_the_models_schema(store_url: str) -> None:
    """After upgrade, Alembic finds no difference between the database and the models."""
    store.upgrade(store_url)
    engine = store.create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": store.VERSION_TABLE})
            assert compare_metadata(context, Base.metadata) == []
            assert store.current_revision(conn) == store.HEAD_REVISION
    finally:
        engine.dispose()


def test_upgrade_twice_changes_nothing(sqlite_url: str) -> None:
    """A second upgrade (cron, every worker at start) is a no-op."""
    store.upgrade(sqlite_url)
    store.upgrade(sqlite_url)
    engine = store.create_store_engine(sqlite_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert tables == {"jobtrace_jobs", "jobtrace_attempts", "jobtrace_gaps", store.VERSION_TABLE}


def test_concurrent_upgrades_from_four_processes(store_url: str) -> None:
    """Four workers starting at once on a fresh store all succeed and leave one schema."""
    code = "import sys; from jobtrace.lineage.store import upgrade; upgrade(sys.argv[1])"
    processes = [
        subprocess.Popen([sys.executable, "-c", code, store_url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], errors
    engine = store.create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            assert store.current_revision(conn) == store.HEAD_REVISION
    finally:
        engine.dispose()


def test_sqlite_store_uses_wal_and_creates_its_directory(tmp_path: Path) -> None:
    """The embedded store creates its folder and runs in WAL mode, so readers never block writers."""
    url = f"sqlite:///{tmp_path / 'deep' / 'dir' / 'lineage.db'}"
    engine = store.create_store_engine(url)
    try:
        with engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    finally:
        engine.dispose()
    assert mode == "wal"
    assert (tmp_path / "deep" / "dir").is_dir()


def test_default_url_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """JOBTRACE_DATABASE_URL wins; else a file under XDG_DATA_HOME."""
    monkeypatch.setenv("JOBTRACE_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert store.default_url() == "postgresql+psycopg://u@h/db"
    monkeypatch.delenv("JOBTRACE_DATABASE_URL")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert store.default_url() == f"sqlite:///{tmp_path / 'jobtrace' / 'jobtrace.db'}"


@pytest.mark.parametrize(
    ("url", "message"),
    [("not a url", "bad database URL"), ("nosuchdialect://h/db", "bad database URL")],
)
def test_unusable_urls_raise_store_error(url: str, message: str) -> None:
    """A URL SQLAlchemy cannot use is a StoreError with a message, not a stack of internals."""
    with pytest.raises(StoreError, match=message):
        store.create_store_engine(url)


def test_upgrade_from_the_first_schema_keeps_the_rows(store_url: str) -> None:
    """A store made by the first release upgrades in place: rows stay, new columns are empty."""
    from alembic import command
    from sqlalchemy import text

    config = Config()
    config.set_main_option("script_location", "jobtrace.lineage:migrations")
    engine = store.create_store_engine(store_url)
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
            conn.execute(
                text(
                    "INSERT INTO jobtrace_jobs (job_id, name, state, attempt, root_job_id, depth)"
                    " VALUES ('old-1', 'PageJob', 'queued', 1, 'old-1', 0)"
                )
            )
        store.upgrade(store_url)
        with engine.connect() as conn:
            assert store.current_revision(conn) == store.HEAD_REVISION
            row = conn.execute(text("SELECT job_id, state, due_at FROM jobtrace_jobs")).one()
    finally:
        engine.dispose()
    assert tuple(row) == ("old-1", "queued", None)


def test_postgres_engines_turn_jit_off(store_url: str) -> None:
    """A PostgreSQL engine from create_store_engine runs without JIT (compiling the run page's
    short index reads cost more than running them); SQLite is untouched."""
    engine = store.create_store_engine(store_url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                pytest.skip("PostgreSQL's JIT")
            assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
            conn.rollback()
            assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
    finally:
        engine.dispose()


def _upgrade_to(conn: Connection, revision: str) -> None:
    """The store on ``conn`` migrated to ``revision`` (not further), in ``conn``'s transaction."""
    from alembic import command

    config = Config()
    config.set_main_option("script_location", "jobtrace.lineage:migrations")
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


def _insert_root(conn: Connection, state: str) -> None:
    """One root job ``r`` in ``state``, written as any revision's table takes it."""
    conn.exec_driver_sql(
        "INSERT INTO jobtrace_jobs (job_id, name, state, attempt, root_job_id, depth)"
        f" VALUES ('r', 'SyncJob', '{state}', 1, 'r', 0)"
    )


def _has_index(conn: Connection, name: str) -> bool:
    """Whether the SQLite store on ``conn`` has an index (or any object) named ``name``."""
    found = conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = ?", (name,))
    return found.first() is not None


def test_an_analyzed_sqlite_store_gets_statistics_of_the_run_page_indexes(
    tmp_path: Path,
) -> None:
    """Revisions 0007 and 0008 analyze their indexes on a SQLite store analyzed before, so the
    planner does not misjudge them beside indexes it has statistics for; an unanalyzed store
    stays so."""
    for analyzed in (True, False):
        url = f"sqlite:///{tmp_path / f'store-{analyzed}.db'}"
        engine = store.create_store_engine(url)
        try:
            with engine.begin() as conn:
                _upgrade_to(conn, "0006")
                _insert_root(conn, "queued")  # SQLite keeps no statistics of an empty table
                if analyzed:
                    conn.exec_driver_sql("ANALYZE")
            store.upgrade(url)
            with engine.connect() as conn:
                has_stats = conn.exec_driver_sql(
                    "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'"
                ).first()
                indexes = set()
                if has_stats:
                    indexes = {
                        row[0] for row in conn.exec_driver_sql("SELECT idx FROM sqlite_stat1")
                    }
        finally:
            engine.dispose()
        assert bool(has_stats) is analyzed
        if analyzed:
            run_page = {"ix_jobtrace_jobs_stage_queues", "ix_jobtrace_jobs_stage_parents"}
            assert {*run_page, "ix_jobtrace_jobs_run_traces"} <= indexes  # 0008's too


def test_revision_0009_drops_the_stage_state_index_and_counts_stay_index_only(
    tmp_path: Path,
) -> None:
    """An 0008 store upgraded to 0009 keeps its rows, loses the (root, depth, name, state) index
    every record paid for, and a run's counts per stage and state read the wider stage-list index
    alone."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = store.create_store_engine(url)
    gone = "ix_jobtrace_jobs_root_job_id_depth_name_state"
    try:
        with engine.begin() as conn:
            _upgrade_to(conn, "0008")
            _insert_root(conn, "queued")
            assert _has_index(conn, gone)
        with engine.begin() as conn:
            _upgrade_to(conn, "0009")
        with engine.connect() as conn:
            assert store.current_revision(conn) == "0009"
            assert not _has_index(conn, gone)
            assert conn.exec_driver_sql("SELECT count(*) FROM jobtrace_jobs").scalar() == 1
            plan = " ".join(
                str(row[-1])
                for row in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT depth, name, state, count(*) FROM jobtrace_jobs"
                    " WHERE root_job_id = 'r' GROUP BY depth, name, state"
                )
            )
    finally:
        engine.dispose()
    assert "COVERING INDEX ix_jobtrace_jobs_stage_list" in plan, plan


def test_revision_0010_leaves_the_writer_fewer_indexes_and_the_reaper_and_runs_their_plans(
    tmp_path: Path,
) -> None:
    """An 0009 store upgraded to 0010 keeps its rows, loses ``(state, heartbeat_at)`` (every
    finished job was in it) and keeps ``(depth, enqueued_at)`` for roots only; the reaper's
    reads of running and queued jobs are ranges of the partial index of jobs on a queue, the
    runs list still reads the roots' index, and a list across runs by state alone reads the
    partial index of its states (no read scans the jobs)."""
    from datetime import datetime, timezone

    from sqlalchemy import event

    from jobtrace.lineage.joblist import JobFilter
    from jobtrace.lineage.queries import LineageStore
    from jobtrace.lineage.reaper import reap

    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = store.create_store_engine(url)
    gone, roots = "ix_jobtrace_jobs_state_heartbeat_at", "ix_jobtrace_jobs_depth_enqueued_at"
    try:
        with engine.begin() as conn:
            _upgrade_to(conn, "0009")
            _insert_root(conn, "running")
            assert _has_index(conn, gone)
        store.upgrade(url)
        with engine.connect() as conn:
            assert store.current_revision(conn) == "0010"
            assert not _has_index(conn, gone)
            sql = conn.exec_driver_sql(
                f"SELECT sql FROM sqlite_master WHERE name = '{roots}'"
            ).scalar_one()
            assert "WHERE depth = 0" in sql, sql
            assert conn.exec_driver_sql("SELECT count(*) FROM jobtrace_jobs").scalar() == 1
        seen: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, stmt: str, params: Any, ctx: Any, many: bool) -> None:
            if stmt.lstrip().startswith("SELECT") and "jobtrace_jobs" in stmt:
                seen.append((stmt, params))

        event.listen(Engine, "before_cursor_execute", capture)
        try:
            reap(url, now=datetime(2030, 1, 1, tzinfo=timezone.utc))
            reads = len(seen)
            with LineageStore(url) as lineage:
                lineage.runs(20)
                for states in (("discarded",), ("crashed", "failed"), ("queued",), ("running",)):
                    lineage.jobs(JobFilter(states=states))
        finally:
            event.remove(Engine, "before_cursor_execute", capture)
        assert reads == 2, seen  # running, then queued
        with engine.connect() as conn:
            plans = [
                " | ".join(
                    str(row[-1])
                    for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params)
                )
                for stmt, params in seen
            ]
    finally:
        engine.dispose()
    for plan in plans[:reads]:
        assert "USING INDEX ix_jobtrace_jobs_active_queues (state=?)" in plan, plans
    assert f"INDEX {roots}" in plans[reads], plans
    # A list across runs by state alone: a rare state's index, or the active jobs' one.
    lists = plans[reads + 1 :]
    assert sum("INDEX ix_jobtrace_jobs_rare_states (state=?" in plan for plan in lists) >= 2, lists
    assert sum("INDEX ix_jobtrace_jobs_active_queues (state=?" in plan for plan in lists) >= 2, (
        lists
    )
    assert not any("SCAN jobtrace_jobs" in plan for plan in plans), plans


def _index_definitions(engine: Engine) -> dict[str, str]:
    """The jobs table's indexes as the database holds them: SQLite's ``sqlite_master`` SQL,
    PostgreSQL's ``pg_indexes`` definitions."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'jobtrace_jobs' AND sql IS NOT NULL"
            )
        else:
            rows = conn.exec_driver_sql(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobtrace_jobs'"
            )
        return {str(name): str(sql) for name, sql in rows}


def _predicate_states(definition: str) -> list[str]:
    """The states of a partial index's ``state = ...`` equalities joined by ``OR``; fails on any
    other predicate (an ``IN`` list, PostgreSQL's ``= ANY (ARRAY[...])``)."""
    predicate = definition.split(" WHERE ", 1)[1]
    terms = predicate.split(" OR ")
    states = [
        re.fullmatch(r"\(*(?:\(state\)::text|state) = '(\w+)'(?:::text)?\)*", term)
        for term in terms
    ]
    assert all(states), definition
    return [match.group(1) for match in states if match]


def test_revision_0010_writes_the_state_indexes_predicates_as_equalities(store_url: str) -> None:
    """Upgraded to 0010, the partial indexes of the active and of the rare states hold their
    states as equalities joined by ``OR`` (SQLite evaluates a partial index's predicate on every
    write, and an ``IN`` list of more than two values builds a lookup table each time), exactly
    as models.py writes them, which the queries repeat; a store built from the models has the
    same indexes as a migrated one; the downgrade to 0009 gives the active states back their
    revision-0006 ``IN`` list."""
    from alembic import command

    from jobtrace.lineage import models
    from tests.services import fresh_postgres_database

    active, rare = "ix_jobtrace_jobs_active_queues", "ix_jobtrace_jobs_rare_states"
    assert set(models.ACTIVE_STATE_VALUES) | set(models.RARE_STATE_VALUES) < {
        state.value for state in JobState
    }
    store.upgrade(store_url)
    engine = store.create_store_engine(store_url)
    config = Config()
    config.set_main_option("script_location", "jobtrace.lineage:migrations")
    try:
        migrated = _index_definitions(engine)
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0009")
        downgraded = _index_definitions(engine)
    finally:
        engine.dispose()
    assert _predicate_states(migrated[active]) == list(models.ACTIVE_STATE_VALUES), migrated
    assert _predicate_states(migrated[rare]) == list(models.RARE_STATE_VALUES), migrated
    assert rare not in downgraded, downgraded
    if store_url.startswith("sqlite"):
        assert migrated[active].endswith(f" WHERE {models.ACTIVE_QUEUE_STATES}"), migrated
        assert migrated[rare].endswith(f" WHERE {models.RARE_STATES}"), migrated
        assert downgraded[active].endswith(
            " WHERE state IN ('queued', 'retrying', 'stalled', 'running')"
        ), downgraded
    else:
        definition = downgraded[active]
        assert "= ANY (" in definition, definition
        assert " OR " not in definition, definition

    # The models' own schema (compare_metadata does not compare partial indexes' predicates).
    def built(url: str) -> dict[str, str]:
        engine = store.create_store_engine(url)
        try:
            models.Base.metadata.create_all(engine)
            return _index_definitions(engine)
        finally:
            engine.dispose()

    if store_url.startswith("sqlite"):
        from_models = built(store_url.replace("lineage.db", "from-models.db"))
    else:
        with fresh_postgres_database() as url:
            from_models = built(url)
    assert from_models == migrated
