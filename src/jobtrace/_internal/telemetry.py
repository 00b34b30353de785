"""The tracer and the metric instruments jobtrace writes with, and flushing them.

Looked up from the global providers and cached per provider, so an application (or a test) that
installs its providers after importing jobtrace is honoured without a lookup on every job. An
instrumentor given its own providers (``tracer_provider=``, ``meter_provider=``) passes them on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.util.types import Attributes

from jobtrace._internal import delivery, forkchannel, semconv
from jobtrace._version import __version__

logger = logging.getLogger("jobtrace")

SCOPE = "jobtrace"

_tracer_cache: tuple[object, trace.Tracer] | None = None
# Tracers and instruments of the providers instrumentors were given, made once per provider.
_given_tracers: weakref.WeakKeyDictionary[trace.TracerProvider, trace.Tracer] = (
    weakref.WeakKeyDictionary()
)
_given_instruments: weakref.WeakKeyDictionary[MeterProvider, Instruments] = (
    weakref.WeakKeyDictionary()
)
_given_lock = threading.Lock()


def tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """jobtrace's tracer from ``provider``, else from the current global tracer provider."""
    if provider is not None:
        found = _given_tracers.get(provider)
        if found is None:
            with _given_lock:
                found = _given_tracers.setdefault(provider, provider.get_tracer(SCOPE, __version__))
        return found
    global _tracer_cache
    provider = trace.get_tracer_provider()
    cached = _tracer_cache
    if cached is not None and cached[0] is provider:
        return cached[1]
    new = provider.get_tracer(SCOPE, __version__)
    _tracer_cache = (provider, new)
    return new


class OutcomeTally:
    """Job runs (or messages) of this process counted by attribute set, for an asynchronous counter.

    A dict increment per job instead of a synchronous ``Counter.add``, which costs the SDK an
    attribute hash, a lock and an exemplar per call: the counts are exact either way, and the
    SDK's work is paid once per attribute set per collection, not once per job. One tally per
    counter and process: every meter provider's counter observes it, from the moment it was
    registered (a provider installed later, or the SDK keeping the first of two registrations,
    loses nothing).
    """

    def __init__(self) -> None:
        self._counts: dict[TallyKey, int] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._handed_off = False

    def add(self, attributes: TallyKey) -> None:
        """Count one job run (or message) with these (already ordered) attributes."""
        if self._handed_off:
            if forkchannel.send(TALLY, (_TALLIES.index(self), attributes)):
                return  # a forked child's count, counted by its parent
            forkchannel.dropped("metrics")  # counted here: this child's flush must export it
        with self._lock:
            self._counts[attributes] = self._counts.get(attributes, 0) + 1

    def _snapshot(self) -> tuple[int, dict[TallyKey, int]]:
        with self._lock:
            return self._generation, dict(self._counts)

    def callback(self) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """An observable counter's callback: the counts since this call, cumulative."""
        generation, baseline = self._snapshot()

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            nonlocal generation, baseline
            now, counts = self._snapshot()
            if now != generation:  # forked since: the child counts from zero
                generation, baseline = now, {}
            return [
                Observation(count - baseline.get(attributes, 0), dict(attributes))
                for attributes, count in counts.items()
                if count > baseline.get(attributes, 0)
            ]

        return observe

    def restart_in_child(self) -> None:
        """In a forked child: count its own job runs only.

        Never waits on the lock, which another thread of the parent may have held at ``fork``.
        """
        self._lock = threading.Lock()
        self._counts = {}
        self._generation += 1
        self._handed_off = False


TallyKey = tuple[tuple[str, str | int], ...]
"""A counted attribute set, as ``tuple(attributes.items())``."""

OUTCOMES = OutcomeTally()
"""``jobtrace.job.outcomes``: job runs by name, queue and outcome."""
CONSUMED = OutcomeTally()
"""``messaging.client.consumed.messages``: jobs delivered to this process, counted as they start."""
SENT = OutcomeTally()
"""``messaging.client.sent.messages``: jobs this process sent, counted as each send ends."""
_TALLIES = (OUTCOMES, CONSUMED, SENT)


@dataclass(frozen=True, slots=True)
class Instruments:
    """The job metrics: the messaging conventions' four, and jobtrace's queue wait and outcomes.

    ``jobtrace.job.duration`` is gone: ``messaging.process.duration`` carries the job's name and
    outcome as well, and one histogram record per job is cheaper than two of the same value.
    """

    process_duration: Histogram
    queue_wait: Histogram
    operation_duration: Histogram
    outcomes: OutcomeTally
    consumed: OutcomeTally
    sent: OutcomeTally


_instruments_cache: tuple[object, Instruments] | None = None


def instruments(provider: MeterProvider | None = None) -> Instruments:
    """jobtrace's metric instruments from ``provider``, else from the current global meter provider."""
    if provider is not None:
        found = _given_instruments.get(provider)
        if found is None:
            with _given_lock:  # made once: each registers the counters' callbacks
                found = _given_instruments.get(provider)
                if found is None:
                    found = _given_instruments[provider] = _create_instruments(provider)
        return found
    global _instruments_cache
    provider = metrics.get_meter_provider()
    cached = _instruments_cache
    if cached is not None and cached[0] is provider:
        return cached[1]
    new = _create_instruments(provider)
    _instruments_cache = (provider, new)
    return new


