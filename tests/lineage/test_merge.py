"""Records of one job merge into one row the same way whatever order and batches they come in."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from jobtrace.lineage import _merge
from jobtrace.lineage.models import ID_LENGTH, Attempt, Job
from jobtrace.lineage.store import create_store_engine, upgrade
from jobtrace.records import JobRecord, JobState

T = 1_700_000_000.0


def record(kind: str, state: JobState, attempt: int = 1, **fields: Any) -> JobRecord:
    return JobRecord(
        kind=kind, job_id="job-1", attempt=attempt, name="PageJob", state=state, **fields
    )  # type: ignore[arg-type]


ENQUEUED = record(
    "enqueued",
    JobState.QUEUED,
    parent_job_id="root",
    root_job_id="root",
    depth=1,
    trace_id="a" * 32,
    args='{"page": 3}',
    enqueued_at=T,
)
STARTED = record(
    "started",
    JobState.RUNNING,
    parent_job_id="root",
    root_job_id="root",
    depth=1,
    trace_id="b" * 32,
    span_id="c" * 16,
    host="w1",
    pid=7,
    started_at=T + 1,
    heartbeat_at=T + 1,
)
FINISHED = record(
    "finished",
    JobState.FAILED,
    parent_job_id="root",
    root_job_id="root",
    depth=1,
    trace_id="b" * 32,
    span_id="c" * 16,
    error_type="ValueError",
    error_message="boom",
    items={"total": 10, "processed": 4},
    finished_at=T + 2,
    heartbeat_at=T + 2,
)
EXPECTED = {
    "state": "failed",
    "attempt": 1,
    "trace_id": "b" * 32,
    "span_id": "c" * 16,
    "args": '{"page": 3}',
    "error_type": "ValueError",
    "items_total": 10,
    "items_processed": 4,
    "host": "w1",
    "root_job_id": "root",
    "depth": 1,
}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """A migrated store on SQLite or PostgreSQL."""
    upgrade(store_url)
    engine = create_store_engine(store_url)
    yield engine
    engine.dispose()


def write(engine: Engine, batch: Sequence[JobRecord], now: float = T) -> None:
    with engine.begin() as conn:
        _merge.write(conn, batch, now)


def job(engine: Engine, job_id: str = "job-1") -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(Job).where(Job.job_id == job_id)).mappings().one()
    return dict(row)


def attempts(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Attempt.attempt, Attempt.state).order_by(Attempt.attempt))
        return [(a, s) for a, s in rows]


def subset(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row[key] for key in EXPECTED}


@pytest.mark.parametrize("order", list(itertools.permutations([ENQUEUED, STARTED, FINISHED])))
def test_any_arrival_order_gives_the_same_row_one_record_per_batch(
    engine: Engine, order: tuple[JobRecord, ...]
) -> None:
    """Enqueued, started and finished in any order across batches: the same final row."""
    for item in order:
        write(engine, [item])
    assert subset(job(engine)) == EXPECTED
    assert attempts(engine) == [(1, "failed")]


@pytest.mark.parametrize("order", list(itertools.permutations([ENQUEUED, STARTED, FINISHED])))
def test_any_arrival_order_gives_the_same_row_in_one_batch(
    engine: Engine, order: tuple[JobRecord, ...]
) -> None:
    """The Python merge of one batch follows the same rules as the SQL merge."""
    write(engine, order)
    assert subset(job(engine)) == EXPECTED


def test_a_late_outcome_beats_the_reapers_crashed(engine: Engine) -> None:
    """A job declared crashed that then reports its outcome ends with that outcome."""
    write(engine, [STARTED])
    write(engine, [record("heartbeat", JobState.CRASHED)])
    assert job(engine)["state"] == "crashed"
    write(engine, [FINISHED])
    assert job(engine)["state"] == "failed"


def test_a_later_attempt_replaces_the_attempt_and_an_earlier_one_changes_nothing(
    engine: Engine,
) -> None:
    """Attempt 2 clears attempt 1's error; a late record of attempt 1 cannot bring it back."""
    write(engine, [ENQUEUED, STARTED, FINISHED])
    retry = record("started", JobState.RUNNING, attempt=2, span_id="d" * 16, started_at=T + 5)
    write(engine, [retry])
    row = job(engine)
    assert (row["attempt"], row["state"], row["error_type"], row["span_id"]) == (
        2,
        "running",
        None,
        "d" * 16,
    )
    assert row["args"] == '{"page": 3}'  # what describes the job survives the new attempt
    write(engine, [FINISHED])
    assert (job(engine)["attempt"], job(engine)["state"]) == (2, "running")
    assert attempts(engine) == [(1, "failed"), (2, "running")]


