"""What handing a forked child's spans to its parent costs each side, per span.

A forked child (an RQ work horse, a prefork pool child) sends every span it ends to the process it
came from (``jobtrace._internal.forkchannel``), which rebuilds it and gives it to its own batch
processor. The parent is often a busy process (Celery's main process dispatches every task), so
what it pays per span is on the pipeline's path. Side by side in one run, rounds interleaved:

* ``handoff``: the child's spans go through the channel; the parent's batch processor exports
  them (to an exporter that drops them: the export path is paid, no network is needed);
* ``own``: the child exports its spans itself with its own batch processor (``JOBTRACE_HANDOFF=0``).

Per mode: CPU time (user + system) per span of the parent and of the child, from ``getrusage``;
the child ends ``--spans`` spans shaped like a job's (the messaging attributes, a job id, args),
and the parent counts until all have reached its exporter.

Run::

    python bench/fork_channel.py [--spans 20000] [--rounds 5]

The last line is ``handoff_parent_us_per_span=<x> handoff_child_us_per_span=<y>
own_child_us_per_span=<z>`` (medians over the rounds).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import threading
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from jobtrace._internal import forkchannel, span_handoff

ATTRIBUTES = {
    "messaging.system": "celery",
    "messaging.operation.name": "process",
    "messaging.operation.type": "process",
    "messaging.destination.name": "pipeline",
    "messaging.message.id": "0f8e4c1d-6d2b-4e0a-9a54-1f7b2b9d3c11",
    "jobtrace.job.id": "0f8e4c1d-6d2b-4e0a-9a54-1f7b2b9d3c11",
    "jobtrace.job.root_id": "3a1f9e2c-4b5d-4c6e-8f70-a1b2c3d4e5f6",
    "jobtrace.job.depth": 3,
    "jobtrace.job.args": '{"movie_id": 42, "page": 7, "item": 3}',
    "jobtrace.job.outcome": "succeeded",
}


class Counting(SpanExporter):
    """Drops spans, counting them."""

    def __init__(self) -> None:
        self.count = 0
        self.done = threading.Event()
        self.expected = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        if self.expected and self.count >= self.expected:
            self.done.set()
        return SpanExportResult.SUCCESS


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def round_(mode: str, spans: int) -> tuple[float, float]:
    """One round: (parent µs per span, child µs per span)."""
    forkchannel.reset()
    exporter = Counting()
    exporter.expected = spans if mode == "handoff" else 0
    batch = BatchSpanProcessor(exporter, max_queue_size=spans + 1, schedule_delay_millis=200)
    provider = TracerProvider()
    provider.add_span_processor(span_handoff.HandoffSpanProcessor(batch))
    tracer = provider.get_tracer("bench")
    if mode == "own":
        os.environ["JOBTRACE_HANDOFF"] = "0"
    read, write = os.pipe()
    children_before = _cpu(resource.RUSAGE_CHILDREN)
    parent_before = _cpu(resource.RUSAGE_SELF)
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        for _ in range(spans):
            with tracer.start_as_current_span("process pipeline", attributes=ATTRIBUTES):
                pass
        provider.force_flush()
        os.write(write, b"x")
        os._exit(0)
    os.close(write)
    os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    if mode == "handoff":
        exporter.done.wait(10)
    provider.shutdown()
    parent = _cpu(resource.RUSAGE_SELF) - parent_before
    child = _cpu(resource.RUSAGE_CHILDREN) - children_before
    os.environ.pop("JOBTRACE_HANDOFF", None)
    forkchannel.reset()
    if mode == "handoff" and exporter.count < spans:
        # A full socket: the child exported the rest itself, so the figures mix both ways.
        print(f"  handoff: {spans - exporter.count} of {spans} spans exported by the child itself")
    return parent / spans * 1e6, child / spans * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20000, help="spans per round (20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode (5)")
    options = parser.parse_args()
    print(f"{options.spans} spans per round, {options.rounds} rounds; load {os.getloadavg()}")
    found: dict[str, list[tuple[float, float]]] = {"handoff": [], "own": []}
    for number in range(options.rounds):
        for mode in ("handoff", "own") if number % 2 == 0 else ("own", "handoff"):
            found[mode].append(round_(mode, options.spans))
            time.sleep(0.2)
    medians: dict[str, tuple[float, float]] = {}
    for mode, rows in found.items():
        parents = sorted(parent for parent, _ in rows)
        children = sorted(child for _, child in rows)
        medians[mode] = (statistics.median(parents), statistics.median(children))
        print(
            f"{mode:>8}: parent {parents[0]:.1f} / {medians[mode][0]:.1f} / {parents[-1]:.1f}"
            f" µs per span, child {children[0]:.1f} / {medians[mode][1]:.1f} / {children[-1]:.1f}"
        )
    print(
        f"handoff_parent_us_per_span={medians['handoff'][0]:.1f}"
        f" handoff_child_us_per_span={medians['handoff'][1]:.1f}"
        f" own_child_us_per_span={medians['own'][1]:.1f}"
    )


if __name__ == "__main__":
    main()
