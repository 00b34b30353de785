"""Fixtures of the conformance suite: one driver (and worker) per adapter and store, per module.

Tests choose the stores they run on with :func:`on`: ``on(*SQLITE)`` or ``on(*BOTH)``. Every test of
one module with the same driver shares its worker; pytest groups them, so one worker runs at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integrations.conformance.drivers import DRIVERS, Driver
from tests.services import fresh_postgres_database

ADAPTERS = ("local", "celery", "rq", "arq", "dramatiq")
SQLITE = tuple(f"{adapter}-sqlite" for adapter in ADAPTERS)
BOTH = (*SQLITE, *(f"{adapter}-postgresql" for adapter in ADAPTERS))


def on(*drivers: str) -> pytest.MarkDecorator:
    """Run the test once per driver named ``<adapter>-<store>``."""
    return pytest.mark.parametrize("driver", drivers, indirect=True, scope="module")


@pytest.fixture(scope="module")
def driver(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Driver]:
    """An adapter's driver with its worker started, on a store of its own."""
    adapter, store = str(request.param).split("-")
    directory = tmp_path_factory.mktemp(str(request.param))

    def run(url: str) -> Iterator[Driver]:
        driver = DRIVERS[adapter](directory=directory, database_url=url)
        try:
            driver.open()
            yield driver
        finally:
            driver.close()

    if store == "postgresql":
        with fresh_postgres_database() as url:
            yield from run(url)
    else:
        yield from run(f"sqlite:///{directory / 'lineage.db'}")


@pytest.fixture(autouse=True)
def _worker_running(request: pytest.FixtureRequest) -> None:
    """Each test starts with a live worker, even after the one before killed it."""
    if "driver" in request.fixturenames:
        driver: Driver = request.getfixturevalue("driver")
        driver.ensure_worker()


@pytest.fixture
def barrier(tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Make barrier files for held jobs; every one is released when the test ends."""
    made: list[Path] = []

    def make() -> str:
        path = tmp_path / f"barrier-{len(made)}"
        made.append(path)
        return str(path)

    yield make
    for path in made:
        path.touch()
