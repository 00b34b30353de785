"""Exporting trees as JSON and CSV, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import random
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from jobtrace.lineage.export import COLUMNS, PROGRESS_EVERY, export_tree, jsonable
from jobtrace.lineage.queries import JobNotFoundError, LineageStore, StageCount
from tests.lineage.builders import CinemaRun, TreeBuilder, cinema_run, create_schema


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """The lineage tables on the backend under test."""
    engine = create_schema(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def built(engine: Engine) -> tuple[LineageStore, TreeBuilder, CinemaRun]:
    """A stored cinema run beside another one."""
    builder = TreeBuilder()
    cinema_run(builder, random.Random(21), start=-600)
    run = cinema_run(builder, random.Random(22))
    builder.insert(engine)
    return LineageStore(engine), builder, run


def test_flat_json_lists_every_job_with_its_parent(
    built: tuple[LineageStore, TreeBuilder, CinemaRun],
) -> None:
    """The flat JSON export holds each job of the run once, with parent ids and ISO times."""
    store, builder, run = built
    out = io.StringIO()
    count = export_tree(store, run.root, out, "json")
    document = json.loads(out.getvalue())
    jobs = document["jobs"]
    assert document["job_id"] == run.root
    assert count == len(jobs) == len(builder.under(run.root))
    by_id = {job["job_id"]: job for job in jobs}
    for job in jobs:
        assert job["parent_job_id"] == builder.jobs[job["job_id"]]["parent_job_id"]
        assert set(job) == set(COLUMNS)
    root_started = builder.jobs[run.root]["started_at"]
    assert datetime.fromisoformat(by_id[run.root]["started_at"]) == root_started


def test_nested_json_hangs_children_under_parents(
    built: tuple[LineageStore, TreeBuilder, CinemaRun],
) -> None:
    """The nested export of a page is that page with its whole subtree under `children`."""
    store, builder, run = built
    page = run.pages[1]
    out = io.StringIO()
    count = export_tree(store, page, out, "json", nested=True)
    tree = json.loads(out.getvalue())
    assert tree["job_id"] == page

    def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
        yield node
        for child in node["children"]:
            assert child["parent_job_id"] == node["job_id"]
            yield from walk(child)

    nodes = list(walk(tree))
    assert count == len(nodes) == len(builder.subtree(page))
    assert max(node["depth"] for node in nodes) == 4


def test_csv_has_one_row_per_job_and_every_column(
    built: tuple[LineageStore, TreeBuilder, CinemaRun],
) -> None:
    """The CSV export has a header of all columns and a row per job; missing values are empty."""
    store, builder, run = built
    out = io.StringIO()
    export_tree(store, run.root, out, "csv")
    reader = csv.DictReader(io.StringIO(out.getvalue()))
    rows = list(reader)
    assert tuple(reader.fieldnames or ()) == COLUMNS
    assert sorted(row["job_id"] for row in rows) == sorted(
        row["job_id"] for row in builder.under(run.root)
    )
    root = next(row for row in rows if row["job_id"] == run.root)
    assert root["parent_job_id"] == ""
    discarded = next(row for row in rows if row["state"] == "discarded")
    assert discarded["error_type"] == run.failing_error
    assert json.loads(discarded["args"])["movie_id"].startswith("m-")


def test_progress_is_reported_until_the_last_job(
    built: tuple[LineageStore, TreeBuilder, CinemaRun], monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_progress sees growing counts against the tree's size and ends at (total, total)."""
    store, builder, run = built
    monkeypatch.setattr("jobtrace.lineage.export.PROGRESS_EVERY", 7)
    calls: list[tuple[int, int]] = []
    export_tree(store, run.root, io.StringIO(), "csv", on_progress=lambda *c: calls.append(c))
    total = len(builder.under(run.root))
    assert calls[-1] == (total, total)
    assert [done for done, _ in calls[:-1]] == list(range(7, total + 1, 7))
    assert PROGRESS_EVERY > 7


def test_bad_requests_fail_before_writing(
    built: tuple[LineageStore, TreeBuilder, CinemaRun],
) -> None:
    """An unknown format, nested CSV or an unknown id raise and write nothing."""
    store, _, run = built
    out = io.StringIO()
    with pytest.raises(ValueError, match="unknown export format"):
        export_tree(store, run.root, out, "xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nested"):
        export_tree(store, run.root, out, "csv", nested=True)
    with pytest.raises(JobNotFoundError):
        export_tree(store, "missing", out, "csv")
    assert out.getvalue() == ""


