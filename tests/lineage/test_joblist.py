"""Job lists, the queue view and stage times on SQLite and PostgreSQL, against a reference in Python.

One store per backend for the module holds three runs built row by row (a cinema run beside an
older and a newer one) plus jobs made to hit the edges: no enqueue time, no depth, scheduled for
later, args that are not JSON, queues shared across runs. Each filter is checked by comparing the
store's answer with the same filter applied to the rows as built.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from jobtrace.lineage import stagetimes
from jobtrace.lineage.joblist import (
    LIST_STATES,
    SCHEDULED,
    ArgsMatch,
    Cursor,
    FilterError,
    JobFilter,
    parse_filter,
)
from jobtrace.lineage.models import ACTIVE_QUEUE_STATES
from jobtrace.lineage.queries import LineageStore
from tests.lineage.builders import T0, CinemaRun, TreeBuilder, cinema_run, create_schema
from tests.services import fresh_postgres_database

#: "Now" for every query: scheduled jobs are due after it.
NOW = T0 + timedelta(hours=3)


@dataclass(frozen=True)
class Built:
    """A store and the rows put in it."""

    store: LineageStore
    builder: TreeBuilder
    run: CinemaRun
    dialect: str


def edge_jobs(builder: TreeBuilder, root: str) -> None:
    """Jobs of ``root``'s run at the edges of the ordering and of the filters."""
    parent = builder.job("EdgeJob", root, queue="shared", enqueued=100)
    builder.job("EdgeJob", parent, queue="shared", enqueued=None, started=None, state="running")
    builder.job("EdgeJob", parent, queue="shared", enqueued=None, state="succeeded", started=5)
    builder.job("EdgeJob", parent, state="queued", enqueued=101, due_at=NOW + timedelta(hours=1))
    builder.job("EdgeJob", parent, state="queued", enqueued=101, due_at=NOW - timedelta(hours=1))
    raw = {
        builder.job("EdgeJob", parent, state="failed", enqueued=102): "not json {",
        builder.job("EdgeJob", parent, state="failed"): '{"movie_id": 42, "ok": true}',
        builder.job("EdgeJob", parent, state="failed"): '{"user": {"id": "7"}, "tags": ["a"]}',
        builder.job("EdgeJob", parent, enqueued=103): '["x", 3]',
    }
    for job_id, args in raw.items():
        builder.jobs[job_id]["args"] = args  # as stored, not as JSON of a string
    orphan = builder.job("LostJob", parent, queue="shared", state="queued", enqueued=104)
    builder.jobs[orphan]["depth"] = None
    # Equal enqueue times: the id breaks the tie, on both databases.
    for _ in range(4):
        builder.job("TieJob", parent, queue="shared", state="queued", enqueued=200)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Built]:
    """The module's store on each backend (PostgreSQL skips when unreachable, fails under CI)."""
    builder = TreeBuilder()
    cinema_run(builder, random.Random(4), start=-7200)
    run = cinema_run(builder, random.Random(9))
    newer = cinema_run(builder, random.Random(11), start=3600)
    edge_jobs(builder, run.root)
    edge_jobs(builder, newer.root)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('joblist') / 'lineage.db'}"
        yield from _stored(url, builder, run)
    else:
        with fresh_postgres_database() as url:
            yield from _stored(url, builder, run)


def _stored(url: str, builder: TreeBuilder, run: CinemaRun) -> Iterator[Built]:
    engine = create_schema(url)
    builder.insert(engine)
    store = LineageStore(engine)
    try:
        yield Built(store, builder, run, engine.dialect.name)
    finally:
        engine.dispose()


# The reference: a filter applied to the rows as built.


def matches(row: dict[str, Any], where: JobFilter) -> bool:
    """Whether the filter takes this built row, said the plain way."""
    if where.run is not None and row.get("root_job_id") != where.run:
        return False
    if where.parent is not None and row.get("parent_job_id") != where.parent:
        return False
    if where.depth is not None and row.get("depth") != (None if where.depth == -1 else where.depth):
        return False
    if where.name is not None and row["name"] != where.name:
        return False
    if where.states and shown_state(row) not in where.states:
        return False
    if where.queue is not None and row.get("queue") != where.queue:
        return False
    enqueued = row.get("enqueued_at")
    if where.since is not None and (enqueued is None or enqueued < where.since):
        return False
    if where.until is not None and (enqueued is None or enqueued >= where.until):
        return False
    if where.trace_id is not None and row.get("trace_id") != where.trace_id:
        return False
    if where.id_prefix is not None and not row["job_id"].startswith(where.id_prefix.rstrip("…")):
        return False
    if where.args is not None and not args_match(row.get("args"), where.args):
        return False
    return where.text is None or where.text.lower() in (row.get("args") or "").lower()


