"""Fixtures of the dashboard's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.web.support import Dashboard, Stored, build, running


@pytest.fixture(autouse=True)
def _no_trace_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trace links follow the test's template, not one set on the machine."""
    monkeypatch.delenv("JOBTRACE_TRACE_URL", raising=False)


@pytest.fixture
def stored(sqlite_url: str) -> Stored:
    """The stores of :func:`build` on SQLite."""
    return build(sqlite_url)


@pytest.fixture
def dashboard(stored: Stored) -> Iterator[Dashboard]:
    """The dashboard over :func:`stored`, with the default (Jaeger) trace links."""
    with running(stored.url) as served:
        yield served
