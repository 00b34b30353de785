"""Retention at scale: prune throughput, writers during a prune, and the hot queries on a big store.

Builds a store of ``--jobs`` job rows (10M by default, plus about as many attempt rows) in SQLite
(a file) and in PostgreSQL (a database of its own), with bulk inserts (``executemany`` into
SQLite, ``COPY`` into PostgreSQL), indexes built afterwards, then on each:

1. prints the store's bytes per job, per table and its indexes;
2. times the hot queries (``runs``, ``runs --name``, and the ``stats``, tree, stuck stages and
   failures of a 100k-job run, the children of one of its parents) ``--repeat`` times;
3. starts a recorder writing new jobs' lives as fast as it can, then ``--prunes`` times in turn:
   samples its throughput (records/s) alone, then runs ``jobtrace prune`` in a process of its own
   (as cron would) and samples the recorder until the prune ends. Each prune deletes
   ``--step-days`` more days of clean runs (the store spans 120 days);
4. times the hot queries again.

Every figure is the median of its samples with their lowest and highest (and how many). The
writer's share is the median during the prunes over the median alone.

The store's shape: runs over the last 120 days, most of one job, some of thousands; one in ten
with failures, a few still active, some under a placeholder root (a producer that is not
instrumented); one in twenty jobs retried.

    python bench/retention.py [--jobs 10000000] [--cache DIR] [--step-days 10] [--stores sqlite]

``--cache DIR`` keeps the built stores (a SQLite file and a PostgreSQL template database) and
reuses them on the next run. ``--stores`` benches only the databases it names (both by default).
PostgreSQL comes from ``JOBTRACE_BENCH_POSTGRES_URL`` (default: the test server's ``test``
database, used only to create and drop the bench databases). The last line is
``prune_rows_per_s_sqlite=<a> prune_rows_per_s_postgres=<b> writer_share_during_prune=<c>
runs_ms_10m=<d>`` (a database not benched has no rate): the medians; the share is the lower of
the databases', the runs time the higher median (before or after the prunes), whatever the
store's size (the line before says it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from jobtrace import records
from jobtrace.lineage.models import Attempt, Base, Job
from jobtrace.lineage.queries import LineageStore
from jobtrace.lineage.recorder import Recorder
from jobtrace.lineage.store import create_store_engine, upgrade
from jobtrace.records import JobRecord, JobState

POSTGRES_ADMIN_URL = os.environ.get(
    "JOBTRACE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DAY = 86_400.0
SPAN_DAYS = 120
ROOT_NAMES = ["SyncJob", "ImportJob", "ReportJob", "MailJob", "BillingJob", "CleanupJob"]
CHILD_NAMES = ["PageJob", "DetailJob", "ShowtimeJob", "PriceJob"]
BIG_RUN = 100_000
ARGS = '{"source":"example-cinema","movie_id":4402192,"page":3}'
JOB_COLUMNS = tuple(column.name for column in Job.__table__.columns)
ATTEMPT_COLUMNS = tuple(column.name for column in Attempt.__table__.columns)
CHUNK = 50_000


# -- the store's rows --------------------------------------------------------------------------


@dataclass
class Shape:
    """What was built: to check the prune against and to pick the queries' arguments."""

    jobs: int = 0
    attempts: int = 0
    runs: int = 0
    big_root: str = ""
    big_jobs: int = 0


def _run_size(rng: random.Random) -> int:
    draw = rng.random()
    if draw < 0.70:
        return 1
    if draw < 0.90:
        return rng.randint(2, 20)
    if draw < 0.98:
        return rng.randint(21, 300)
    return rng.randint(301, 5000)