def shown_state(row: dict[str, Any]) -> str:
    """The state the stage table shows: a queued job not due yet is scheduled."""
    due = row.get("due_at")
    if row["state"] == "queued" and due is not None and due > NOW:
        return SCHEDULED
    return str(row["state"])


def args_match(args: str | None, match: ArgsMatch) -> bool:
    try:
        value: Any = json.loads(args or "")
    except ValueError:
        return False
    for key in match.path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return False
    if isinstance(value, bool):
        return match.value == ("true" if value else "false")
    if isinstance(value, (dict, list)) or value is None:
        return False
    return str(value) == match.value


def order(row: dict[str, Any]) -> tuple[bool, datetime, str]:
    """Oldest enqueued first, by id among equals; no enqueue time last, by id."""
    enqueued = row.get("enqueued_at")
    return enqueued is None, enqueued or T0, row["job_id"]


def expected(built: Built, where: JobFilter) -> list[str]:
    rows = [row for row in built.builder.jobs.values() if matches(row, where)]
    return [row["job_id"] for row in sorted(rows, key=order)]


def listed(built: Built, where: JobFilter, limit: int) -> list[str]:
    """Every page of the list, following the cursors; each page checked on the way."""
    found: list[str] = []
    after: Cursor | None = None
    for _ in range(10_000):
        page = built.store.jobs(where, after=after, limit=limit, now=NOW)
        assert len(page.jobs) <= limit
        found += [job.job_id for job in page.jobs]
        if page.next is None:
            return found
        assert len(page.jobs) == limit
        after = Cursor.decode(page.next.encode())  # as a browser carries it
    raise AssertionError("the pages never end")


# Filters, one at a time and combined.


def test_a_stage_in_one_state_is_listed_exactly_in_order(built: Built) -> None:
    """A run's stage × state (what a count on the run page links to) in pages of 3 is the
    reference list: every job once, oldest first, ties by id."""
    where = JobFilter(run=built.run.root, depth=2, name="ShowtimeProcessJob", states=("discarded",))
    want = expected(built, where)
    assert len(want) >= 1
    assert listed(built, where, 3) == want
    page = built.store.jobs(where, limit=3, now=NOW)
    assert page.count == len(want)
    assert not page.count_capped


def test_jobs_without_an_enqueue_time_come_last_and_page_across_the_gap(built: Built) -> None:
    """The list crosses from timed jobs to those without a time within a page and by cursor."""
    where = JobFilter(run=built.run.root, name="EdgeJob")
    want = expected(built, where)
    untimed = [job_id for job_id in want if built.builder.jobs[job_id]["enqueued_at"] is None]
    assert len(untimed) == 2
    assert want[-2:] == untimed
    for limit in (1, 2, 3, len(want) - 1, len(want), 50):
        assert listed(built, where, limit) == want


@pytest.mark.parametrize(
    ("state", "due"),
    [("queued", "due now or not delayed"), ("scheduled", "due later")],
)
def test_queued_and_scheduled_split_as_the_stage_table_splits_them(
    built: Built, state: str, due: str
) -> None:
    """``queued`` lists queued jobs due now (or never delayed), ``scheduled`` those due later."""
    where = JobFilter(run=built.run.root, name="EdgeJob", states=(state,))
    got = listed(built, where, 50)
    assert got == expected(built, where)
    assert len(got) == 1


def test_unknown_depth_is_listed_by_depth_minus_one(built: Built) -> None:
    """depth -1 is the stage of jobs no record gave a depth, as the stage table shows it."""
    where = JobFilter(run=built.run.root, depth=-1)
    assert [built.builder.jobs[j]["name"] for j in listed(built, where, 50)] == ["LostJob"]


@pytest.mark.parametrize(
    ("raw", "count"),
    [
        ("movie_id=42", 1),
        ("args.movie_id=42", 1),
        ("ok=true", 1),
        ("user.id=7", 1),
        ("tags.0=a", 1),
        ("1=3", 1),
        ("movie_id=m-0001", None),
        ("movie_id=4", 0),
        ("user=7", 0),
    ],
)
def test_args_match_a_json_path_and_skip_args_that_are_not_json(
    built: Built, raw: str, count: int | None
) -> None:
    """args=PATH=VALUE matches the scalar at the path as text; args that are not JSON match
    nothing and never fail the query."""
    where = JobFilter(run=built.run.root, args=parse_filter({"args": raw}).args)
    got = listed(built, where, 50)
    assert got == expected(built, where)
    if count is not None:
        assert len(got) == count


