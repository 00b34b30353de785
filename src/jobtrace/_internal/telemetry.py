"""The tracer and the metric instruments jobtrace writes with, and flushing them.

Looked up from the global providers and cached per provider, so an application (or a test) that
installs its providers after importing jobtrace is honoured without a lookup on every job.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Histogram, Observation

from jobtrace._internal import records, semconv
from jobtrace._version import __version__

logger = logging.getLogger("jobtrace")

SCOPE = "jobtrace"

_tracer_cache: tuple[object, trace.Tracer] | None = None


def tracer() -> trace.Tracer:
    """jobtrace's tracer from the current global tracer provider."""
    global _tracer_cache
    provider = trace.get_tracer_provider()
    cached = _tracer_cache
    if cached is not None and cached[0] is provider:
        return cached[1]
    new = provider.get_tracer(SCOPE, __version__)
    _tracer_cache = (provider, new)
    return new


class OutcomeTally:
    """Job runs counted by attribute set, reported by an asynchronous counter at collection.

    A dict increment per job instead of a synchronous ``Counter.add``, which costs the SDK an
    attribute hash, a lock and an exemplar per call: the counts are exact either way, and the
    SDK's work is paid once per attribute set per collection, not once per job.
    """

    def __init__(self) -> None:
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}
        self._lock = threading.Lock()

    def add(self, attributes: tuple[tuple[str, str], ...]) -> None:
        """Count one job run with these (already ordered) attributes."""
        with self._lock:
            self._counts[attributes] = self._counts.get(attributes, 0) + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """The cumulative counts, as the observable counter's callback."""
        with self._lock:
            counts = list(self._counts.items())
        return [Observation(count, dict(attributes)) for attributes, count in counts]

    def forget(self) -> None:
        """Start from zero (a forked child reports its own job runs only)."""
        with self._lock:
            self._counts.clear()


@dataclass(frozen=True, slots=True)
class Instruments:
    """The three job metrics, attributed by job name, queue and outcome."""

    duration: Histogram
    queue_wait: Histogram
    outcomes: OutcomeTally


_instruments_cache: tuple[object, Instruments] | None = None


def instruments() -> Instruments:
    """jobtrace's metric instruments from the current global meter provider."""
    global _instruments_cache
    provider = metrics.get_meter_provider()
    cached = _instruments_cache
    if cached is not None and cached[0] is provider:
        return cached[1]
    meter = provider.get_meter(SCOPE, __version__)
    outcomes = OutcomeTally()
    meter.create_observable_counter(
        semconv.METRIC_OUTCOMES,
        callbacks=[outcomes.observe],
        unit="{job}",
        description="Job runs by outcome.",
    )
    new = Instruments(
        duration=meter.create_histogram(
            semconv.METRIC_DURATION, unit="s", description="How long job runs take."
        ),
        queue_wait=meter.create_histogram(
            semconv.METRIC_QUEUE_WAIT,
            unit="s",
            description="How long jobs wait between enqueue and start.",
        ),
        outcomes=outcomes,
    )
    _instruments_cache = (provider, new)
    return new


_main_pid = os.getpid()


def _note_fork() -> None:
    global _in_forked_child
    _in_forked_child = True
    cached = _instruments_cache
    if cached is not None:
        cached[1].outcomes.forget()


_in_forked_child = False
os.register_at_fork(after_in_child=_note_fork)


def in_forked_child() -> bool:
    """Whether this process was forked after jobtrace was imported (prefork pools, RQ's horse)."""
    return _in_forked_child


def flush(timeout: float) -> None:
    """Push out spans, metrics and lineage records now; never raises, never waits past ``timeout``."""
    millis = max(1, int(timeout * 1000))
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is None:
            continue
        try:
            force_flush(millis)
        except Exception:
            logger.warning("jobtrace: flushing %r failed", provider, exc_info=True)
    records.flush(timeout)