class _Ids:
    """uuid4-like ids, fast and reproducible."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def __call__(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


def big_size(total: int) -> int:
    """Jobs in the big run: 100k, or a tenth of a smaller store."""
    return min(BIG_RUN, total // 10)


def generate(
    total: int, now: float, seed: int = 11
) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Job rows and attempt rows of whole runs, oldest first, in chunks; the last chunk's big run.

    Times are epoch seconds; the loaders convert them to each database's format.
    """
    rng = random.Random(seed)
    new_id = _Ids(rng)
    start = now - SPAN_DAYS * DAY
    jobs: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    made = 0
    big_at = total // 2  # the 100k-job run sits in the middle: 60 days old, kept by 90d failing
    big_done = False
    while made < total:
        if not big_done and made >= big_at:
            size, big_done = big_size(total), True
            big = True
        else:
            size, big = min(_run_size(rng), total - made), False
        when = start + (made / total) * SPAN_DAYS * DAY + rng.random() * 60
        run_jobs, run_attempts = _run(rng, new_id, size, when, now, big)
        jobs += run_jobs
        attempts += run_attempts
        made += len(run_jobs)
        if len(jobs) >= CHUNK:
            yield jobs, attempts
            jobs, attempts = [], []
    if jobs:
        yield jobs, attempts


