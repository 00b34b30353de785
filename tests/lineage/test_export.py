"""Exporting trees as JSON and CSV, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import random
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
