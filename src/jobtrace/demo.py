"""``jobtrace demo``: the cinema scraper of scenario 1, run on the local queue.

A SyncJob fans out to MoviePageJobs; each page spawns a MovieDetailJob and ShowtimeProcessJobs. Some
pages are scheduled for later and never run, detail jobs of some pages go to a queue that no worker
serves (the stuck stage), and a fraction of showtime jobs are discarded with ``movie_not_ready``
(the failing stage). Counts are random unless given. Everything lands in one trace.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

import jobtrace
from jobtrace.lineage.recorder import get_recorder
from jobtrace.local import LocalQueue

LATER = 6 * 3600.0  # "scheduled for tonight's second pass": never reached in the demo


@dataclass(frozen=True)
class DemoOptions:
    """The demo's shape; every count is chosen at random when not given."""

    pages: int
    showtimes: int
    unrun_pages: int
    stuck_rate: float
    fail_rate: float
    workers: int
    seed: int


class JobSpanCounter(SpanProcessor):
    """Counts finished job spans per job name, failures, and the traces they belong to."""

    def __init__(self) -> None:
        self.spans: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.traces: set[str] = set()
        self.root_trace: str | None = None
        self._lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if span.kind is not SpanKind.CONSUMER or span.context is None:
            return
        name = str((span.attributes or {}).get("jobtrace.job.name", span.name))
        with self._lock:
            self.spans[name] += 1
            if span.status.status_code is StatusCode.ERROR:
                self.failures[name] += 1
            trace_id = f"{span.context.trace_id:032x}"
            self.traces.add(trace_id)
            if (span.attributes or {}).get("jobtrace.job.depth") == 0:
                self.root_trace = trace_id

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Cinema:
    """The pipeline's jobs, bound to one queue and one set of options."""

    queue: LocalQueue
    options: DemoOptions
    seed: int

    def sync_job(self, source: str) -> None:
        """Schedules one page job per movie; the last few wait for a later pass."""
        pages = self.options.pages
        jobtrace.count(total=pages)
        jobtrace.set_attribute("cinema.source", source)
        for number in range(pages):
            later = number >= pages - self.options.unrun_pages
            self.queue.enqueue(
                self.movie_page_job,
                name="MoviePageJob",
                queue="pages",
                delay=LATER if later else None,
                movie_id=f"{source}-{number:04d}",
            )
            jobtrace.count(processed=1)

    def _rng_for(self, *job: object) -> random.Random:
        """A job's own random draws: the same seed gives the same run, whatever the thread order."""
        return random.Random(f"{self.seed}:{job}")

    def movie_page_job(self, movie_id: str) -> None:
        """Spawns the movie's detail job and its showtime jobs."""
        rng = self._rng_for(movie_id)
        stuck = rng.random() < self.options.stuck_rate
        showtimes = max(1, int(rng.gauss(self.options.showtimes, 2)))
        self.queue.enqueue(
            self.movie_detail_job,
            name="MovieDetailJob",
            queue="details-legacy" if stuck else "details",
            movie_id=movie_id,
        )
        for number in range(showtimes):
            self.queue.enqueue(
                self.showtime_process_job,
                name="ShowtimeProcessJob",
                queue="showtimes",
                movie_id=movie_id,
                showtime=number,
            )
        jobtrace.count(total=showtimes + 1, processed=showtimes + 1)

    def movie_detail_job(self, movie_id: str) -> None:
        """Fetches the movie's details (here: a short sleep)."""
        time.sleep(0.001)
        jobtrace.set_attribute("movie.id", movie_id)

    def showtime_process_job(self, movie_id: str, showtime: int) -> None:
        """Stores one showtime; discarded when its movie is not ready yet."""
        not_ready = self._rng_for(movie_id, showtime).random() < self.options.fail_rate
        if not_ready:
            jobtrace.discard("movie_not_ready")
            return
        jobtrace.count(processed=1)


