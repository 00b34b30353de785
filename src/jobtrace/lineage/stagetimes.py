"""Where a run's time went, per stage: p50/p95 of duration and of queue wait, first and last times.

Percentiles are by nearest rank (the smallest value with at least p % of the values at or below
it). PostgreSQL computes them exactly in SQL (``percentile_disc``, which is the nearest rank)
for a subtree and for a run whose stages all hold at most :data:`SAMPLE` jobs. SQLite has no
percentile function: there a stage's values are read (the SQL picks them) and ranked in Python.
A stage of a whole run past :data:`SAMPLE` jobs, on either database, is ranked from an even
sample of about :data:`SAMPLE` of its jobs (every n-th row: by ``rowid`` on SQLite, in index
order on PostgreSQL, read from the index, so the rest is never fetched), and the result says it
was sampled: ranking all 100k durations of a stage was most of a run page's time. First and last
times are exact on both, from a ``GROUP BY`` (the run page's own grouped read, when it passes
them in). *Duration* is ``finished_at - started_at`` of the latest attempt; *queue wait* is
``started_at - coalesce(due_at, enqueued_at)``, the wait from when the job could run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Subquery, cast, func, literal, literal_column, select
from sqlalchemy.engine import Connection

__all__ = ["PERCENTILES", "SAMPLE", "StageTimes", "nearest_rank", "percentiles_of", "stage_times"]

#: The percentiles each stage gets.
PERCENTILES = (50, 95)
#: On SQLite, the most values a stage's percentiles are read from (about; an even sample).
SAMPLE = 2000


@dataclass(frozen=True)
class StageTimes:
    """One stage's times; a percentile is ``None`` when no job of the stage has both ends.

    Attributes:
        timed: Jobs with a duration (started and finished) the percentiles are of.
        waited: Jobs with a queue wait (enqueued or due, and started) the percentiles are of.
        sampled: Whether they are of a sample of the stage (SQLite, big stages), not all of it.
    """

    depth: int
    name: str
    timed: int
    duration_p50: float | None
    duration_p95: float | None
    waited: int
    wait_p50: float | None
    wait_p95: float | None
    first_enqueued_at: datetime | None
    first_started_at: datetime | None
    last_finished_at: datetime | None
    sampled: bool = False


#: Per stage: its jobs, first enqueue, first start and last finish (what a grouped read of the
#: run already knows: :func:`stage_times` then reads only the percentiles).
Bounds = dict[tuple[int, str], tuple[int, datetime | None, datetime | None, datetime | None]]


def stage_times(
    conn: Connection,
    jobs: Subquery,
    *,
    root_id: str | None = None,
    bounds: Bounds | None = None,
) -> dict[tuple[int, str], StageTimes]:
    """The times of every stage of ``jobs`` (a run or a subtree), keyed by ``(depth, name)``.

    A stage whose depth no record gave is at depth ``-1``, as in the stage table.

    Args:
        root_id: The run's root when ``jobs`` is a whole run: a stage of more than
            :data:`SAMPLE` jobs then has its percentiles from an even sample of them.
        bounds: The stages' counts and first and last times, when the caller read them already
            (in the same snapshot): then only the percentiles are read here.
    """
    postgres = conn.dialect.name == "postgresql"
    percentiles: _Percentiles = {}
    if bounds is None:
        # A subtree on PostgreSQL: exact percentiles in the same GROUP BY, one read of it.
        exact = postgres and root_id is None
        bounds = _bounds(conn, jobs, percentiles if exact else None)
        if exact:
            return _assembled(bounds, percentiles)
    big = root_id is not None and any(count > SAMPLE for count, *_ in bounds.values())
    if postgres and not big:
        percentiles = _exact_percentiles(conn, jobs)
    else:
        # No percentile function (SQLite), or a stage of a whole run too big to rank all of it:
        # sorting every value of a 100k-job stage was most of the run page on PostgreSQL.
        totals = {key: count for key, (count, *_) in bounds.items()}
        percentiles = _sampled_percentiles(conn, jobs, totals, root_id)
    return _assembled(bounds, percentiles)


def _bounds(conn: Connection, jobs: Subquery, percentiles: _Percentiles | None) -> Bounds:
    """Each stage's count and first and last times; its exact percentiles too, into
    ``percentiles`` (PostgreSQL only), when that is given."""
    c = jobs.c
    columns: list[Any] = [
        func.count(),
        func.min(c.enqueued_at),
        func.min(c.started_at),
        func.max(c.finished_at),
    ]
    extra = _postgres_columns(conn, jobs) if percentiles is not None else []
    stmt = select(c.depth, c.name, *columns, *extra).group_by(c.depth, c.name)
    bounds: Bounds = {}
    for depth, name, count, first_e, first_s, last_f, *more in conn.execute(stmt):
        key = (-1 if depth is None else int(depth), name)
        bounds[key] = (int(count), first_e, first_s, last_f)
        if percentiles is not None:
            timed, took, waited, wait = more
            percentiles[key] = (_ranked(timed, took), _ranked(waited, wait), False)
    return bounds


def _exact_percentiles(conn: Connection, jobs: Subquery) -> _Percentiles:
    """PostgreSQL's exact percentiles of every stage, in one GROUP BY."""
    c = jobs.c
    stmt = select(c.depth, c.name, *_postgres_columns(conn, jobs)).group_by(c.depth, c.name)
    found: _Percentiles = {}
    for depth, name, timed, took, waited, wait in conn.execute(stmt):
        key = (-1 if depth is None else int(depth), name)
        found[key] = (_ranked(timed, took), _ranked(waited, wait), False)
    return found