def _run(
    rng: random.Random,
    new_id: Callable[[], str],
    size: int,
    when: float,
    now: float,
    big: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One run of ``size`` jobs: a root, then levels of children under it."""
    root = new_id()
    age_days = (now - when) / DAY
    failing = big or rng.random() < 0.10
    # A few runs never finish: the latest hours are still running; some old ones stalled.
    active = age_days < 0.05 or rng.random() < 0.0005
    placeholder_root = size > 1 and rng.random() < 0.03
    # A store written before placeholders existed: now and then a run's root has no row at all.
    rootless = size > 1 and not placeholder_root and rng.random() < 0.002
    trace = root.replace("-", "")
    root_name = "SyncJob" if big else rng.choice(ROOT_NAMES)
    jobs = [
        _job(rng, root, None, root, 0, root_name, "succeeded", when, trace)
        if not placeholder_root
        else _placeholder(root, when)
    ]
    parents = [root]
    depth = 1
    while len(jobs) < size:
        below = []
        fanout = max(1, min(size - len(jobs), rng.randint(2, 40)))
        for parent in parents:
            for _ in range(fanout):
                if len(jobs) >= size:
                    break
                job_id = new_id()
                jobs.append(
                    _job(
                        rng,
                        job_id,
                        parent,
                        root,
                        depth,
                        CHILD_NAMES[(depth - 1) % len(CHILD_NAMES)],
                        "succeeded",
                        when + depth * 2 + rng.random() * 30,
                        trace,
                    )
                )
                below.append(job_id)
            if len(jobs) >= size:
                break
        parents = below
        depth += 1
    if size > 2 and rng.random() < 0.005:
        # A job of a foreign integration whose records never said its root or depth.
        jobs[-1]["root_job_id"] = jobs[-1]["depth"] = None
    if rootless:
        jobs = jobs[1:]
    if failing:
        victims = jobs[1:] if len(jobs) > 1 else jobs
        for job in rng.sample(victims, max(1, len(victims) // 50)):
            _fail(job, rng)
    if active:
        for job in rng.sample(jobs, max(1, len(jobs) // 10)):
            if job["attempt"]:
                _activate(job, rng, "running" if age_days < 1 else "stalled")
    attempts = []
    for job in jobs:
        if not job["attempt"]:
            continue
        if job["attempt"] == 2:
            first = {key: job.get(key) for key in ATTEMPT_COLUMNS}
            first.update(
                attempt=1, state="failed", error_type="TimeoutError", error_message="read timeout"
            )
            attempts.append(first)
        attempts.append({key: job.get(key) for key in ATTEMPT_COLUMNS})
    return jobs, attempts


def _job(
    rng: random.Random,
    job_id: str,
    parent: str | None,
    root: str,
    depth: int,
    name: str,
    state: str,
    enqueued: float,
    trace: str,
) -> dict[str, Any]:
    started = enqueued + rng.random() * 2
    finished = started + rng.random() * 5
    return {
        "job_id": job_id,
        "name": name,
        "queue": name.lower().removesuffix("job"),
        "system": "celery",
        "state": state,
        "attempt": 2 if rng.random() < 0.05 else 1,
        "parent_job_id": parent,
        "root_job_id": root,
        "depth": depth,
        "trace_id": trace,
        "span_id": f"{rng.getrandbits(64):016x}",
        "args": ARGS,
        "host": "worker-3.prod.internal",
        "pid": rng.randint(1000, 60000),
        "enqueued_at": enqueued,
        "started_at": started,
        "finished_at": finished,
        "heartbeat_at": finished,
        "updated_at": finished + 0.2,
        "heartbeat_interval": 10.0,
    }


def _placeholder(root: str, when: float) -> dict[str, Any]:
    return {
        "job_id": root,
        "name": "?",
        "system": "celery",
        "state": "unknown",
        "attempt": 0,
        "root_job_id": root,
        "depth": 0,
        "reason": "named as the root of a job; no record of it reached the store",
        "updated_at": when + 2,
    }


def _fail(job: dict[str, Any], rng: random.Random) -> None:
    job["state"] = rng.choice(["failed", "failed", "discarded", "crashed"])
    job["error_type"] = "HTTPError"
    job["error_message"] = "502 Bad Gateway from https://cinema.example/api/movies/4402192"


def _activate(job: dict[str, Any], rng: random.Random, state: str) -> None:
    job["state"] = state
    job["finished_at"] = None
    if state == "stalled":
        job["started_at"] = job["heartbeat_at"] = None


# -- loading -----------------------------------------------------------------------------------

_TIME_COLUMNS = {"enqueued_at", "started_at", "finished_at", "heartbeat_at", "updated_at"}


@functools.lru_cache(maxsize=65_536)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _time(seconds: float | None) -> str | None:
    """Naive UTC as SQLAlchemy stores it in SQLite, which PostgreSQL's COPY reads too."""
    if seconds is None:
        return None
    whole = int(seconds)
    return f"{_second(whole)}.{int((seconds - whole) * 1e6):06d}"


def _field(value: Any) -> str:
    if value is None:
        return "\\N"
    return str(value)


def write_rows(folder: Path, total: int, now: float) -> Shape:
    """Every row once, as PostgreSQL COPY text (no field holds a tab or a backslash)."""
    shape = Shape()
    times = {i for i, c in enumerate(JOB_COLUMNS) if c in _TIME_COLUMNS}
    attempt_times = {i for i, c in enumerate(ATTEMPT_COLUMNS) if c in _TIME_COLUMNS}
    with (
        open(folder / "jobs.tsv", "w", encoding="utf-8") as jobs_file,
        open(folder / "attempts.tsv", "w", encoding="utf-8") as attempts_file,
    ):
        for jobs, attempts in generate(total, now):
            _count(shape, jobs, attempts, big_size(total))
            for out, rows, columns, time_at in (
                (jobs_file, jobs, JOB_COLUMNS, times),
                (attempts_file, attempts, ATTEMPT_COLUMNS, attempt_times),
            ):
                lines = []
                for row in rows:
                    values = [row.get(column) for column in columns]
                    for i in time_at:
                        values[i] = _time(values[i])
                    lines.append("\t".join(map(_field, values)))
                out.write("\n".join(lines) + "\n")
    (folder / "shape.json").write_text(json.dumps(dataclasses.asdict(shape)))
    return shape


def _indexes() -> list[Any]:
    return [index for table in Base.metadata.sorted_tables for index in table.indexes]


def _count(
    shape: Shape, jobs: list[dict[str, Any]], attempts: list[dict[str, Any]], big: int
) -> None:
    shape.jobs += len(jobs)
    shape.attempts += len(attempts)
    shape.runs += len({job["root_job_id"] for job in jobs} - {None})
    by_root: dict[str | None, int] = {}
    for job in jobs:
        by_root[job["root_job_id"]] = by_root.get(job["root_job_id"], 0) + 1
    for root, count in by_root.items():
        if root is not None and count > big // 2:  # only the big run has that many jobs
            shape.big_root, shape.big_jobs = root, shape.big_jobs + count


def load(url: str, folder: Path) -> None:
    """Create the schema, drop its indexes, bulk-load the rows, then build the indexes again."""
    upgrade(url)
    engine = create_store_engine(url)
    began = time.perf_counter()
    try:
        with engine.begin() as conn:
            for index in _indexes():
                index.drop(conn)
        if engine.dialect.name == "sqlite":
            _load_sqlite(engine, folder)
        else:
            _load_postgres(engine, folder)
        loaded = time.perf_counter()
        with engine.begin() as conn:
            for index in _indexes():
                index.create(conn)
        print(
            f"  {engine.dialect.name}: loaded in {loaded - began:.0f}s,"
            f" indexed in {time.perf_counter() - loaded:.0f}s",
            flush=True,
        )
        # PostgreSQL's autovacuum would have analyzed the tables by now; nobody runs ANALYZE on
        # a SQLite store, so none is run here either.
        if engine.dialect.name != "sqlite":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()


def _lines(path: Path) -> Iterator[list[tuple[str | None, ...]]]:
    with open(path, encoding="utf-8") as source:
        while True:
            lines = source.readlines(8 << 20)
            if not lines:
                return
            yield [
                tuple(None if field == "\\N" else field for field in line[:-1].split("\t"))
                for line in lines
            ]


def _load_sqlite(engine: Engine, folder: Path) -> None:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        # A bulk load, not the store's normal life: no journal, a big cache; WAL again after.
        cursor.execute("PRAGMA journal_mode=OFF")
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("PRAGMA cache_size=-4000000")
        for table, columns in (
            ("jobtrace_jobs", JOB_COLUMNS),
            ("jobtrace_attempts", ATTEMPT_COLUMNS),
        ):
            sql = (
                f"INSERT INTO {table} ({', '.join(columns)})"
                f" VALUES ({', '.join('?' * len(columns))})"
            )
            for rows in _lines(folder / f"{table.removeprefix('jobtrace_')}.tsv"):
                cursor.executemany(sql, rows)
            raw.commit()
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        raw.close()


def _load_postgres(engine: Engine, folder: Path) -> None:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for table, columns in (
            ("jobtrace_jobs", JOB_COLUMNS),
            ("jobtrace_attempts", ATTEMPT_COLUMNS),
        ):
            sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
            with (
                cursor.copy(sql) as copy,
                open(folder / f"{table.removeprefix('jobtrace_')}.tsv", "rb") as source,
            ):
                while block := source.read(1 << 20):
                    copy.write(block)
            raw.commit()
    finally:
        raw.close()


# -- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Repeated measurements of one thing: their median, and their lowest and highest."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, unit: str = "", digits: int = 1) -> str:
        low, high = min(self.values), max(self.values)
        return (
            f"{self.median:,.{digits}f}{unit} ({low:,.{digits}f}-{high:,.{digits}f},"
            f" n={len(self.values)})"
        )


def _timings_ms(call: Callable[[], object], repeat: int) -> Spread:
    call()  # warm
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append((time.perf_counter() - began) * 1000)
    return Spread(tuple(times))


def time_queries(url: str, shape: Shape, repeat: int) -> dict[str, Spread]:
    """Milliseconds of the hot queries: runs, and the big run's stats, tree, children..."""
    with LineageStore(url) as store:
        with store.engine.connect() as conn:
            parent = conn.execute(
                text(
                    "SELECT job_id FROM jobtrace_jobs WHERE root_job_id = :root AND depth = 1"
                    " ORDER BY job_id LIMIT 1"
                ),
                {"root": shape.big_root},
            ).scalar_one()
        few = max(3, repeat // 3)  # the queries that read the whole big run
        return {
            "runs": _timings_ms(lambda: store.runs(20), repeat),
            "runs_by_name": _timings_ms(lambda: store.runs(20, name="ReportJob"), repeat),
            "stats": _timings_ms(lambda: store.stage_stats(shape.big_root), repeat),
            "tree": _timings_ms(lambda: store.stage_tree(shape.big_root), few),
            "children": _timings_ms(lambda: store.children(parent, limit=50), repeat),
            "stuck": _timings_ms(lambda: store.stuck_stages(shape.big_root), repeat),
            "failures": _timings_ms(lambda: store.failures(shape.big_root), few),
        }


def store_bytes(url: str) -> dict[str, int]:
    """What the store takes on disk: each table and its indexes (SQLite: ``dbstat``)."""
    engine = create_store_engine(url)
    sizes: dict[str, int] = {}
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                rows = conn.exec_driver_sql(
                    "SELECT s.name, m.type, m.tbl_name, SUM(s.pgsize) FROM dbstat AS s"
                    " JOIN sqlite_master AS m ON m.name = s.name GROUP BY s.name"
                ).all()
                for _name, kind, table, size in rows:
                    key = f"{table} {'table' if kind == 'table' else 'indexes'}"
                    sizes[key] = sizes.get(key, 0) + int(size)
                sizes["file"] = Path(str(engine.url.database)).stat().st_size
            else:
                for table in (Job.__tablename__, Attempt.__tablename__):
                    table_size, index_size = conn.execute(
                        text("SELECT pg_table_size(:t), pg_indexes_size(:t)"), {"t": table}
                    ).one()
                    sizes[f"{table} table"] = int(table_size)
                    sizes[f"{table} indexes"] = int(index_size)
                sizes["file"] = sum(sizes.values())
    finally:
        engine.dispose()
    return sizes


class Writer:
    """A recorder kept busy with new jobs' lives, as fast as it writes them (none dropped)."""

    def __init__(self, url: str) -> None:
        self.recorder = Recorder(url, max_buffered=1_000_000)
        self.recorder.prepare()
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        tag = uuid.uuid4().hex[:8]
        lag = 2000  # a job's started record comes this many jobs after its enqueue
        n = 0
        while not self._stop.is_set():
            at = time.time()
            for k, build in ((n, "enqueued"), (n - lag, "started"), (n - 2 * lag, "finished")):
                if k < 0:
                    continue
                info = records.JobInfo(
                    job_id=f"w-{tag}-{k:09d}",
                    name="PageJob",
                    root_job_id=f"w-{tag}-root-{k // 500}",
                    depth=1,
                    parent_job_id=f"w-{tag}-root-{k // 500}",
                    queue="pages",
                )
                self.recorder(_record(build, info, at))
                self.sent += 1
            n += 1
            while self.sent - self.recorder.written > 20_000 and not self._stop.is_set():
                time.sleep(0.002)

    def rate(self, seconds: float) -> float:
        """Records written per second over the next ``seconds``."""
        first, began = self.recorder.written, time.perf_counter()
        time.sleep(seconds)
        return (self.recorder.written - first) / (time.perf_counter() - began)

    def rates(self, window: float, count: int) -> list[float]:
        """``count`` consecutive samples of :meth:`rate`."""
        return [self.rate(window) for _ in range(count)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.recorder.close(60)


def _record(kind: str, info: records.JobInfo, at: float) -> JobRecord:
    if kind == "enqueued":
        return records.enqueued(info, at=at, args=ARGS)
    if kind == "started":
        return records.started(info, at=at, host="bench", pid=1)
    return records.finished(info, JobState.SUCCEEDED, at=at, host="bench", pid=1)


@dataclass
class PruneRun:
    """One ``jobtrace prune`` process: what it deleted and how long it took."""

    options: str
    runs: int
    rows: int
    seconds: float
    writer: list[float]  # the recorder's records/s in the windows while it ran

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


@dataclass
class Outcome:
    """One database's numbers."""

    sizes: dict[str, int]
    jobs: int
    before: dict[str, Spread]
    after: dict[str, Spread]
    prunes: list[PruneRun]
    writer_alone: list[float]
    dropped: int

    @property
    def bytes_per_job(self) -> float:
        return self.sizes["file"] / self.jobs

    @property
    def prune_rows_per_s(self) -> Spread:
        return Spread(tuple(p.rows_per_s for p in self.prunes))

    @property
    def writer_during(self) -> Spread:
        return Spread(tuple(rate for p in self.prunes for rate in p.writer))

    @property
    def writer_share(self) -> float:
        return self.writer_during.median / statistics.median(self.writer_alone)


def prune_steps(count: int, days: int) -> list[str]:
    """Prunes in turn, as nights of a cron: each deletes ``days`` more of the clean runs.

    The store spans 120 days: each prune deletes about ``days / 120`` of it (the first also the
    failing runs idle for 115 days).
    """
    return [f"--keep {120 - days * (k + 1)}d --keep-failing 115d" for k in range(count)]


def _prune_beside(writer: Writer, url: str, options: str, window: float) -> PruneRun:
    """Run one prune in its own process, as cron would, sampling the writer until it ends."""
    command = [sys.executable, "-m", "jobtrace", "prune", "--database-url", url, "--json"]
    began = time.perf_counter()
    process = subprocess.Popen([*command, *options.split()], stdout=subprocess.PIPE, text=True)
    rates = []
    while True:  # a sample counts only if the prune ran through all of it
        first, sampled = writer.recorder.written, time.perf_counter()
        try:
            process.wait(timeout=window)  # its output, a few lines of JSON, fits the pipe
        except subprocess.TimeoutExpired:
            rates.append((writer.recorder.written - first) / (time.perf_counter() - sampled))
            continue
        seconds = time.perf_counter() - began
        break
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"prune failed with status {process.returncode}")
    result = json.loads(out)
    rows = int(result["jobs"]) + int(result["attempts"])
    return PruneRun(options, int(result["runs"]), rows, seconds, rates)


def bench(url: str, shape: Shape, args: argparse.Namespace) -> Outcome:
    """Queries before; the writer alone and beside prunes, in turn; queries after."""
    name = make_url(url).get_backend_name()
    sizes = store_bytes(url)
    print(
        f"  {name}: {sizes['file'] / 1e9:.2f} GB, {sizes['file'] / shape.jobs:,.0f} bytes per job ("
        + ", ".join(f"{key} {size / 1e6:,.0f} MB" for key, size in sizes.items() if key != "file")
        + ")",
        flush=True,
    )
    before = time_queries(url, shape, args.repeat)
    print(f"  {name}: before: {_ms(before)}", flush=True)
    writer = Writer(url)
    alone: list[float] = []
    prunes: list[PruneRun] = []
    try:
        writer.rate(5)  # warm up
        for step in prune_steps(args.prunes, args.step_days):
            options = f"{step} {args.prune_options}".strip()
            alone += writer.rates(args.window, args.alone)
            run = _prune_beside(writer, url, options, args.window)
            prunes.append(run)
            print(
                f"  {name}: prune {options}: {run.runs:,} runs, {run.rows:,} rows in"
                f" {run.seconds:.1f}s = {run.rows_per_s:,.0f} rows/s; recorder meanwhile"
                f" {_rates(run.writer)}",
                flush=True,
            )
        alone += writer.rates(args.window, args.alone)
    finally:
        writer.stop()
    outcome = Outcome(sizes, shape.jobs, before, {}, prunes, alone, writer.recorder.dropped)
    print(
        f"  {name}: recorder alone {Spread(tuple(alone)).show(' records/s', 0)},"
        f" during prunes {outcome.writer_during.show(' records/s', 0)}:"
        f" share {outcome.writer_share:.2f}; records dropped: {outcome.dropped}",
        flush=True,
    )
    outcome.after = time_queries(url, shape, args.repeat)
    engine = create_store_engine(url)
    try:
        with engine.connect() as conn:
            jobs = conn.execute(text("SELECT count(*) FROM jobtrace_jobs")).scalar_one()
    finally:
        engine.dispose()
    print(f"  {name}: after (a store of {jobs:,} jobs now): {_ms(outcome.after)}", flush=True)
    return outcome


def _rates(rates: list[float]) -> str:
    if not rates:
        return "not sampled (the prune ended within one window)"
    return Spread(tuple(rates)).show(" records/s", 0)


def _ms(times: dict[str, Spread]) -> str:
    return "; ".join(f"{name} {spread.show(' ms')}" for name, spread in times.items())


# -- the stores ----------------------------------------------------------------------------------


@contextmanager
def sqlite_store(cache: Path, jobs: int) -> Iterator[str]:
    """A copy of the built SQLite store (built first if the cache has none)."""
    pristine = cache / "store.db"
    if not pristine.exists():
        load(f"sqlite:///{pristine}", cache)
    with tempfile.TemporaryDirectory(dir=cache) as folder:
        copy = Path(folder) / "bench.db"
        began = time.perf_counter()
        shutil.copyfile(pristine, copy)
        print(f"  sqlite: store copied in {time.perf_counter() - began:.0f}s", flush=True)
        yield f"sqlite:///{copy}"


@contextmanager
def postgres_store(jobs: int, cache: Path) -> Iterator[str]:
    """A database made from the built template database (built first if there is none)."""
    template = f"jobtrace_bench_{jobs}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"jobtrace_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": template}
            ).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{template}"'))
        if not exists:
            load(make_url(POSTGRES_ADMIN_URL).set(database=template).render_as_string(False), cache)
        began = time.perf_counter()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        print(f"  postgres: store copied in {time.perf_counter() - began:.0f}s", flush=True)
        url = make_url(POSTGRES_ADMIN_URL).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=10_000_000, help="job rows in the store")
    parser.add_argument("--cache", type=Path, help="keep the built stores here and reuse them")
    parser.add_argument(
        "--prunes",
        type=int,
        default=3,
        help="prunes in turn, each deleting --step-days more of the store (%(default)s)",
    )
    parser.add_argument(
        "--step-days",
        type=int,
        default=10,
        help="days of clean runs each prune deletes (%(default)s, of 120)",
    )
    parser.add_argument(
        "--prune-options",
        default="",
        help="more options for each prune, such as '--batch-size 250' (none: the defaults)",
    )
    parser.add_argument("--window", type=float, default=5.0, help="seconds per writer sample")
    parser.add_argument(
        "--alone", type=int, default=3, help="writer samples without a prune, before each prune"
    )
    parser.add_argument("--repeat", type=int, default=9, help="timings of each query")
    parser.add_argument(
        "--stores",
        default="sqlite,postgres",
        help="the databases to bench, comma-separated (%(default)s)",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.stores.split(",") if name.strip()]
    if not chosen or set(chosen) - {"sqlite", "postgres"}:
        parser.error(f"--stores: sqlite, postgres or both, got {args.stores!r}")
    began = time.perf_counter()
    with contextlib.ExitStack() as stack:
        cache = args.cache or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        cache.mkdir(parents=True, exist_ok=True)
        shape_file = cache / "shape.json"
        if shape_file.exists() and json.loads(shape_file.read_text())["jobs"] == args.jobs:
            shape = Shape(**json.loads(shape_file.read_text()))
            built_at = float((cache / "now").read_text())
            print(f"reusing the store built {(time.time() - built_at) / 3600:.1f} h ago in {cache}")
        else:
            for stale in ("store.db", "store.db-wal", "store.db-shm"):
                (cache / stale).unlink(missing_ok=True)
            now = time.time()
            (cache / "now").write_text(repr(now))
            shape = write_rows(cache, args.jobs, now)
            _drop_template(args.jobs)
            print(f"rows written in {time.perf_counter() - began:.0f}s", flush=True)
        print(
            f"store: {shape.jobs:,} jobs, {shape.attempts:,} attempts, {shape.runs:,} runs;"
            f" the big run has {shape.big_jobs:,} jobs",
            flush=True,
        )
        outcomes = {}
        stores: dict[str, Callable[[], contextlib.AbstractContextManager[str]]] = {
            "sqlite": lambda: sqlite_store(cache, args.jobs),
            "postgres": lambda: postgres_store(args.jobs, cache),
        }
        for name, store_of in stores.items():
            if name not in chosen:
                continue
            print(f"{name}:", flush=True)
            with store_of() as url:
                outcomes[name] = bench(url, shape, args)
    print(f"bench took {time.perf_counter() - began:.0f}s")
    for name, o in outcomes.items():
        print(
            f"{name} at {shape.jobs:,} jobs: {o.bytes_per_job:,.0f} bytes/job;"
            f" prune {o.prune_rows_per_s.show(' rows/s', 0)};"
            f" writer share {o.writer_share:.2f};"
            f" runs {o.before['runs'].show(' ms')} before,"
            f" {o.after['runs'].show(' ms')} after"
        )
    share = min(outcome.writer_share for outcome in outcomes.values())
    runs_ms = max(max(o.before["runs"].median, o.after["runs"].median) for o in outcomes.values())
    rates = " ".join(
        f"prune_rows_per_s_{name}={o.prune_rows_per_s.median:.0f}" for name, o in outcomes.items()
    )
    print(f"{rates} writer_share_during_prune={share:.2f} runs_ms_10m={runs_ms:.1f}")


def _drop_template(jobs: int) -> None:
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "jobtrace_bench_{jobs}" WITH (FORCE)'))
    finally:
        admin.dispose()


if __name__ == "__main__":
    main()