HOSTILE_IDS = [
    "'; DROP TABLE jobtrace_jobs; --",
    'quote " and \\ backslash',
    "ünïcødé 🎬 映画",
    "nul\x00byte",
    "x" * 10_000,
    "lone \ud800 surrogate",
]


@pytest.mark.parametrize("job_id", HOSTILE_IDS)
def test_hostile_ids_and_huge_args_are_stored_safely(engine: Engine, job_id: str) -> None:
    """Metacharacters are parameters, NULs are replaced, long ids stay distinct, args are capped."""
    hostile = JobRecord(
        kind="started",
        job_id=job_id,
        attempt=1,
        name=job_id,
        state=JobState.RUNNING,
        parent_job_id=f"parent {job_id}",
        root_job_id=f"root {job_id}",
        depth=1,
        args="a" * 1_000_000,
        error_message="\x00" * 10,
    )
    write(engine, [hostile])
    assert job(engine, _merge.safe_id(f"parent {job_id}") or "")["state"] == "unknown"
    stored_id = _merge.safe_id(job_id)
    assert stored_id is not None
    assert len(stored_id) <= ID_LENGTH
    row = job(engine, stored_id)
    assert "\x00" not in row["job_id"]
    assert "\x00" not in row["name"]
    assert len(row["args"]) == _merge.MAX_TEXT


def test_long_ids_that_share_a_prefix_stay_distinct() -> None:
    """Two ids longer than the column that differ only at the end do not collide."""
    first, second = "x" * 1000 + "a", "x" * 1000 + "b"
    assert _merge.safe_id(first) != _merge.safe_id(second)
    assert _merge.safe_id("short") == "short"


def test_a_record_without_root_or_depth_leaves_them_to_the_records_that_have_them(
    engine: Engine,
) -> None:
    """A bare heartbeat never moves a job out of its run, whichever order the records come in."""
    bare = record("heartbeat", JobState.RUNNING, progress=0.5, heartbeat_at=T + 1.5)
    for batches in ([[STARTED], [bare]], [[bare], [STARTED]], [[bare, STARTED]]):
        with engine.begin() as conn:
            conn.execute(Job.__table__.delete())
        for batch in batches:
            write(engine, batch)
        row = job(engine)
        assert (row["root_job_id"], row["depth"], row["progress"]) == ("root", 1, 0.5), batches
    with engine.begin() as conn:
        conn.execute(Job.__table__.delete())
    write(engine, [bare])
    assert (job(engine)["root_job_id"], job(engine)["depth"]) == (None, None)


def test_a_job_named_as_parent_or_root_gets_a_placeholder_its_own_record_replaces(
    engine: Engine,
) -> None:
    """The store knows every job it heard of; the job's own first record replaces every field."""
    child = record(
        "started",
        JobState.RUNNING,
        parent_job_id="page-9",
        root_job_id="sync-1",
        depth=2,
        started_at=T,
    )
    write(engine, [child])
    parent, root = job(engine, "page-9"), job(engine, "sync-1")
    assert (parent["state"], parent["attempt"], parent["root_job_id"], parent["depth"]) == (
        "unknown",
        0,
        "sync-1",
        1,
    )
    assert (root["state"], root["root_job_id"], root["depth"], root["parent_job_id"]) == (
        "unknown",
        "sync-1",
        0,
        None,
    )
    assert "job-1" in parent["reason"]
    write(engine, [child])  # heard of again: the placeholder is not touched
    assert job(engine, "page-9")["updated_at"] == parent["updated_at"]
    own = JobRecord(
        kind="enqueued",
        job_id="page-9",
        attempt=1,
        name="MoviePageJob",
        state=JobState.QUEUED,
        parent_job_id="sync-1",
        root_job_id="sync-1",
        depth=1,
        enqueued_at=T - 5,
    )
    write(engine, [own])
    replaced = job(engine, "page-9")
    assert (replaced["state"], replaced["name"], replaced["attempt"], replaced["reason"]) == (
        "queued",
        "MoviePageJob",
        1,
        None,
    )
    assert replaced["parent_job_id"] == "sync-1"


@pytest.mark.parametrize("order", [1, -1])
def test_a_placeholder_takes_the_lineage_any_record_of_the_batch_tells(
    engine: Engine, order: int
) -> None:
    """Whichever comes first, a record that says nothing of the run does not blank the frame."""
    untold = JobRecord(  # a foreign producer's child of the root: no root, no depth
        kind="heartbeat",
        job_id="a-page",  # sorts before the other: the store sees it first either way
        attempt=1,
        name="PageJob",
        state=JobState.RUNNING,
        parent_job_id="sync-1",
    )
    told = record(
        "started", JobState.RUNNING, parent_job_id="page-2", root_job_id="sync-1", depth=2
    )
    write(engine, [untold, told][::order])
    root = job(engine, "sync-1")
    assert (root["state"], root["root_job_id"], root["depth"]) == ("unknown", "sync-1", 0)


