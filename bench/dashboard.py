"""Server time of the dashboard's run page, a job list page and the run page's JSON twin.

One run of ``--jobs`` jobs (a root, pages, and a stage of details: mostly succeeded, a tenth
queued on a dead queue since long ago, a few discarded with three kinds of error) beside
``--other`` jobs of older runs (1M rows in all by default), in SQLite and, with ``--postgres``,
PostgreSQL. Each page goes through the WSGI app (:func:`jobtrace.web.create_app`, no network)
``--repeat`` times after one warm-up; each figure is the median with its range. The parts of the
run page (``LineageStore.run_report``: the overview and the stage times from one grouped read)
are timed alone too, outside a page's snapshot; ``--profile`` prints
the run page's cProfile and ``--explain`` the plans of its queries. The last line is
``run_page_ms_sqlite=<x> run_page_ms_postgres=<y>``.

Building a store takes minutes: ``--cache DIR`` keeps the SQLite file in DIR and the PostgreSQL
database (``jobtrace_bench_dashboard_<jobs>_<other>``) for the next run, which only upgrades
their schema to the newest revision.

    .venv/bin/python bench/dashboard.py --cache /tmp/jobtrace-bench \\
        --postgres postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from jobtrace.lineage import store as lineage_store
from jobtrace.lineage.models import Job
from jobtrace.lineage.queries import LineageStore
from jobtrace.web import create_app

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
ROOT = "big-run"
ERRORS = (
    ("TimeoutError", "upstream timed out after 30 s"),
    ("ValueError", "bad release date"),
    ("KeyError", "'poster'"),
)


def rows_of_run(
    root: str, jobs: int, start: datetime, *, troubled: bool
) -> Iterator[dict[str, Any]]:
    """A root, ``jobs // 100`` pages, then details (some stuck or discarded if ``troubled``)."""
    yield _row(root, "SyncJob", None, root, 0, "succeeded", "sync", start, 0, 30)
    pages = [f"{root}-page-{n:05d}" for n in range(max(jobs // 100, 1))]
    for page in pages:
        yield _row(page, "MoviePageJob", root, root, 1, "succeeded", "pages", start, 1, 2)
    for n in range(jobs - 1 - len(pages)):
        state, queue, error = "succeeded", "details", None
        if troubled and n % 10 == 0:
            state, queue = "queued", "details-legacy"
        elif troubled and n % 50 == 7:
            state, error = "discarded", ERRORS[n % 3]
        row = _row(
            f"{root}-detail-{n:07d}",
            "MovieDetailJob",
            pages[n % len(pages)],
            root,
            2,
            state,
            queue,
            start,
            3 + n / 1000,
            1 + (n % 97) / 10,
            args=f'{{"movie_id":{n}}}',
        )
        if error:
            row["error_type"], row["error_message"] = error
        yield row


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
    ran = state in ("succeeded", "discarded")
    started = enqueued_at + timedelta(seconds=0.5) if ran else None
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
        "error_type": None,
        "error_message": None,
        "enqueued_at": enqueued_at,
        "started_at": started,
        "finished_at": started + timedelta(seconds=took) if started else None,
        "updated_at": enqueued_at,
    }


def fill(engine: Engine, jobs: int, other: int) -> None:
    """Older runs of 10,000 jobs (``other`` in all), then the big run, in batches."""
    runs = [
        (f"old-{n:03d}", 10_000, T0 + timedelta(hours=n), False) for n in range(other // 10_000)
    ]
    runs.append((ROOT, jobs, T0 + timedelta(days=2), True))
    with engine.begin() as conn:
        for root, size, start, troubled in runs:
            batch: list[dict[str, Any]] = []
            for row in rows_of_run(root, size, start, troubled=troubled):
                batch.append(row)
                if len(batch) == 20_000:
                    conn.execute(insert(Job), batch)
                    batch = []
            if batch:
                conn.execute(insert(Job), batch)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        postgres = engine.dialect.name == "postgresql"
        conn.exec_driver_sql("VACUUM ANALYZE jobtrace_jobs" if postgres else "ANALYZE")


def _complete(engine: Engine, jobs: int, other: int) -> bool:
    try:
        with engine.connect() as conn:
            count = conn.execute(select(text("count(*)")).select_from(Job)).scalar_one()
    except DBAPIError:  # no table yet: not built
        return False
    return bool(count == jobs + other)


@contextmanager
def sqlite_store(cache: Path | None, jobs: int, other: int) -> Iterator[str]:
    """The URL of a built SQLite store: from the cache, else built (into the cache if given)."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = cache or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"dashboard-{jobs}-{other}.db"
        if not final.exists():
            building = folder / f"dashboard-{jobs}-{other}.building.db"
            building.unlink(missing_ok=True)
            url = f"sqlite:///{building}"
            build(url, jobs, other)
            building.rename(final)
        url = f"sqlite:///{final}"
        upgrade(url)
        yield url


@contextmanager
def postgres_store(admin_url: str, cache: bool, jobs: int, other: int) -> Iterator[str]:
    """The URL of a built PostgreSQL database: kept between runs if ``cache``, else dropped."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = (
        f"jobtrace_bench_dashboard_{jobs}_{other}"
        if cache
        else f"jobtrace_bench_{uuid.uuid4().hex[:8]}"
    )
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            found = exists.first() is not None
        if found:
            engine = create_engine(url)
            complete = _complete(engine, jobs, other)
            engine.dispose()
            if not complete:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
                found = False
        if not found:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            build(url, jobs, other)
        upgrade(url)
        yield url
    finally:
        if not cache:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def upgrade(url: str) -> None:
    """A cached store to the newest revision, analyzed again if that added indexes (SQLite's
    planner, without statistics of a new index beside others that have them, misjudges it)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        before = lineage_store.current_revision(conn)
    lineage_store.upgrade(url)
    if before != lineage_store.HEAD_REVISION:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            postgres = engine.dialect.name == "postgresql"
            conn.exec_driver_sql("ANALYZE jobtrace_jobs" if postgres else "ANALYZE")
    engine.dispose()


def build(url: str, jobs: int, other: int) -> None:
    lineage_store.upgrade(url)
    engine = create_engine(url)
    began = time.perf_counter()
    fill(engine, jobs, other)
    print(
        f"{engine.dialect.name}: built {jobs + other:,} jobs in {time.perf_counter() - began:.0f} s"
    )
    engine.dispose()


def timed(call: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """The median, min and max milliseconds of ``repeat`` calls (after one to warm up)."""
    call()
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples), min(samples), max(samples)


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
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
    }
    body = b"".join(app(environ, start_response))
    assert answer["status"].startswith("200"), (path, query, answer, body[:300])
    return body


def bench(url: str, repeat: int, *, profile: bool, explain: bool) -> float:
    engine = lineage_store.create_store_engine(url)
    store = LineageStore(engine)
    app = create_app(store)
    stage = f"run={ROOT}&depth=2&name=MovieDetailJob&state=succeeded"
    now = datetime.now(timezone.utc)
    results = {
        "run page": timed(lambda: get(app, f"/runs/{ROOT}"), repeat),
        "run page JSON twin": timed(lambda: get(app, f"/api/runs/{ROOT}"), repeat),
        "job list, first page": timed(lambda: get(app, "/list", stage), repeat),
        "  run_report alone (overview and stage times)": timed(
            lambda: store.run_report(ROOT, now=now), repeat
        ),
        "  overview alone": timed(lambda: store.overview(ROOT, now=now), repeat),
    }
    print(f"{engine.dialect.name}:")
    for name, (median, low, high) in results.items():
        print(f"  {name}: {median:.1f} ms ({low:.1f}–{high:.1f}, {repeat} runs)")
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(get, app, f"/runs/{ROOT}")
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())
    if explain:
        print_plans(engine)
    engine.dispose()
    return results["run page"][0]


def print_plans(engine: Engine) -> None:
    """The plan of each statement the run page runs (captured through the engine's events)."""
    from sqlalchemy import event

    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, stmt: str, params: Any, context: Any, many: bool) -> None:
        statements.append((stmt, params))

    event.listen(engine, "before_cursor_execute", capture)
    get(create_app(LineageStore(engine)), f"/runs/{ROOT}")
    event.remove(engine, "before_cursor_execute", capture)
    sqlite = engine.dialect.name == "sqlite"
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, BUFFERS) "
    with engine.connect() as conn:
        for stmt, params in statements:
            if not stmt.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            print("---", " ".join(stmt.split())[:600])
            started = time.perf_counter()
            rows = conn.exec_driver_sql(prefix + stmt, params).fetchall()
            print(f"  ({(time.perf_counter() - started) * 1000:.1f} ms to explain)")
            for line in rows:
                print("  plan:", " ".join(str(part) for part in line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs of the big run")
    parser.add_argument("--other", type=int, default=900_000, help="jobs of older runs")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--postgres", help="a PostgreSQL URL (a database is made beside it)")
    parser.add_argument("--cache", type=Path, help="keep the built stores here for the next run")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument("--profile", action="store_true", help="cProfile of one run page")
    parser.add_argument("--explain", action="store_true", help="plans of the run page's queries")
    options = parser.parse_args()
    kwargs = {"profile": options.profile, "explain": options.explain}
    sqlite_ms = postgres_ms = float("nan")
    if not options.no_sqlite:
        with sqlite_store(options.cache, options.jobs, options.other) as url:
            sqlite_ms = bench(url, options.repeat, **kwargs)
    if options.postgres:
        cache = options.cache is not None
        with postgres_store(options.postgres, cache, options.jobs, options.other) as url:
            postgres_ms = bench(url, options.repeat, **kwargs)
    print(f"run_page_ms_sqlite={sqlite_ms:.1f} run_page_ms_postgres={postgres_ms:.1f}")


if __name__ == "__main__":
    main()
