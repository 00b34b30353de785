"""How long ``stage_stats`` takes for a 100k-job run inside a 1M-row lineage table.

Builds the same table in SQLite (a temporary file) and in PostgreSQL (a database of its own,
dropped afterwards): many small runs plus one 100k-job, four-level run whose rows are interleaved
with the others, as concurrent runs are. Then times ``LineageStore.stage_stats`` on the big run
(median of several calls, after warm-up) and prints each plan. The target is under 50 ms on both.

    python bench/stats_query.py [--rows 1000000] [--big 100000]

PostgreSQL comes from ``JOBTRACE_BENCH_POSTGRES_URL`` (default: the test server's ``test``
database, used only to create and drop the bench database). The last line is
``stats_ms_sqlite=<x> stats_ms_postgres=<y>``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from jobtrace.lineage.models import Base
from jobtrace.lineage.queries import JOBS, LineageStore

POSTGRES_ADMIN_URL = os.environ.get(
    "JOBTRACE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BATCH = 20_000
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
STATES = ["succeeded"] * 90 + ["failed", "discarded", "queued", "running", "skipped"] * 2


def run_rows(
    rng: random.Random, size: int, shape: tuple[int, ...], when: datetime
) -> list[dict[str, Any]]:
    """One run of about ``size`` jobs: a root, then per level ``shape[i]`` children per parent."""
    root = str(uuid.UUID(int=rng.getrandbits(128)))
    names = ["SyncJob", "PageJob", "DetailJob", "ShowtimeJob", "PriceJob"]
    rows = [_row(root, None, root, 0, names[0], "succeeded", when, "{}")]
    level = [root]
    for depth, fanout in enumerate(shape, start=1):
        below = []
        for parent in level:
            for number in range(fanout):
                if len(rows) >= size:
                    return rows
                job_id = str(uuid.UUID(int=rng.getrandbits(128)))
                state = rng.choice(STATES)
                args = f'{{"item":{number}}}'
                rows.append(_row(job_id, parent, root, depth, names[depth], state, when, args))
                below.append(job_id)
        level = below
    return rows


def _row(
    job_id: str,
    parent: str | None,
    root: str,
    depth: int,
    name: str,
    state: str,
    when: datetime,
    args: str,
) -> dict[str, Any]:
    done = state not in ("queued", "running")
    return {
        "job_id": job_id,
        "name": name,
        "queue": name.lower(),
        "state": state,
        "attempt": 1,
        "parent_job_id": parent,
        "root_job_id": root,
        "depth": depth,
        "trace_id": root.replace("-", ""),
        "args": args,
        "enqueued_at": when,
        "started_at": when + timedelta(seconds=1) if state != "queued" else None,
        "finished_at": when + timedelta(seconds=2) if done else None,
    }


def build_rows(total: int, big: int, seed: int = 7) -> tuple[str, list[list[dict[str, Any]]]]:
    """The big run's root id, and every row in insert batches with the big run spread through."""
    rng = random.Random(seed)
    # A four-level run (depths 0-3): pages, ten details per page, showtimes under each detail.
    pages = max(1, round((big / 110) ** 0.5))
    showtimes = max(1, -(-(big - 1 - pages * 11) // (pages * 10)))
    big_rows = run_rows(rng, big, (pages, 10, showtimes), START + timedelta(days=30))
    small: list[dict[str, Any]] = []
    run = 0
    while len(small) < total - len(big_rows):
        size = min(rng.randint(20, 180), total - len(big_rows) - len(small))
        when = START + timedelta(minutes=run)
        small += run_rows(rng, size, (rng.randint(3, 12), 4, 3, 2), when)
        run += 1
    # Interleave: each batch takes its share of the big run, as concurrent runs write.
    big_per_batch = -(-len(big_rows) * BATCH // total)
    small_per_batch = BATCH - big_per_batch
    batches = []
    for index in range(-(-len(small) // small_per_batch)):
        batch = small[index * small_per_batch : (index + 1) * small_per_batch]
        batch += big_rows[index * big_per_batch : (index + 1) * big_per_batch]
        batches.append(batch)
    taken = len(batches) * big_per_batch
    if taken < len(big_rows):
        batches.append(big_rows[taken:])
    return big_rows[0]["job_id"], batches


def load(engine: Engine, batches: list[list[dict[str, Any]]]) -> float:
    """Create the schema and insert every batch; returns seconds taken."""
    began = time.perf_counter()
    Base.metadata.create_all(engine)
    for batch in batches:
        with engine.begin() as conn:
            conn.execute(JOBS.insert(), batch)
    return time.perf_counter() - began


def time_stats(engine: Engine, root: str, expected: int, repeat: int = 15) -> float:
    """Median milliseconds of ``stage_stats`` on the big run, after two warm-up calls."""
    store = LineageStore(engine)
    for _ in range(2):
        stats = store.stage_stats(root)
        if stats.total != expected:
            raise SystemExit(f"stage_stats counted {stats.total} jobs, expected {expected}")
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        store.stage_stats(root)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def plan(engine: Engine, root: str) -> str:
    """The database's plan for the stats query."""
    sql = (
        "SELECT depth, name, state, count(*) FROM jobtrace_jobs WHERE root_job_id = :root"
        " GROUP BY depth, name, state ORDER BY depth, name, state"
    )
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN (ANALYZE) "
    with engine.connect() as conn:
        rows = conn.execute(text(explain + sql), {"root": root}).all()
    return "\n".join("    " + str(row[-1]) for row in rows)


def bench_sqlite(root: str, expected: int, batches: list[list[dict[str, Any]]]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        seconds = load(engine, batches)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        print(f"sqlite: loaded in {seconds:.1f}s", flush=True)
        print(plan(engine, root))
        ms = time_stats(engine, root, expected)
        engine.dispose()
    print(f"sqlite: stage_stats {ms:.1f} ms", flush=True)
    return ms


def bench_postgres(root: str, expected: int, batches: list[list[dict[str, Any]]]) -> float:
    name = f"jobtrace_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_ADMIN_URL).set(database=name)
    engine = create_engine(url)
    try:
        seconds = load(engine, batches)
        print(f"postgres: loaded in {seconds:.1f}s", flush=True)
        cold = time_stats(engine, root, expected, repeat=5)
        print(f"postgres: stage_stats {cold:.1f} ms right after the load (no VACUUM yet)")
        # What autovacuum does to a freshly loaded table within a minute or so: statistics and a
        # visibility map, so the covering index answers without visiting the table.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE jobtrace_jobs"))
        print(plan(engine, root))
        ms = time_stats(engine, root, expected)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print(f"postgres: stage_stats {ms:.1f} ms (after VACUUM ANALYZE)", flush=True)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="jobs in the table")
    parser.add_argument("--big", type=int, default=100_000, help="jobs in the big run")
    args = parser.parse_args()
    began = time.perf_counter()
    root, batches = build_rows(args.rows, args.big)
    rows = sum(len(batch) for batch in batches)
    print(f"{rows:,} rows in {len(batches)} batches, built in {time.perf_counter() - began:.1f}s")
    sqlite_ms = bench_sqlite(root, args.big, batches)
    postgres_ms = bench_postgres(root, args.big, batches)
    print(f"bench took {time.perf_counter() - began:.0f}s")
    print(f"stats_ms_sqlite={sqlite_ms:.1f} stats_ms_postgres={postgres_ms:.1f}")


if __name__ == "__main__":
    main()
