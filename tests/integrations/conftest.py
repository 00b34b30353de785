"""Fixtures every integration test shares."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def database_url() -> str:
    """The lineage store the workers write to: the per-test SQLite file of the suite's conftest."""
    return os.environ["JOBTRACE_DATABASE_URL"]
