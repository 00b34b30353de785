"""Fixtures of the core tests: in-memory telemetry and settings restored after every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import propagate

from jobtrace._internal import config
from jobtrace.testing import CapturedTelemetry, capture_telemetry


@pytest.fixture
def telemetry() -> Iterator[CapturedTelemetry]:
    """Spans, metrics and records of this test, with the previous globals back afterwards."""
    with capture_telemetry() as captured:
        yield captured


@pytest.fixture(autouse=True)
def _restore_globals() -> Iterator[None]:
    """Settings and the global propagator a test changes do not leak into the next test."""
    settings = config.get_settings()
    propagator = propagate.get_global_textmap()
    try:
        yield
    finally:
        config._settings = settings
        propagate.set_global_textmap(propagator)
