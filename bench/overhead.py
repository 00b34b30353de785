"""What jobtrace costs per job, next to the same hop written by hand with the bare SDK.

One "job" is one enqueue plus one run:

* jobtrace: ``prepare_enqueue`` then ``trace_job`` with the defaults a user gets: arguments
  recorded (redacted JSON), the three job metrics, and a record sink that hands each record to a
  bounded deque, as the lineage recorder does.
* by hand: a PRODUCER span and ``propagate.inject`` into a dict, then ``propagate.extract`` and a
  CONSUMER span, with the messaging attributes the semantic conventions ask for.

Every job is given a fresh arguments dict (an equal copy of ``ARGS``), each variant alike: a
job's arguments are a new dict in any real program, and jobtrace's one-entry cache reuses a send's
text only for a run of the very dict that send recorded (the same-process case: ``LocalQueue``, an
eager mode), so with one shared dict every job after the first would skip redaction altogether.
The send and the run of one job get the same dict, as in that same-process case; a broker would
hand the run a decoded copy (the docs give that figure too).

Both write to the same ``BatchSpanProcessor`` with an exporter that drops everything, and run in
interleaved rounds so drift (CPU frequency, the batch thread) hits both alike; the medians are
compared. The whole is repeated with the ``ALWAYS_OFF`` sampler. Run::

    python bench/overhead.py [--rounds 15] [--jobs 2000]

The last line is ``overhead_ratio=<jobtrace / by hand, sampled>``.
"""

from __future__ import annotations

import argparse
import collections
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler, SamplingResult
from opentelemetry.trace import SpanKind

import jobtrace
from jobtrace import records

ARGS = {"source": "example-cinema", "movie_id": 4402192, "page": 3, "api_key": "k-123"}
"""The arguments of every job; each job gets its own copy (see :func:`per_job_us`)."""


class DropExporter(SpanExporter):
    """Accepts every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def with_jobtrace(args: dict[str, Any]) -> None:
    """One job through jobtrace: its send and its run record the job's own arguments dict."""
    metadata = jobtrace.prepare_enqueue("MoviePageJob", queue="default", args=args)
    with jobtrace.trace_job(metadata, name="MoviePageJob", queue="default", args=args):
        pass


def by_hand(tracer: trace.Tracer) -> Callable[[dict[str, Any]], None]:
    """The same hop written with the SDK alone; it is given the job's arguments and ignores them."""

    def hop(args: dict[str, Any]) -> None:
        carrier: dict[str, str] = {}
        send = tracer.start_span(
            "send MoviePageJob",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "jobtrace",
                "messaging.operation.type": "send",
                "messaging.destination.name": "default",
            },
        )
        propagate.inject(carrier, context=trace.set_span_in_context(send))
        send.end()
        context = propagate.extract(carrier)
        with tracer.start_as_current_span(
            "process MoviePageJob",
            context=context,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "jobtrace",
                "messaging.operation.type": "process",
                "messaging.destination.name": "default",
            },
        ):
            pass

    return hop


def same_telemetry_by_hand(tracer: trace.Tracer) -> Callable[[dict[str, Any]], None]:
    """The SDK floor: by hand, but writing as many attributes and metrics as jobtrace does.

    The same span attributes, and jobtrace's three histograms (the send's duration, the queue
    wait, the run's duration) with the same attribute sets; jobtrace's three counters are one
    ``Counter.add`` here (jobtrace counts in a dict and reports at collection). What is left
    between this and jobtrace is jobtrace's own work (metadata, lineage, redaction, records);
    what is between this and :func:`by_hand` is the SDK recording more telemetry.

    The ``jobtrace.job.args`` attribute is the text jobtrace records for ``ARGS``, written as a
    constant: turning a job's arguments into text (secrets redacted, JSON encoded, bounded) is part
    of jobtrace's own work this floor leaves out, like the metadata and the records. The hop is
    given the same fresh dict per job as the other variants, so building it is charged to none of
    them. A hand-written ``json.dumps`` of the dict would add about 2 us a job here (without any
    redaction or bounds): the floor is a lower bound, not what a careful hand-written hop costs.
    """
    meter = metrics.get_meter("same-telemetry")
    duration = meter.create_histogram("hand.duration", unit="s")
    queue_wait = meter.create_histogram("hand.queue_wait", unit="s")
    send_duration = meter.create_histogram("hand.send_duration", unit="s")
    outcomes = meter.create_counter("hand.outcomes")
    args_text = '{"source":"example-cinema","movie_id":4402192,"page":3,"api_key":"[REDACTED]"}'
    common: dict[str, Any] = {
        "messaging.system": "jobtrace",
        "messaging.destination.name": "default",
        "messaging.message.id": "8f14e45fceea167a5a36dedd4bea2543",
        "jobtrace.job.id": "8f14e45fceea167a5a36dedd4bea2543",
        "jobtrace.job.name": "MoviePageJob",
        "jobtrace.job.root_id": "8f14e45fceea167a5a36dedd4bea2543",
        "jobtrace.job.depth": 0,
        "jobtrace.relationship": "child",
        "jobtrace.job.args": args_text,
    }
    # The attribute sets of jobtrace's metrics: the conventions' messaging.client.operation.duration
    # of the send, jobtrace.job.queue_wait, messaging.process.duration (with the job's name and
    # outcome) and the outcome count.
    send_attributes = {
        "messaging.system": "jobtrace",
        "messaging.operation.name": "send",
        "messaging.destination.name": "default",
        "messaging.operation.type": "send",
    }
    metric_attributes = {
        "jobtrace.job.name": "MoviePageJob",
        "messaging.destination.name": "default",
    }
    outcome_attributes = {**metric_attributes, "jobtrace.job.outcome": "succeeded"}
    process_attributes = {
        "messaging.system": "jobtrace",
        "messaging.operation.name": "process",
        **outcome_attributes,
    }

    def hop(args: dict[str, Any]) -> None:
        carrier: dict[str, str] = {}
        sent = time.time()
        send = tracer.start_span(
            "send MoviePageJob",
            kind=SpanKind.PRODUCER,
            attributes={
                **common,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
            },
        )
        propagate.inject(carrier, context=trace.set_span_in_context(send))
        send.end()
        send_duration.record(time.time() - sent, send_attributes)
        context = propagate.extract(carrier)
        started = time.time()
        with tracer.start_as_current_span(
            "process MoviePageJob",
            context=context,
            kind=SpanKind.CONSUMER,
            attributes={
                **common,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "jobtrace.job.attempt": 1,
                "jobtrace.job.queue_wait_s": 0.001,
            },
        ) as span:
            queue_wait.record(0.001, metric_attributes)
            span.set_attributes({"jobtrace.job.outcome": "succeeded"})
            duration.record(time.time() - started, process_attributes)
            outcomes.add(1, outcome_attributes)

    return hop


