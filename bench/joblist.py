"""Server time of the dashboard's job lists, queue view and run page on a big run.

Builds (once per database) a store holding one run of ``--jobs`` jobs (a root, pages, and a
stage of details mostly succeeded, some queued on a dead queue) beside ``--other`` jobs of older
runs, then times, through the WSGI app (no network): the run page, a job list's first page, its
page 50 (by cursor), its JSON twin, the whole stage as CSV, and the queue view. Prints the query
plan of the stage × state list and a last line ``joblist_ms_sqlite=<x> joblist_ms_postgres=<y>``
(the median of a deep page).

    .venv/bin/python bench/joblist.py --jobs 100000 --other 100000
    .venv/bin/python bench/joblist.py --postgres postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import Engine

from jobtrace.lineage import store as lineage_store
from jobtrace.lineage.joblist import JobFilter
from jobtrace.lineage.models import Job
from jobtrace.lineage.queries import LineageStore
from jobtrace.web import create_app

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def rows_of_run(root: str, jobs: int, start: datetime, *, stuck: bool) -> list[dict[str, Any]]:
    """A root, ``jobs // 100`` pages and a detail per remaining job (some stuck on a dead queue)."""
    rows: list[dict[str, Any]] = [
        _row(root, "SyncJob", None, root, 0, "succeeded", "sync", start, 0, 30)
    ]
    pages = [f"{root}-page-{n:05d}" for n in range(max(jobs // 100, 1))]
    rows += [
        _row(p, "MoviePageJob", root, root, 1, "succeeded", "pages", start, 1, 2) for p in pages
    ]
    for n in range(jobs - len(rows)):
        queued = stuck and n % 10 == 0
        rows.append(
            _row(
                f"{root}-detail-{n:07d}",
                "MovieDetailJob",
                pages[n % len(pages)],
                root,
                2,
                "queued" if queued else "succeeded",
                "details-legacy" if queued else "details",
                start,
                3 + n / 1000,
                1 + (n % 97) / 10,
                args=f'{{"movie_id":{n}}}',
            )
        )
    return rows


def _row(
    job_id: str,
    name: str,
    parent: str | None,
    root: str,
    depth: int,
    state: str,
    queue: str,
    start: datetime,
    enqueued: float,
    took: float,
    args: str | None = None,
) -> dict[str, Any]:
    enqueued_at = start + timedelta(seconds=enqueued)
    done = state == "succeeded"
    started = enqueued_at + timedelta(seconds=0.5) if done else None
    return {
        "job_id": job_id,
        "name": name,
        "queue": queue,
        "system": "bench",
        "state": state,
        "attempt": 1,
        "parent_job_id": parent,
        "root_job_id": root,
        "depth": depth,
        "trace_id": uuid.uuid5(uuid.NAMESPACE_URL, root).hex,
        "args": args,
        "enqueued_at": enqueued_at,
        "started_at": started,
        "finished_at": started + timedelta(seconds=took) if started else None,
        "updated_at": enqueued_at,
    }


def fill(engine: Engine, jobs: int, other: int) -> str:
    """The store: older runs of ``other`` jobs in all, then the big run; its root's id."""
    runs = max(other // 10_000, 0)
    with engine.begin() as conn:
        for number in range(runs):
            rows = rows_of_run(
                f"old-{number:03d}", 10_000, T0 + timedelta(hours=number), stuck=False
            )
            conn.execute(insert(Job), rows)
        root = "big-run"
        rows = rows_of_run(root, jobs, T0 + timedelta(days=1), stuck=True)
        for start in range(0, len(rows), 20_000):
            conn.execute(insert(Job), rows[start : start + 20_000])
    return root


def timed(call: Callable[[], object], repeat: int) -> float:
    """The median milliseconds of ``repeat`` calls (after one to warm up)."""
    call()
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def get(app: Any, path: str, query: str = "") -> bytes:
    """One request through the WSGI app; the whole body."""
    answer: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        answer["status"] = status
        return None

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SCRIPT_NAME": "",
        "wsgi.input": io.BytesIO(),
    }
    body = b"".join(app(environ, start_response))
    assert answer["status"].startswith("200"), (path, query, answer, body[:300])
    return body


def bench(url: str, jobs: int, other: int, repeat: int) -> float:
    lineage_store.upgrade(url)
    engine = create_engine(url)
    began = time.perf_counter()
    root = fill(engine, jobs, other)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE jobtrace_jobs")
            conn.commit()
    print(f"{engine.dialect.name}: filled in {time.perf_counter() - began:.1f}s")
    store = LineageStore(engine)
    where = JobFilter(run=root, depth=2, name="MovieDetailJob", states=("succeeded",))
    after = None
    for _ in range(50):
        after = store.jobs(where, after=after, limit=50).next
    assert after is not None
    app = create_app(store)
    stage = f"run={root}&depth=2&name=MovieDetailJob&state=succeeded"
    deep = f"{stage}&after={after.encode()}"
    results = {
        "run page": timed(lambda: get(app, f"/runs/{root}"), repeat),
        "list, first page": timed(lambda: get(app, "/list", stage), repeat),
        "list, page 51": timed(lambda: get(app, "/list", deep), repeat),
        "list JSON twin, page 51": timed(lambda: get(app, "/api/list", deep), repeat),
        "queues": timed(lambda: get(app, "/queues"), repeat),
        f"CSV of the stage ({len(get(app, '/list.csv', stage).splitlines()) - 1:,} jobs)": timed(
            lambda: get(app, "/list.csv", stage), 1
        ),
    }
    for name, ms in results.items():
        print(f"  {name}: {ms:.1f} ms")
    with engine.connect() as conn:
        stmt = (
            "SELECT * FROM jobtrace_jobs WHERE root_job_id = 'big-run' AND depth = 2"
            " AND name = 'MovieDetailJob' AND state = 'succeeded'"
            " AND (enqueued_at, job_id) > ('2026-11-02 00:01:00', 'x')"
            " ORDER BY enqueued_at, job_id LIMIT 51"
        )
        explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
        for line in conn.execute(text(explain + stmt)):
            print("  plan:", " ".join(str(part) for part in line))
    engine.dispose()
    return results["list, page 51"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs of the big run")
    parser.add_argument("--other", type=int, default=100_000, help="jobs of older runs")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", help="a PostgreSQL URL (a scratch database is made in it)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sqlite_ms = bench(
            f"sqlite:///{Path(folder) / 'bench.db'}", options.jobs, options.other, options.repeat
        )
    postgres_ms = float("nan")
    if options.postgres:
        admin = create_engine(options.postgres, isolation_level="AUTOCOMMIT")
        name = f"jobtrace_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            url = admin.url.set(database=name).render_as_string(hide_password=False)
            postgres_ms = bench(url, options.jobs, options.other, options.repeat)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()
    print(f"joblist_ms_sqlite={sqlite_ms:.1f} joblist_ms_postgres={postgres_ms:.1f}")


if __name__ == "__main__":
    main()