def parse_options(argv: Sequence[str] | None) -> tuple[DemoOptions, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="jobtrace demo", description="Run the cinema-scraper pipeline on the local queue."
    )
    parser.add_argument("--pages", type=int, help="MoviePageJobs the SyncJob schedules")
    parser.add_argument("--showtimes", type=int, help="average ShowtimeProcessJobs per page")
    parser.add_argument("--unrun-pages", type=int, help="pages scheduled for later (never run)")
    parser.add_argument("--stuck-rate", type=float, help="share of detail jobs on a dead queue")
    parser.add_argument("--fail-rate", type=float, help="share of showtime jobs discarded")
    parser.add_argument("--workers", type=int, default=4, help="worker threads per queue")
    parser.add_argument("--seed", type=int, help="random seed (printed, to replay a run)")
    parser.add_argument("--database-url", help="lineage store (default: JOBTRACE_DATABASE_URL)")
    parser.add_argument("--no-store", action="store_true", help="do not record lineage")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    rng = random.Random(seed)
    pages = args.pages if args.pages is not None else rng.randint(20, 60)
    options = DemoOptions(
        pages=pages,
        showtimes=args.showtimes if args.showtimes is not None else rng.randint(3, 9),
        unrun_pages=min(
            pages, args.unrun_pages if args.unrun_pages is not None else rng.randint(1, pages // 3)
        ),
        stuck_rate=args.stuck_rate if args.stuck_rate is not None else rng.uniform(0.2, 0.6),
        fail_rate=args.fail_rate if args.fail_rate is not None else rng.uniform(0.1, 0.4),
        workers=max(1, args.workers),
        seed=seed,
    )
    return options, args


def run_demo(
    options: DemoOptions, *, record: bool = True, database_url: str | None = None
) -> tuple[str, JobSpanCounter]:
    """Run the pipeline to the end; returns the SyncJob's id and the span counts."""
    jobtrace.configure(
        service_name="jobtrace-demo", console=False, record=record, database_url=database_url
    )
    counter = JobSpanCounter()
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.add_span_processor(counter)
    workers = options.workers
    queue = LocalQueue(
        {"sync": 1, "pages": workers, "details": workers, "details-legacy": 0, "showtimes": workers}
    )
    cinema = Cinema(queue, options, options.seed)
    root_id = queue.enqueue(cinema.sync_job, name="SyncJob", queue="sync", source="cinema-demo")
    queue.join()
    queue.shutdown()
    jobtrace.flush(10.0)
    return root_id, counter


@dataclass(frozen=True)
class DemoRun:
    """What one ``jobtrace demo`` did: its exit status, and the run it recorded (if any)."""

    code: int
    root_id: str | None = None
    database_url: str | None = None


def run(argv: Sequence[str] | None = None) -> DemoRun:
    """Run the demo and print what the spans say; the caller shows what the store says.

    The CLI prints the run's tree and stage table after it (the demo knows nothing of the CLI).
    """
    options, args = parse_options(argv)
    out = sys.stdout
    out.write(
        f"jobtrace demo (seed {options.seed}): {options.pages} pages, ~{options.showtimes}"
        f" showtimes each, {options.unrun_pages} pages for later,"
        f" {options.stuck_rate:.0%} details on a dead queue,"
        f" {options.fail_rate:.0%} showtimes not ready\n"
    )
    root_id, counter = run_demo(options, record=not args.no_store, database_url=args.database_url)
    out.write(f"\nroot job: {root_id}\n")
    out.writelines(_trace_lines(counter))
    out.write("\n")
    width = max([len(name) for name in counter.spans] + [8])
    out.write(f"{'job':<{width}}  {'spans':>6}  {'failures':>8}\n")
    for name in ("SyncJob", "MoviePageJob", "MovieDetailJob", "ShowtimeProcessJob"):
        out.write(f"{name:<{width}}  {counter.spans[name]:>6}  {counter.failures[name]:>8}\n")
    out.flush()
    if args.no_store:
        return DemoRun(0)
    recorder = get_recorder()
    if recorder is not None:
        recorder.flush(10.0)
    return DemoRun(0, root_id, args.database_url)


#: Trace ids the demo prints at most; a split run says how many more there are.
TRACES_SHOWN = 5


def _trace_lines(counter: JobSpanCounter) -> list[str]:
    """The run's trace: one, or how many it was split into and which holds the root job."""
    traces = sorted(counter.traces)
    if not traces:
        return ["trace id: (not sampled)\n"]
    if len(traces) == 1:
        return [f"trace id: {traces[0]}\n", "traces:   1 (one per pipeline run)\n"]
    root = counter.root_trace
    others = [trace_id for trace_id in traces if trace_id != root][: TRACES_SHOWN - 1]
    more = len(traces) - 1 - len(others)
    return [
        f"trace id: {root or '-'} (the root job's)\n",
        f"traces:   {len(traces):,}: the run is split (fan-outs past link_after_fanout and delayed"
        " jobs start traces of their own, linked to their parent's)\n",
        *(f"          {trace_id}\n" for trace_id in others),
        *([f"          … and {more:,} more\n"] if more else []),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jobtrace.demo``: the demo, then where to look next."""
    done = run(argv)
    if done.root_id is not None:
        sys.stdout.write(f"\nsee the run: jobtrace tree {done.root_id}\n")
    return done.code


if __name__ == "__main__":
    sys.exit(main())
