"""Fixtures shared by the whole suite: in-memory telemetry, isolated stores, real services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import fresh_postgres_database


@pytest.fixture(autouse=True)
def _isolated_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test writes into the user's default lineage store, nor into the next test's."""
    monkeypatch.setenv("JOBTRACE_DATABASE_URL", f"sqlite:///{tmp_path / 'jobtrace.db'}")
    yield
    from jobtrace.lineage.recorder import stop_recorder

    stop_recorder()  # the recorder is one per process; this test's store is gone


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite lineage database file."""
    return f"sqlite:///{tmp_path / 'lineage.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each lineage test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))
