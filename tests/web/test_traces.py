"""The traces of a run and the previous run of the same name, read in a page's snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from sqlalchemy import event

from jobtrace.lineage.queries import LineageStore
from jobtrace.web import traces
from jobtrace.web.snapshot import snapshot
from jobtrace.web.traces import previous_run, run_traces
from tests.lineage.builders import TreeBuilder, create_schema


def split_run(builder: TreeBuilder, parts: int, *, start: float = 0.0) -> str:
    """A root whose children are split into ``parts`` traces of two jobs each (fan-out split)."""
    root = builder.job("FanOutJob", enqueued=start, trace_id="root-trace")
    for part in range(parts):
        for _ in range(2):
            builder.job(
                "ItemJob",
                root,
                enqueued=start + 10 + part,
                finished=start + 20 + part,
                trace_id=f"split-{part:03d}",
            )
    return root


@pytest.fixture
def store(store_url: str) -> Iterator[LineageStore]:
    """An empty schema on SQLite, then on PostgreSQL."""
    create_schema(store_url).dispose()
    with LineageStore(store_url) as lineage:
        yield lineage


def utc(moment: datetime | None) -> datetime | None:
    """A stored time as an aware UTC one (SQLite's are naive)."""
    if moment is None or moment.tzinfo is None:
        return None if moment is None else moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def test_a_split_run_lists_its_first_traces_and_counts_them(store: LineageStore) -> None:
    """Traces come in the order their jobs were enqueued, with their jobs and times; all counted."""
    builder = TreeBuilder()
    root = split_run(builder, 7)
    builder.insert(store.engine)
    with snapshot(store) as frozen:
        found = run_traces(frozen, root, limit=3)
    assert (found.count, found.split) == (8, True)
    assert [t.trace_id for t in found.traces] == ["root-trace", "split-000", "split-001"]
    assert [t.jobs for t in found.traces] == [1, 2, 2]
    second = found.traces[1]
    assert utc(second.enqueued_at) == builder.at(10)
    assert utc(second.finished_at) == builder.at(20)


def test_one_trace_is_not_split_and_other_runs_do_not_count(store: LineageStore) -> None:
    """A run in one trace has count 1; another run's traces and jobs without one are left out."""
    builder = TreeBuilder()
    one = builder.job("OneJob")
    builder.job("Child", one)
    builder.job("Child", one, trace_id=None)
    split_run(builder, 4)
    builder.insert(store.engine)
    found = run_traces(store, one)
    assert (found.count, found.split) == (1, False)


def test_a_big_run_reads_a_bounded_share_and_says_so(
    store: LineageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past SCANNED jobs the count is a lower bound, marked capped, not a read of the whole run."""
    monkeypatch.setattr(traces, "SCANNED", 6)
    builder = TreeBuilder()
    root = split_run(builder, 9)
    builder.insert(store.engine)
    found = run_traces(store, root)
    assert found.capped
    assert 3 <= found.count <= 7
    assert sum(trace.jobs for trace in found.traces) <= 7


def test_the_previous_run_is_the_latest_earlier_one_of_the_same_name(store: LineageStore) -> None:
    """Same root name, enqueued before; later runs, other names and child jobs never qualify."""
    builder = TreeBuilder()
    oldest = builder.job("NightlyJob", enqueued=-7200)
    older = builder.job("NightlyJob", enqueued=-3600)
    builder.job("NightlyJob", older, enqueued=-10)  # a child of that name: not a run
    builder.job("OtherJob", enqueued=-60)
    this = builder.job("NightlyJob", enqueued=0)
    builder.job("NightlyJob", enqueued=3600)
    builder.insert(store.engine)
    with snapshot(store) as frozen:
        assert previous_run(frozen, frozen.job(this)).job_id == older  # type: ignore[union-attr]
        assert previous_run(frozen, frozen.job(older)).job_id == oldest  # type: ignore[union-attr]
        assert previous_run(frozen, frozen.job(oldest)) is None


def test_the_trace_list_reads_its_index_alone_on_sqlite(store: LineageStore) -> None:
    """A run's trace list is a covering range of revision 0008's index: no job row is read."""
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plans")
    builder = TreeBuilder()
    root = split_run(builder, 3)
    builder.insert(store.engine)
    statements: list[tuple[str, object]] = []

    def capture(conn: object, cursor: object, stmt: str, params: object, *rest: object) -> None:
        statements.append((stmt, params))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        run_traces(store, root)
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    ((stmt, params),) = statements
    with store.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        plan = " | ".join(
            str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params)
        )
    assert "COVERING INDEX ix_jobtrace_jobs_run_traces" in plan, plan
