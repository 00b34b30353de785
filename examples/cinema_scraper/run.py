"""Scenario 1 end to end on Celery: a cinema import that fails in the middle, seen with jobtrace.

    python -m examples.cinema_scraper.run [--movies 30] [--seed 7] [--json]

Writes tonight's listing and last night's catalog, starts two ``celery worker`` processes (one for
the ``sync`` and ``pages`` queues, one for ``showtimes``; none for ``details``), sends the SyncJob,
and waits until every job that can run has run, reading the lineage store. Then it stops the
workers, deletes what the run left on the broker and prints ``jobtrace tree`` for the run. Needs the
broker (``--broker-url``, default ``$CELERY_BROKER_URL`` or ``redis://127.0.0.1:6379/0``); the
lineage store is ``--database-url``, else ``$JOBTRACE_DATABASE_URL``, else a new SQLite file in a
temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jobtrace
from examples.cinema_scraper.scraper import (
    DEFAULT_BROKER,
    Movie,
    app,
    configure_app,
    has_details,
    is_redis,
    queue_names,
    sync_job,
    write_site,
)
from jobtrace.cli import main as jobtrace_cli
from jobtrace.integrations.celery import instrument_celery
from jobtrace.lineage import upgrade
from jobtrace.lineage.queries import DONE, JobNotFoundError, LineageStore, Overview, StageStats

ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = "examples.cinema_scraper.worker"
SOURCE = "cineplex"
#: The workers and the jobs they serve; nobody serves MovieDetailJob's queue.
WORKERS = {"scraper": ("SyncJob", "MoviePageJob"), "showtimes": ("ShowtimeProcessJob",)}


@dataclass(frozen=True)
class Expected:
    """What the run must come to, from the listing and the catalog, before anything ran."""

    pages: int
    pages_run: int
    details: int
    showtimes: int
    not_ready: int

    @classmethod
    def of(cls, listing: Sequence[Movie], data: Path) -> Expected:
        """Pages of the first pass run, each spawning a detail job and its showtimes."""
        first = [movie for movie in listing if not movie.second_pass]
        return cls(
            pages=len(listing),
            pages_run=len(first),
            details=len(first),
            showtimes=sum(len(movie.showtimes) for movie in first),
            not_ready=sum(
                len(movie.showtimes) for movie in first if not has_details(movie.movie_id, data)
            ),
        )


@dataclass
class Worker:
    """A ``celery worker`` process in its own process group, its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 20) -> str:
        """The end of its log, to explain why it stopped."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def start_worker(
    name: str, queues: Sequence[str], env: dict[str, str], workdir: Path, concurrency: int
) -> Worker:
    """One ``celery worker`` (prefork) on ``queues``, with the flags of a quiet, quick start."""
    log = workdir / f"worker-{name}.log"
    command = [sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", "-Q", ",".join(queues)]
    command += ["-n", f"{name}-{env['CINEMA_RUN']}@%h", "--pool=prefork"]
    command += [f"--concurrency={concurrency}", "--loglevel=WARNING"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with log.open("wb") as output:  # the child keeps its own descriptor
        process = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Worker(name, process, log)


def stop_worker(worker: Worker) -> None:
    """Warm shutdown: running tasks finish, held messages go back to their queue; else SIGKILL."""
    if worker.process.poll() is not None:
        return
    os.killpg(worker.process.pid, signal.SIGTERM)
    try:
        worker.process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(5)


def clean_broker(broker_url: str, run: str) -> None:
    """Delete what the run left on the broker: the keys under its prefix, or its queues."""
    if is_redis(broker_url):
        from redis import Redis

        connection = Redis.from_url(broker_url)
        try:
            keys = list(connection.scan_iter(match=f"{run}:*", count=1000))
            if keys:
                connection.delete(*keys)
        finally:
            connection.close()
        return
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queue_names(broker_url, run).values():
            channel.queue_delete(queue)
            channel.exchange_delete(queue)


def counts(stats: StageStats) -> dict[str, dict[str, int]]:
    """States per job name (each name is at one depth in this pipeline)."""
    return {name: states for (_, name), states in stats.by_stage().items()}


def is_quiet(stats: StageStats, expected: Expected) -> bool:
    """Whether every job that can run has run: only second-pass pages and details still wait."""
    stages = counts(stats)

    def done(name: str) -> int:
        return sum(n for state, n in stages.get(name, {}).items() if state in DONE)

    def total(name: str) -> int:
        return sum(stages.get(name, {}).values())

    return (
        done("SyncJob") == 1
        and total("MoviePageJob") == expected.pages
        and done("MoviePageJob") == expected.pages_run
        and total("MovieDetailJob") == expected.details
        and done("ShowtimeProcessJob") == expected.showtimes
    )


def describe_progress(stats: StageStats) -> str:
    """One line of counts per stage."""
    parts = []
    for name, states in counts(stats).items():
        done = sum(n for state, n in states.items() if state in DONE)
        parts.append(f"{name} {done}/{sum(states.values())} done")
    return "progress: " + ", ".join(parts)


def wait_until_quiet(
    store: LineageStore,
    root_id: str,
    expected: Expected,
    workers: Sequence[Worker],
    timeout: float,
    quiet: bool,
) -> None:
    """Poll the lineage store until the run is as far as it gets; fail early if a worker died."""
    deadline = time.monotonic() + timeout
    shown, shown_at = "", 0.0
    while True:
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker {worker.name} exited:\n{worker.tail()}")
        try:
            stats: StageStats | None = store.stage_stats(root_id)
        except JobNotFoundError:  # the producer's record of the SyncJob is not written yet
            stats = None
        if stats is not None and is_quiet(stats, expected):
            return
        line = describe_progress(stats) if stats else "progress: waiting for the SyncJob"
        if time.monotonic() > deadline:
            raise TimeoutError(f"the run did not settle in {timeout:g}s; {line}")
        if not quiet and line != shown and time.monotonic() - shown_at >= 1.0:
            print(line, flush=True)
            shown, shown_at = line, time.monotonic()
        time.sleep(0.25)


def report(
    overview: Overview, expected: Expected, *, seed: int, run: str, database_url: str
) -> dict[str, Any]:
    """The run as JSON: per-stage counts, what is stuck and failing, and what was expected."""
    return {
        "root_job_id": overview.root.job_id,
        "trace_id": overview.root.trace_id,
        "seed": seed,
        "run": run,
        "database_url": database_url,
        "expected": expected.__dict__,
        "stages": [
            {
                "depth": stage.depth,
                "name": stage.name,
                "total": stage.total,
                "parents": stage.parents,
                "states": dict(stage.states),
            }
            for stage in overview.tree.stages
        ],
        "stuck_stages": [stuck.name for stuck in overview.stuck],
        "stuck": [
            {"name": s.name, "queue": s.queue, "active": s.active, "states": dict(s.states)}
            for s in overview.stuck
        ],
        "failing_stages": [failing.name for failing in overview.failing],
        "errors": {
            failing.name: {error.error: error.count for error in failing.errors}
            for failing in overview.failing
        },
    }


@dataclass(frozen=True)
class Outcome:
    """A settled run: its name on the broker, its root job and what ``jobtrace tree`` shows."""

    run: str
    root_id: str
    overview: Overview


def run(
    *,
    expected: Expected,
    data: Path,
    broker_url: str,
    database_url: str,
    concurrency: int,
    stuck_after: float,
    timeout: float,
    quiet: bool,
) -> Outcome:
    """Send the SyncJob, wait for the run to settle, clean up, then read the overview."""
    run_name = f"cinema-{uuid.uuid4().hex[:8]}"
    configure_app(broker_url, run_name)
    upgrade(database_url)  # the tables exist before the workers write or this process reads
    jobtrace.configure(service_name="cinema-scraper", database_url=database_url, console=False)
    instrument_celery(app, database_url=database_url)
    env = {
        **os.environ,
        "CINEMA_BROKER_URL": broker_url,
        "CINEMA_RUN": run_name,
        "CINEMA_DATA_DIR": str(data),
        "JOBTRACE_DATABASE_URL": database_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    queues = queue_names(broker_url, run_name)
    workers: list[Worker] = []
    store = LineageStore(database_url)
    try:
        for name, jobs in WORKERS.items():
            served = [queues[job] for job in jobs]
            workers.append(start_worker(name, served, env, data, concurrency))
        root_id = str(sync_job.delay(source=SOURCE).id)
        if not quiet:
            print(f"sent SyncJob {root_id}; worker logs in {data}", flush=True)
        wait_until_quiet(store, root_id, expected, workers, timeout, quiet)
        settled = time.monotonic()
    finally:
        for worker in workers:
            stop_worker(worker)
        clean_broker(broker_url, run_name)
        app.close()
    try:
        jobtrace.flush(5.0)
        # Stuck means "no progress for longer than the threshold": let the threshold pass once.
        time.sleep(max(0.0, stuck_after - (time.monotonic() - settled)) + 0.1)
        return Outcome(run_name, root_id, store.overview(root_id, stuck_after=stuck_after))
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario; exit 0 when the run settled as the listing says it must."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--movies", type=int, help="movies in the listing (random, 20 to 40)")
    parser.add_argument("--showtimes", type=int, help="average showtimes per movie (3 to 8)")
    parser.add_argument("--later", type=int, help="pages for the second pass (up to a quarter)")
    parser.add_argument("--new", type=int, help="movies new tonight (a quarter to a half)")
    parser.add_argument("--seed", type=int, help="random seed (printed, to replay a run)")
    parser.add_argument("--broker-url", default=os.environ.get("CELERY_BROKER_URL", DEFAULT_BROKER))
    parser.add_argument("--database-url", default=os.environ.get("JOBTRACE_DATABASE_URL"))
    parser.add_argument("--concurrency", type=int, default=2, help="processes per worker (2)")
    parser.add_argument(
        "--stuck-after", type=float, default=1.0, help="seconds without progress = stuck (1)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="give up after (120 s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    rng = random.Random(seed)
    movies = args.movies if args.movies is not None else rng.randint(20, 40)
    showtimes = args.showtimes if args.showtimes is not None else rng.randint(3, 8)
    later = args.later if args.later is not None else rng.randint(1, max(1, movies // 4))
    new = args.new if args.new is not None else rng.randint(movies // 4, movies // 2)
    if not (movies > 0 and showtimes > 0 and 0 <= later <= movies and 0 <= new <= movies):
        parser.error("need --movies > 0, --showtimes > 0, 0 <= --later, --new <= --movies")

    data = Path(tempfile.mkdtemp(prefix="cinema-scraper-"))
    database_url = args.database_url or f"sqlite:///{data / 'lineage.db'}"
    listing = write_site(data, movies=movies, showtimes=showtimes, later=later, new=new, seed=seed)
    if not args.json:
        print(
            f"cinema scraper (seed {seed}): {movies} movies, ~{showtimes} showtimes each,"
            f" {later} pages for the second pass, {new} movies new tonight",
            flush=True,
        )
    expected = Expected.of(listing, data)
    try:
        outcome = run(
            expected=expected,
            data=data,
            broker_url=args.broker_url,
            database_url=database_url,
            concurrency=args.concurrency,
            stuck_after=args.stuck_after,
            timeout=args.timeout,
            quiet=args.json,
        )
    except (RuntimeError, TimeoutError) as error:
        print(f"cinema scraper: {error}", file=sys.stderr)
        return 1
    if args.json:
        document = report(
            outcome.overview, expected, seed=seed, run=outcome.run, database_url=database_url
        )
        print(json.dumps(document))
        return 0
    print()
    again = ["--database-url", database_url, "tree", "--stuck-after", f"{args.stuck_after:g}"]
    jobtrace_cli([*again, outcome.root_id])
    sys.stdout.flush()
    print(f"\nsee it again: jobtrace {' '.join(again)} {outcome.root_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