def test_text_matches_args_ignoring_case_with_wildcards_taken_literally(built: Built) -> None:
    """text= is a substring of the args, any case; % and _ are plain characters."""
    for typed in ("M-0001", "showtime", "not json {", "%", "_"):
        where = JobFilter(text=typed)
        assert listed(built, where, 7) == expected(built, where)


def test_id_prefix_trace_and_time_range(built: Built) -> None:
    """id prefix, trace id and a half-open enqueue-time range each list what the reference does."""
    root = built.builder.jobs[built.run.root]
    filters = [
        JobFilter(id_prefix="moviepagejob-0"),
        JobFilter(id_prefix=built.run.root[:-1] + "…"),
        JobFilter(trace_id=root["trace_id"]),
        JobFilter(since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=8)),
        JobFilter(run=built.run.root, since=T0 + timedelta(seconds=6)),
        JobFilter(queue="shared", states=("queued", "running")),
    ]
    for where in filters:
        want = expected(built, where)
        assert want, where
        assert listed(built, where, 4) == want


def test_a_parent_s_children_page_past_the_first_page_with_a_state(built: Built) -> None:
    """parent= with a state pages through the children of one job."""
    parent = built.builder.jobs[built.run.pages[0]]["job_id"]
    where = JobFilter(parent=parent, states=("succeeded", "discarded"))
    assert listed(built, where, 1) == expected(built, where)


def _filters(built: Built) -> st.SearchStrategy[JobFilter]:
    rows = list(built.builder.jobs.values())
    roots = sorted({row["root_job_id"] for row in rows})
    names = sorted({row["name"] for row in rows})
    queues = sorted({row["queue"] for row in rows if row.get("queue")})
    depths = sorted({row["depth"] for row in rows if row.get("depth") is not None})
    times = [T0 + timedelta(seconds=s) for s in (-7200, -100, 0, 5, 6, 9, 100, 3600, 4000)]
    return st.builds(
        JobFilter,
        run=st.none() | st.sampled_from(roots),
        depth=st.none() | st.sampled_from([-1, *depths]),
        name=st.none() | st.sampled_from(names),
        states=st.lists(st.sampled_from(LIST_STATES), max_size=3, unique=True).map(tuple),
        queue=st.none() | st.sampled_from(queues),
        since=st.none() | st.sampled_from(times[:5]),
        until=st.none() | st.sampled_from(times[5:]),
        id_prefix=st.none() | st.sampled_from(["m", "moviepagejob-00", "edgejob", "z"]),
        args=st.none()
        | st.sampled_from([ArgsMatch(("movie_id",), "m-0002"), ArgsMatch(("ok",), "true")]),
        text=st.none() | st.sampled_from(["m-000", "SHOWTIME", "json"]),
    )


def test_any_combination_of_filters_pages_to_the_reference_list(built: Built) -> None:
    """Filters combined at random, in pages of random size: the same jobs in the same order."""

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(where=_filters(built), limit=st.integers(1, 9))
    def check(where: JobFilter, limit: int) -> None:
        assert listed(built, where, limit) == expected(built, where)

    check()


def test_iter_jobs_streams_the_whole_list_in_batches(built: Built) -> None:
    """iter_jobs yields what the pages hold, in the same order, whatever the batch size."""
    where = JobFilter(run=built.run.root)
    want = expected(built, where)
    assert [job.job_id for job in built.store.iter_jobs(where, now=NOW, batch_size=7)] == want