def per_job_us(func: Callable[[dict[str, Any]], None], jobs: int) -> float:
    """CPU microseconds of this thread per call of ``func`` over ``jobs`` calls.

    Each call is given a fresh copy of ``ARGS``, made inside the timed loop for every variant
    alike (``dict(ARGS)``, a fraction of a microsecond).

    Thread CPU time, not wall time: the batch processor's export thread and other processes on
    the machine then cost neither side anything, which keeps the comparison steady. The garbage
    collector is paused while timing, as ``timeit`` does.
    """
    gc.collect()
    gc.disable()  # as timeit does: a collection landing in one side's round is noise
    try:
        started = time.thread_time()
        for _ in range(jobs):
            func(dict(ARGS))
        return (time.thread_time() - started) / jobs * 1e6
    finally:
        gc.enable()


class SwitchSampler(Sampler):
    """Delegates to ``target``, so one global provider serves the sampled and unsampled runs."""

    def __init__(self) -> None:
        self.target: Sampler = ALWAYS_ON

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return self.target.should_sample(*args, **kwargs)

    def get_description(self) -> str:
        return f"Switch({self.target.get_description()})"


def install() -> tuple[SwitchSampler, BatchSpanProcessor]:
    """Global providers as an application would set them up, spans dropped by the exporter."""
    sampler = SwitchSampler()
    provider = TracerProvider(sampler=sampler)
    processor = BatchSpanProcessor(DropExporter(), max_queue_size=2**16)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    sink: collections.deque[Any] = collections.deque(maxlen=10_000)
    records.add_sink(sink.append)  # like the recorder: hand the record over and return
    return sampler, processor


def measure(rounds: int, jobs: int) -> dict[str, float]:
    """Median microseconds per job of each variant, measured in alternating rounds."""
    tracer = trace.get_tracer("by-hand")
    variants = {
        "jobtrace": with_jobtrace,
        "by hand": by_hand(tracer),
        "floor": same_telemetry_by_hand(tracer),
    }
    for func in variants.values():  # warm up caches and the batch thread
        per_job_us(func, jobs // 4)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, func in variants.items():
            samples[name].append(per_job_us(func, jobs))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    """Print per-job microseconds for each case, then the sampled overhead ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2000)
    options = parser.parse_args()
    sampler, processor = install()
    ratio = 0.0
    for label, target in (("sampled", ALWAYS_ON), ("ALWAYS_OFF", ALWAYS_OFF)):
        sampler.target = target
        us = measure(options.rounds, options.jobs)
        print(
            f"{label:>10}: jobtrace {us['jobtrace']:6.1f} us/job | by hand {us['by hand']:6.1f}"
            f" | by hand with jobtrace's attributes and metrics (SDK floor) {us['floor']:6.1f}"
            f" | ratio {us['jobtrace'] / us['by hand']:.2f} (vs floor"
            f" {us['jobtrace'] / us['floor']:.2f})"
        )
        if target is ALWAYS_ON:
            ratio = us["jobtrace"] / us["by hand"]
    processor.shutdown()  # type: ignore[no-untyped-call]
    print(f"overhead_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