def test_jsonable_turns_results_into_json_types() -> None:
    """Result dataclasses, times and tuples become objects, ISO strings and lists."""
    moment = datetime(2024, 11, 23, 2, 0, tzinfo=timezone.utc)
    value = {"rows": (StageCount(1, "PageJob", "queued", 3),), "at": moment}
    assert jsonable(value) == {
        "rows": [{"depth": 1, "name": "PageJob", "state": "queued", "count": 3}],
        "at": "2024-11-23T02:00:00+00:00",
    }


def load_deep(text: str) -> Any:
    """JSON nested deeper than Python's default recursion limit allows ``json.loads`` to read."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 50_000))
    try:
        return json.loads(text)
    finally:
        sys.setrecursionlimit(limit)


def nodes(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Every job of a nested export, its ``unattached`` ones included, walked without recursion."""
    found, todo = [], [tree, *tree.get("unattached", [])]
    while todo:
        node = todo.pop()
        found.append(node)
        for child in node["children"]:
            assert child["parent_job_id"] == node["job_id"]
            todo.append(child)
    return found


def test_nested_json_of_a_10001_deep_chain_is_written_whole(engine: Engine) -> None:
    """A chain deeper than Python's recursion limit exports nested, every job once, in order."""
    builder = TreeBuilder()
    chain = builder.chain(10_001)
    builder.insert(engine)
    out = io.StringIO()
    count = export_tree(LineageStore(engine), chain[0], out, "json", nested=True)
    assert count == len(chain)
    node, depth = load_deep(out.getvalue()), 0
    while node["children"]:
        (node,) = node["children"]
        depth += 1
    assert (node["job_id"], depth) == (chain[-1], len(chain) - 1)
    assert max(len(line) for line in out.getvalue().splitlines()) < 2000, "one job per line"


def _cycle_with_fan_out(engine: Engine, fan_out: int) -> tuple[TreeBuilder, str]:
    """A run where A's parent is B and B's is A, A with ``fan_out`` children; returns A."""
    builder = TreeBuilder()
    root = builder.job("SyncJob")
    a = builder.job("AJob", root)
    b = builder.job("BJob", a)
    builder.reparent(a, b)
    for _ in range(fan_out):
        builder.job("KidJob", a)
    builder.insert(engine)
    return builder, a


@pytest.mark.parametrize("fmt", ["json", "csv", "nested"])
def test_a_parent_cycle_exports_each_job_once(engine: Engine, fmt: str) -> None:
    """Exporting a job on a parent cycle writes each job reachable from it exactly once."""
    builder, a = _cycle_with_fan_out(engine, 200)
    expected = sorted(row["job_id"] for row in builder.subtree(a))
    out = io.StringIO()
    nested = fmt == "nested"
    count = export_tree(
        LineageStore(engine), a, out, "csv" if fmt == "csv" else "json", nested=nested
    )
    if fmt == "csv":
        written = [row["job_id"] for row in csv.DictReader(io.StringIO(out.getvalue()))]
    elif nested:
        tree = json.loads(out.getvalue())
        assert tree["job_id"] == a
        written = [node["job_id"] for node in nodes(tree)]
    else:
        written = [job["job_id"] for job in json.loads(out.getvalue())["jobs"]]
    assert count == len(written) == len(expected) == 202
    assert sorted(written) == expected


def test_nested_json_keeps_jobs_stored_out_of_depth_order(engine: Engine) -> None:
    """A child whose stored depth is above its parent's, and a cycle apart, are still exported."""
    builder = TreeBuilder()
    root = builder.job("SyncJob")
    page = builder.job("PageJob", root, enqueued=5)
    early = builder.job("DetailJob", page, enqueued=1, depth=1)  # metadata said depth 1
    late = builder.job("NoteJob", early, enqueued=9)
    x = builder.job("XJob", root)
    y = builder.job("YJob", x)
    builder.reparent(x, y)  # x and y: each the other's parent, both in the run
    builder.insert(engine)
    out = io.StringIO()
    count = export_tree(LineageStore(engine), root, out, "json", nested=True)
    tree = json.loads(out.getvalue())
    written = {node["job_id"]: node for node in nodes(tree)}
    assert count == len(written) == len(builder.under(root))
    assert [c["job_id"] for c in written[page]["children"]] == [early]
    assert [c["job_id"] for c in written[early]["children"]] == [late]
    assert {node["job_id"] for node in tree["unattached"]} <= {x, y}
    assert {x, y} <= set(written)