def test_the_count_stops_at_its_cap(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    """A list counts up to MAX_COUNT and then says there are more."""
    from jobtrace.lineage import joblist

    monkeypatch.setattr(joblist, "MAX_COUNT", 5)
    page = built.store.jobs(JobFilter(), limit=2, now=NOW)
    assert (page.count, page.count_capped) == (5, True)


# Validation.


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"state": "bogus"}, "state 'bogus' is not one of queued, running"),
        ({"state": "queued,pending"}, "state 'pending' is not one of"),
        ({"since": "yesterday"}, "since must be a time like"),
        ({"until": "2024-13-01"}, "until must be a time like"),
        ({"since": "2024-11-23T03:00Z", "until": "2024-11-23T02:00Z"}, "until must be later"),
        ({"depth": "x"}, "depth must be a whole number from -1"),
        ({"depth": "-2"}, "depth must be a whole number from -1"),
        ({"trace": "xyz"}, "trace must be a trace id"),
        ({"args": "movie_id"}, "args must be a JSON path and a value"),
        ({"args": "a b=1"}, "args must be a JSON path and a value"),
        ({"name": "x\ny"}, "name has no control characters"),
        ({"run": "r" * 300}, "run has at most 255 characters"),
    ],
)
def test_bad_filters_are_refused_in_one_sentence(params: dict[str, str], message: str) -> None:
    """Every bad value is a FilterError whose message is one line saying what is expected."""
    with pytest.raises(FilterError) as raised:
        parse_filter(params)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "text", ["zzz", "", "e30", "WyJ4Il0", "bnVsbA", "WyJub3QgYSB0aW1lIiwgIngiXQ"]
)
def test_a_cursor_a_list_did_not_write_is_refused(text: str) -> None:
    """Garbage, JSON of the wrong shape, a bad time: all one FilterError, never a crash."""
    with pytest.raises(FilterError, match="the cursor is not one a job list wrote"):
        Cursor.decode(text)


def test_filters_and_cursors_round_trip_through_their_text() -> None:
    """params() and parse_filter() are inverses; a cursor decodes to itself."""
    params = {
        "run": "r-1",
        "parent": "p",
        "depth": "2",
        "name": "N",
        "state": "queued,scheduled",
        "queue": "q",
        "since": "2024-11-23T02:00:00+00:00",
        "until": "2024-11-23T03:00:00+00:00",
        "trace": "a" * 32,
        "id": "7d1e…",
        "args": "user.id=7",
        "text": "50%",
    }
    assert parse_filter(params).params() == params
    for cursor in (Cursor(T0, "job/ü 1"), Cursor(None, "x")):
        assert Cursor.decode(cursor.encode()) == cursor


# The queue view.


def test_queues_group_waiting_and_running_jobs_by_run_oldest_first(built: Built) -> None:
    """Per queue, the active jobs (scheduled ones left out) counted per run and state, the run
    waiting the longest first, and the queue waiting the longest first."""
    want: dict[str | None, Counter[tuple[str, str]]] = {}
    for row in built.builder.jobs.values():
        if (
            row["state"] in ("queued", "running", "retrying", "stalled")
            and shown_state(row) != SCHEDULED
        ):
            want.setdefault(row.get("queue"), Counter())[(row["root_job_id"], row["state"])] += 1
    views = built.store.queues(now=NOW)
    got = {
        view.queue: Counter(
            {(run.root_job_id, state): n for run in view.runs for state, n in run.states.items()}
        )
        for view in views
    }
    assert got == want
    shared = next(view for view in views if view.queue == "shared")
    assert len(shared.runs) == 2
    oldest = [run.oldest_enqueued_at for run in shared.runs]
    assert oldest == sorted(oldest)
    assert shared.runs[0].root_job_id == built.run.root
    assert shared.runs[0].root_name == "SyncJob"
    firsts = [view.oldest_enqueued_at for view in views if view.oldest_enqueued_at]
    assert firsts == sorted(firsts)


# Stage times.


def seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def test_stage_times_are_the_nearest_rank_percentiles_of_each_stage(built: Built) -> None:
    """p50/p95 of duration and of queue wait, first and last times, per stage, as computed by
    hand from the rows (small stages: exact on both databases)."""
    times = built.store.stage_times(built.run.root)
    rows = built.builder.under(built.run.root)
    stages = {(-1 if r["depth"] is None else r["depth"], r["name"]) for r in rows}
    assert set(times) == stages
    for (depth, name), got in times.items():
        mine = [
            r
            for r in rows
            if (-1 if r["depth"] is None else r["depth"], r["name"]) == (depth, name)
        ]
        took = [
            s for r in mine if (s := seconds(r.get("started_at"), r.get("finished_at"))) is not None
        ]
        waited = [
            s
            for r in mine
            if (s := seconds(r.get("due_at") or r.get("enqueued_at"), r.get("started_at")))
            is not None
        ]
        want_took, want_wait = stagetimes.percentiles_of(took), stagetimes.percentiles_of(waited)
        assert (got.timed, got.waited, got.sampled) == (len(took), len(waited), False)
        assert got.duration_p50 == pytest.approx(want_took.get(50), abs=0.01)
        assert got.duration_p95 == pytest.approx(want_took.get(95), abs=0.01)
        assert got.wait_p50 == pytest.approx(want_wait.get(50), abs=0.01)
        assert got.wait_p95 == pytest.approx(want_wait.get(95), abs=0.01)
        enqueued = [r["enqueued_at"] for r in mine if r.get("enqueued_at")]
        assert got.first_enqueued_at == (min(enqueued) if enqueued else None)
        finished = [r["finished_at"] for r in mine if r.get("finished_at")]
        assert got.last_finished_at == (max(finished) if finished else None)


