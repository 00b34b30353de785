"""How many lineage records per second the recorder writes, and what a record costs the job.

Two numbers per database, SQLite (a temporary file) and PostgreSQL (a database of its own,
dropped afterwards):

* **throughput**: a job's life is three records (enqueued, started, finished), so the bench hands
  the recorder ``--jobs`` such lives as fast as it can and measures, from the first record to the
  end of the final flush, how many records per second reach the store; each job's records arrive
  far apart (other jobs' records in between), as from a busy pool, so each is a write of its own.
* **job-side cost**: the time ``records.emit`` takes on the job's thread per record, while the
  writer runs: the part of the recorder a job ever waits for.

Run::

    python bench/recorder_throughput.py [--jobs 20000] [--rounds 3]

Targets (issue 8): 40k records/s on SQLite, 30k on PostgreSQL. PostgreSQL comes from
``JOBTRACE_BENCH_POSTGRES_URL`` (default: the test server's ``test`` database, used only to create
and drop the bench database). Rounds alternate the databases, each on a fresh store; every round
is printed, then the medians with their ranges, and the last line is the medians,
``records_per_s_sqlite=<x> records_per_s_postgres=<y> emit_us=<z>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from jobtrace import records
from jobtrace.lineage.models import Job
from jobtrace.lineage.recorder import Recorder
from jobtrace.records import JobRecord, JobState

POSTGRES_ADMIN_URL = os.environ.get(
    "JOBTRACE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ARGS = '{"source":"example-cinema","movie_id":4402192,"page":3}'


def lives(jobs: int) -> list[JobRecord]:
    """Every job's three records, interleaved: enqueues run ahead of starts, starts of finishes.

    Each job has times of its own, as real jobs do (no two records share a time by accident).
    """
    began = time.time()
    root = "sync-0"
    enqueued, started, finished = [], [], []
    for n in range(jobs):
        job_id = f"page-{n:07d}"
        enqueued_at, started_at, finished_at = (
            began + n * 1e-3,
            began + 60 + n * 1e-3,
            began + 61 + n * 1.1e-3,
        )
        common = {
            "job_id": job_id,
            "attempt": 1,
            "name": "MoviePageJob",
            "queue": "pages",
            "system": "bench",
            "parent_job_id": root,
            "root_job_id": root,
            "depth": 1,
            "trace_id": f"{n:032x}",
        }
        enqueued.append(
            JobRecord(
                kind="enqueued", state=JobState.QUEUED, args=ARGS, enqueued_at=enqueued_at, **common
            )  # type: ignore[arg-type]
        )
        started.append(
            JobRecord(
                kind="started",
                state=JobState.RUNNING,
                span_id=f"{n:016x}",
                host="bench",
                pid=1,
                started_at=started_at,
                heartbeat_at=started_at,
                **common,  # type: ignore[arg-type]
            )
        )
        finished.append(
            JobRecord(
                kind="finished",
                state=JobState.SUCCEEDED,
                span_id=f"{n:016x}",
                items={"processed": 7},
                finished_at=finished_at,
                heartbeat_at=finished_at,
                **common,  # type: ignore[arg-type]
            )
        )
    lag = max(1, jobs // 10)  # a started record comes ``lag`` enqueues after its enqueue
    ordered: list[JobRecord] = []
    for n in range(jobs + 2 * lag):
        if n < jobs:
            ordered.append(enqueued[n])
        if 0 <= n - lag < jobs:
            ordered.append(started[n - lag])
        if 0 <= n - 2 * lag < jobs:
            ordered.append(finished[n - 2 * lag])
    return ordered


def measure(url: str, batch: list[JobRecord], jobs: int) -> tuple[float, float]:
    """Records per second into ``url``, and the median emit cost in microseconds."""
    recorder = Recorder(url, max_buffered=len(batch) + 1)
    recorder.prepare()
    records.add_sink(recorder)
    try:
        emit = records.emit
        costs: list[float] = []
        began = time.perf_counter()
        for start in range(0, len(batch), 1000):
            t0 = time.perf_counter()
            for record in batch[start : start + 1000]:
                emit(record)
            costs.append((time.perf_counter() - t0) / len(batch[start : start + 1000]))
        if not recorder.flush(600):
            raise RuntimeError("the recorder did not catch up within 10 minutes")
        elapsed = time.perf_counter() - began
    finally:
        records.remove_sink(recorder)
        recorder.close()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            done = conn.execute(
                select(func.count()).select_from(Job).where(Job.state == "succeeded")
            ).scalar()
    finally:
        engine.dispose()
    if done != jobs or recorder.dropped:
        raise RuntimeError(f"{done} of {jobs} jobs stored, {recorder.dropped} records dropped")
    return len(batch) / elapsed, statistics.median(costs) * 1e6


@contextmanager
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of the bench's own, dropped afterwards."""
    name = f"jobtrace_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def spread(values: list[float]) -> str:
    """Median and range, for a line a reader can compare across runs."""
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="job lives (three records each)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per database (median)")
    args = parser.parse_args()
    batch = lives(args.jobs)
    print(f"{len(batch):,} records of {args.jobs:,} jobs, {args.rounds} round(s)")
    rates: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    emits: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{Path(folder) / 'lineage.db'}"
            rate, emit = measure(url, batch, args.jobs)
        rates["sqlite"].append(rate)
        emits["sqlite"].append(emit)
        print(f"sqlite:     {rate:10,.0f} records/s, emit {emit:.2f} µs/record")
        with postgres_database() as url:
            rate, emit = measure(url, batch, args.jobs)
        rates["postgresql"].append(rate)
        emits["postgresql"].append(emit)
        print(f"postgresql: {rate:10,.0f} records/s, emit {emit:.2f} µs/record")
    if args.rounds > 1:
        print(f"spread: sqlite {spread(rates['sqlite'])}, postgresql {spread(rates['postgresql'])}")
    emit_us = max(statistics.median(emits["sqlite"]), statistics.median(emits["postgresql"]))
    print(
        f"records_per_s_sqlite={statistics.median(rates['sqlite']):.0f}"
        f" records_per_s_postgres={statistics.median(rates['postgresql']):.0f}"
        f" emit_us={emit_us:.2f}"
    )


if __name__ == "__main__":
    main()