def _histogram(meter: Meter, name: str, description: str, buckets: Sequence[float]) -> Histogram:
    """A histogram in seconds with the API's bucket advisory (a View of the application wins)."""
    try:
        return meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # a meter implementation that predates the advisory (API < 1.23)
        return meter.create_histogram(name, unit="s", description=description)


def _create_instruments(provider: MeterProvider) -> Instruments:
    meter: Meter = provider.get_meter(SCOPE, __version__)
    for name, tally, unit, description in (
        (semconv.METRIC_OUTCOMES, OUTCOMES, "{job}", "Job runs by outcome."),
        (
            semconv.METRIC_CONSUMED_MESSAGES,
            CONSUMED,
            "{message}",
            "Number of messages that were delivered to the application.",
        ),
        (
            semconv.METRIC_SENT_MESSAGES,
            SENT,
            "{message}",
            "Number of messages producer attempted to send to the broker.",
        ),
    ):
        meter.create_observable_counter(
            name, callbacks=[tally.callback()], unit=unit, description=description
        )
    return Instruments(
        process_duration=_histogram(
            meter,
            semconv.METRIC_PROCESS_DURATION,
            "Duration of processing operation.",
            semconv.JOB_DURATION_BUCKETS,
        ),
        queue_wait=_histogram(
            meter,
            semconv.METRIC_QUEUE_WAIT,
            "How long jobs wait between becoming due (enqueued, or their delay over) and start.",
            semconv.JOB_DURATION_BUCKETS,
        ),
        operation_duration=_histogram(
            meter,
            semconv.METRIC_OPERATION_DURATION,
            "Duration of messaging operation initiated by a producer or consumer client.",
            semconv.CLIENT_DURATION_BUCKETS,
        ),
        outcomes=OUTCOMES,
        consumed=CONSUMED,
        sent=SENT,
    )


MEASURE = "measure"
TALLY = "tally"


class _HandedOffHistogram(Histogram):
    """In a forked child: each measurement goes to the parent's histogram of the same name.

    A work horse lives for one job: its own cumulative histograms would restart with every horse
    and cost every job an export. The parent aggregates them with its own.
    """

    def __init__(self, field: str, inner: Histogram) -> None:
        self._field = field
        self._inner = inner

    def record(self, amount: float, attributes: Attributes = None, context: object = None) -> None:
        if not forkchannel.send(MEASURE, (self._field, amount, dict(attributes or {}))):
            forkchannel.dropped("metrics")  # recorded here: this child's flush must export it
            self._inner.record(amount, attributes)


def _take_measurement(payload: tuple[str, float, dict[str, str | int]]) -> None:
    field, amount, attributes = payload
    histogram: Histogram = getattr(instruments(), field)
    histogram.record(amount, attributes)


def _take_count(payload: tuple[int, TallyKey]) -> None:
    index, attributes = payload
    _TALLIES[index].add(tuple(tuple(pair) for pair in attributes))  # type: ignore[misc]


def _warm_before_fork() -> None:
    """Make the tracer and the instruments before a fork, so a child starts with them made.

    With a real meter provider, children hand their measurements to this process (below).
    """
    try:
        tracer()
        provider = metrics.get_meter_provider()
        instruments()
        # Only a provider jobtrace installed: children of an application's own provider export
        # themselves, with the application's own metrics, as they always did.
        if (
            isinstance(provider, SdkMeterProvider)
            and delivery.is_adopted(provider)
            and forkchannel.enabled()
        ):
            forkchannel.handle(MEASURE, _take_measurement)
            forkchannel.handle(TALLY, _take_count)
    except Exception:
        logger.debug("jobtrace: warming up before a fork failed", exc_info=True)


_main_pid = os.getpid()


def _note_fork() -> None:
    global _in_forked_child, _instruments_cache
    _in_forked_child = True
    for tally in _TALLIES:
        tally.restart_in_child()
    cached = _instruments_cache
    if cached is None or not forkchannel.handled(MEASURE):
        return
    provider, made = cached
    if provider is not metrics.get_meter_provider():
        return
    _instruments_cache = (
        provider,
        dataclasses.replace(
            made,
            process_duration=_HandedOffHistogram("process_duration", made.process_duration),
            queue_wait=_HandedOffHistogram("queue_wait", made.queue_wait),
            operation_duration=_HandedOffHistogram("operation_duration", made.operation_duration),
        ),
    )
    for tally in _TALLIES:
        tally._handed_off = True
    forkchannel.hand_off("metrics")


_in_forked_child = False
# Before-fork hooks run last registered first: this one before forkchannel's opens the channel.
os.register_at_fork(before=_warm_before_fork, after_in_child=_note_fork)


def in_forked_child() -> bool:
    """Whether this process was forked after jobtrace was imported (prefork pools, RQ's horse)."""
    return _in_forked_child


def flush(timeout: float, providers: Iterable[object] = ()) -> None:
    """Push out spans, metrics and lineage records now; never raises, never waits past ``timeout``.

    The three share ``timeout``. An exporter or store that failed or timed out a moment ago is not
    waited for: job ends skip it while it backs off (see :mod:`jobtrace._internal.delivery`).

    Args:
        timeout: Seconds, for spans, metrics and records together.
        providers: Tracer and meter providers to flush besides the global ones (``None`` skipped).
    """
    delivery.flush(timeout, providers)