def _assembled(bounds: Bounds, percentiles: _Percentiles) -> dict[tuple[int, str], StageTimes]:
    result = {}
    for key, (_, first_enqueued, first_started, last_finished) in sorted(bounds.items()):
        (timed, duration), (waited, wait), sampled = percentiles.get(key, _NONE)
        result[key] = StageTimes(
            depth=key[0],
            name=key[1],
            timed=timed,
            duration_p50=duration.get(50),
            duration_p95=duration.get(95),
            waited=waited,
            wait_p50=wait.get(50),
            wait_p95=wait.get(95),
            first_enqueued_at=first_enqueued,
            first_started_at=first_started,
            last_finished_at=last_finished,
            sampled=sampled,
        )
    return result


def nearest_rank(count: int, percentile: int) -> int:
    """The 1-based rank of the ``percentile``-th value of ``count`` sorted ones (nearest rank)."""
    return max(1, (count * percentile + 99) // 100)


def percentiles_of(values: list[float]) -> dict[int, float]:
    """:data:`PERCENTILES` of ``values`` by nearest rank (empty for no values)."""
    ordered = sorted(values)
    return {p: ordered[nearest_rank(len(ordered), p) - 1] for p in PERCENTILES} if ordered else {}


_Ranked = tuple[int, dict[int, float]]
#: Per stage: (count, percentiles) of durations, the same of waits, and whether sampled.
_Percentiles = dict[tuple[int, str], tuple[_Ranked, _Ranked, bool]]
_NONE: tuple[_Ranked, _Ranked, bool] = ((0, {}), (0, {}), False)


def _postgres_columns(conn: Connection, jobs: Subquery) -> list[Any]:
    """Exact percentiles for a ``GROUP BY`` of stages, one sort per metric: ``percentile_disc``
    is the nearest rank, and it skips NULLs as ``count`` does."""
    from sqlalchemy.dialects.postgresql import ARRAY

    fractions = literal([p / 100 for p in PERCENTILES], ARRAY(Float))
    columns: list[Any] = []
    for value in _metrics(conn, jobs):
        columns += [func.count(value), func.percentile_disc(fractions).within_group(value)]
    return columns


def _ranked(count: int, values: list[float] | None) -> _Ranked:
    if not count or values is None:
        return 0, {}
    return int(count), dict(zip(PERCENTILES, map(float, values), strict=True))


def _sampled_percentiles(
    conn: Connection, jobs: Subquery, totals: dict[tuple[int, str], int], root_id: str | None
) -> _Percentiles:
    """Each stage's values, ranked in Python: all of them, or about :data:`SAMPLE` of them.

    A stage of a run with more jobs gives every ``n``-th row (by ``rowid`` on SQLite, which its
    index holds, so the rows left out are never read; by row number in an index-only scan on
    PostgreSQL); its percentiles are then of that sample.
    """
    from jobtrace.lineage._sql import JOBS

    found: _Percentiles = {}
    for (depth, name), total in totals.items():
        step = -(-total // SAMPLE)
        sampled = root_id is not None and step > 1
        if sampled:
            t = JOBS.c
            source: Any = JOBS
            stage = [
                t.root_job_id == root_id,
                t.depth.is_(None) if depth == -1 else t.depth == depth,
                t.name == name,
            ]
            if conn.dialect.name == "sqlite":
                stage.append(literal_column("jobtrace_jobs.rowid") % step == 0)
            else:
                # No rowid: every n-th row in the order the stage's index-only scan reads it.
                numbered = (
                    select(t.started_at, t.finished_at, t.due_at, t.enqueued_at)
                    .add_columns(func.row_number().over().label("n"))
                    .where(*stage)
                    .subquery("stage")
                )
                source, stage = numbered, [numbered.c.n % step == 0]
        else:
            source = jobs
            stage = [
                jobs.c.depth.is_(None) if depth == -1 else jobs.c.depth == depth,
                jobs.c.name == name,
            ]
        duration, wait = _metrics(conn, source)
        stmt = select(duration, wait).where(*stage)
        durations, waits = [], []
        for took, waited in conn.execute(stmt):
            if took is not None:
                durations.append(float(took))
            if waited is not None:
                waits.append(float(waited))
        found[(depth, name)] = (
            (len(durations), percentiles_of(durations)),
            (len(waits), percentiles_of(waits)),
            sampled,
        )
    return found


def _metrics(conn: Connection, jobs: Any) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """Duration and queue wait of each job, in seconds (NULL where an end is unknown)."""
    c = jobs.c
    return (
        _seconds(conn, c.started_at, c.finished_at),
        _seconds(conn, func.coalesce(c.due_at, c.enqueued_at), c.started_at),
    )


def _seconds(conn: Connection, start: Any, end: Any) -> ColumnElement[Any]:
    """``end - start`` in seconds, as a float; NULL when either is unknown."""
    if conn.dialect.name == "postgresql":
        # date_part is double precision; extract() is numeric, three times slower over a run.
        return cast(func.date_part("epoch", end - start), Float)
    # SQLite keeps times as text: julianday() reads them, in days, to some microseconds off;
    # rounded to the millisecond, a second is a second.
    days = func.julianday(end) - func.julianday(start)
    return func.round(days * literal_column("86400.0"), 3)