@pytest.mark.parametrize("progress", [float("nan"), float("inf"), float("-inf"), 0.25])
def test_a_progress_json_cannot_carry_still_writes_the_record(
    engine: Engine, progress: float
) -> None:
    """A NaN or infinite progress does not cost the record (PostgreSQL gets the batch as JSON)."""
    write(engine, [STARTED._replace(progress=progress)])
    assert job(engine)["state"] == "running"


def test_times_are_stored_to_the_microsecond(engine: Engine) -> None:
    """A record's times come back as they went in, to the microsecond, on either database."""
    at = T + 0.123456
    write(engine, [STARTED._replace(started_at=at, heartbeat_at=at)])
    assert job(engine)["started_at"].timestamp() == pytest.approx(at, abs=1e-6)
    assert job(engine)["started_at"].microsecond == 123456


def test_rows_with_different_empty_columns_in_one_batch_are_each_stored_whole(
    engine: Engine,
) -> None:
    """SQLite gets the empty columns as ``NULL`` in the statement, not as bound ``None``s (its
    driver's adapter lookup for each was a fifth of the upsert's time): every row of a batch is
    still stored whole, whichever of its columns are empty, and a later record's values replace
    or fill the earlier ones as before."""
    bound: list[Any] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "DO UPDATE" in statement:  # the upserts (placeholders are few, through SQLAlchemy)
            bound.extend(parameters if isinstance(parameters, list) else [parameters])

    event.listen(engine, "before_cursor_execute", capture)
    try:
        write(engine, [ENQUEUED._replace(job_id=f"job-{n}") for n in (1, 2)])
        write(
            engine,
            [
                STARTED._replace(job_id="job-1"),
                FINISHED._replace(job_id="job-2"),
                ENQUEUED._replace(job_id="job-3", trace_id=None, args=None),
                record("enqueued", JobState.QUEUED)._replace(job_id="job-4"),
            ],
        )
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    if engine.dialect.name == "sqlite":
        assert bound
        assert not [row for row in bound if None in row]
    one, two, three, four = (job(engine, f"job-{n}") for n in (1, 2, 3, 4))
    assert (one["state"], one["args"], one["host"], one["trace_id"]) == (
        "running",
        '{"page": 3}',
        "w1",
        "b" * 32,
    )
    assert one["finished_at"] is None
    assert one["enqueued_at"] is not None
    assert subset(two) | {"host": "w1"} == EXPECTED
    assert two["host"] is None
    assert two["pid"] is None
    assert (three["trace_id"], three["args"], three["depth"]) == (None, None, 1)
    assert (four["state"], four["root_job_id"], four["depth"], four["args"]) == (
        "queued",
        None,
        None,
        None,
    )


RANKED = [JobState.UNKNOWN, JobState.QUEUED, JobState.STALLED, JobState.RUNNING]
RANKED += [JobState.CRASHED, JobState.SUCCEEDED, JobState.FAILED]


@pytest.mark.parametrize("stored", RANKED)
@pytest.mark.parametrize("incoming", RANKED)
def test_within_an_attempt_the_state_further_along_wins_whichever_came_first(
    engine: Engine, stored: JobState, incoming: JobState
) -> None:
    """SQLite's upsert is one statement per rank of the incoming rows, which tests the stored
    row's rank only: every pair of ranks still merges as the rules say (a tie: the later wins),
    the job row and the attempt row alike."""
    write(engine, [record("started", stored, host="first")])
    write(engine, [record("finished", incoming, host="second")], now=T + 1)
    advances = _merge.rank(incoming.value) >= _merge.rank(stored.value)
    row = job(engine)
    assert row["state"] == (incoming if advances else stored).value
    assert row["host"] == ("second" if advances else "first")
    assert attempts(engine) == [(1, row["state"])]


def test_a_batch_of_one_attempt_per_job_is_one_statement_on_postgresql(engine: Engine) -> None:
    """PostgreSQL gets both upserts in one statement from one JSON parameter when each job has
    one attempt in the batch (the attempt rows are columns of the job rows); a job with two
    attempts in the batch still gets both attempt rows."""
    statements: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "DO UPDATE" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        write(engine, [ENQUEUED, STARTED._replace(job_id="job-2")])
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    if engine.dialect.name == "postgresql":
        assert len(statements) == 1
    assert (job(engine)["state"], job(engine, "job-2")["state"]) == ("queued", "running")
    assert sorted(attempts(engine)) == [(1, "queued"), (1, "running")]
    write(engine, [FINISHED._replace(attempt=2), FINISHED._replace(attempt=3)], now=T + 1)
    assert sorted(attempts(engine)) == [(1, "queued"), (1, "running"), (2, "failed"), (3, "failed")]
    assert job(engine)["attempt"] == 3