def test_nearest_rank_by_hand() -> None:
    """p50 of 1..4 is 2, p95 of 1..20 is 19, p95 of 1..21 is 20: the nearest-rank definition."""
    assert stagetimes.percentiles_of([4.0, 1.0, 3.0, 2.0]) == {50: 2.0, 95: 4.0}
    assert stagetimes.percentiles_of([float(n) for n in range(1, 21)])[95] == 19.0
    assert stagetimes.percentiles_of([float(n) for n in range(1, 22)])[95] == 20.0
    assert stagetimes.percentiles_of([]) == {}


def test_big_stages_of_a_run_are_sampled_and_say_so(
    built: Built, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SAMPLE jobs a run's stage has its percentiles from an even sample, flagged, on both
    databases (ranking every value took most of the run page); first and last times stay exact."""
    exact = built.store.stage_times(built.run.root)
    monkeypatch.setattr(stagetimes, "SAMPLE", 3)
    times = built.store.stage_times(built.run.root)
    showtimes = next(key for key in times if key[1] == "ShowtimeProcessJob")
    got = times[showtimes]
    assert got.first_enqueued_at == exact[showtimes].first_enqueued_at
    assert got.last_finished_at == exact[showtimes].last_finished_at
    assert got.sampled
    assert 0 < got.timed <= 2 * 3
    small = next(key for key, value in exact.items() if value.timed <= 3)
    assert times[small] == exact[small]


def test_the_run_report_has_the_stage_times_of_stage_times(built: Built) -> None:
    """The run page's one grouped read gives the same stage times as stage_times' own read."""
    now = built.builder.start + timedelta(hours=1)
    report = built.store.run_report(built.run.root, now=now)
    assert report.times == built.store.stage_times(built.run.root)
    assert report.overview == built.store.overview(built.run.root, now=now)


# Plans: the common lists are index ranges.


def test_the_stage_list_and_the_queue_view_read_their_indexes_on_sqlite(built: Built) -> None:
    """A run's stage by state, past a cursor, is a SEARCH of the stage-list index; the queue view
    reads only the partial index of active jobs."""
    if built.dialect != "sqlite":
        pytest.skip("SQLite's plans")
    with built.store.engine.connect() as conn:
        stage = conn.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT * FROM jobtrace_jobs WHERE root_job_id = 'r'"
                " AND depth = 2 AND name = 'n' AND state = 's'"
                " AND (enqueued_at, job_id) > ('2024-01-01', 'x')"
                " ORDER BY enqueued_at, job_id LIMIT 51"
            )
        ).all()
        queues = conn.execute(
            text(
                "EXPLAIN QUERY PLAN SELECT queue, root_job_id, state, count(*), min(enqueued_at)"
                f" FROM jobtrace_jobs WHERE {ACTIVE_QUEUE_STATES}"
                " AND (due_at IS NULL OR due_at <= '2024-01-01')"
                " GROUP BY queue, root_job_id, state"
            )
        ).all()
    plan = " | ".join(str(row[-1]) for row in stage)
    assert "ix_jobtrace_jobs_stage_list" in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    plan = " | ".join(str(row[-1]) for row in queues)
    assert "COVERING INDEX ix_jobtrace_jobs_active_queues" in plan, plan


def test_the_stage_list_is_an_index_range_on_postgresql(built: Built) -> None:
    """Some index serves a stage by state past a cursor as an ordered range: with sequential
    scans and sorts priced out (a small table's plan is not a big one's), PostgreSQL walks the
    stage-list index and sorts nothing. bench/joblist.py shows the plan it picks at 100k jobs."""
    if built.dialect != "postgresql":
        pytest.skip("PostgreSQL's plans")
    with built.store.engine.connect() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql("SET LOCAL enable_sort = off")
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                text(
                    "EXPLAIN SELECT * FROM jobtrace_jobs WHERE root_job_id = 'r' AND depth = 2"
                    " AND name = 'n' AND state = 's'"
                    " AND (enqueued_at, job_id) > ('2024-01-01', 'x')"
                    " ORDER BY enqueued_at, job_id LIMIT 51"
                )
            )
        )
    assert "ix_jobtrace_jobs_stage_list" in plan, plan
    assert "Sort" not in plan, plan
