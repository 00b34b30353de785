"""Each page reads one snapshot: jobs written while a page is being read never half-appear on it."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, insert
from sqlalchemy.engine import Engine

from jobtrace.lineage.models import Job
from jobtrace.lineage.queries import LineageStore
from jobtrace.web.snapshot import snapshot
from tests.lineage.builders import TreeBuilder, cinema_run, create_schema
from tests.web.support import Page, running


@contextmanager
def writing_between_statements(store: LineageStore, root: str, url: str) -> Iterator[list[str]]:
    """After every statement the store runs, another connection commits one more discarded
    showtime into the run, as busy workers would; yields the ids written."""
    writer = create_engine(url)
    written: list[str] = []
    numbers = itertools.count()

    def write(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
            return  # a BEGIN: the snapshot starts at the first read
        job_id = f"late-showtime-{next(numbers)}"
        with writer.begin() as conn:
            conn.execute(
                insert(Job),
                {
                    "job_id": job_id,
                    "name": "ShowtimeProcessJob",
                    "state": "discarded",
                    "attempt": 1,
                    "parent_job_id": root,
                    "root_job_id": root,
                    "depth": 2,
                    "error_type": "movie_not_ready",
                    "reason": "movie_not_ready",
                },
            )
        written.append(job_id)

    event.listen(store.engine, "after_cursor_execute", write)
    try:
        yield written
    finally:
        event.remove(store.engine, "after_cursor_execute", write)
        writer.dispose()


def built(url: str) -> tuple[TreeBuilder, str]:
    engine: Engine = create_schema(url)
    builder = TreeBuilder()
    run = cinema_run(builder, random.Random(3))
    builder.insert(engine)
    engine.dispose()
    return builder, run.root


def test_a_page_read_while_workers_write_never_contradicts_itself(store_url: str) -> None:
    """The stage table, the failures table and the totals of one run page agree with each other and
    with the store as it was when the page began, however many jobs land meanwhile."""
    builder, root = built(store_url)
    before = sum(
        row["state"] == "discarded" and row["name"] == "ShowtimeProcessJob"
        for row in builder.under(root)
    )
    store = LineageStore(store_url)
    try:
        with running(store) as served, writing_between_statements(store, root, store_url) as late:
            page = Page.parse(served.get(f"/runs/{root}").body)
            document = served.get(f"/api/runs/{root}").json()
    finally:
        store.close()
    assert len(late) > 4  # the page's reads were interleaved with writes
    stages = {(row["job"], row["state"]): row["count"] for row in page.rows(0)}
    (failures,) = page.rows(1)
    assert stages[("ShowtimeProcessJob", "discarded")] == str(before)
    assert failures["jobs"] == str(before)
    # The JSON twin, read later, sees more, but as consistently.
    counts = {(s["name"], s["state"]): s["count"] for s in document["stages"]}
    (group,) = document["overview"]["failures"]
    assert counts[("ShowtimeProcessJob", "discarded")] == group["count"] > before
    assert document["total"] == sum(s["count"] for s in document["stages"])


def test_a_snapshot_ends_with_its_request(store_url: str) -> None:
    """Outside the with block the store sees new jobs again; inside it the moment stays fixed."""
    builder, root = built(store_url)
    total = len(builder.under(root))
    store = LineageStore(store_url)
    writer = create_engine(store_url)
    try:
        with snapshot(store) as frozen:
            assert frozen.count_tree(root) == total
            with writer.begin() as conn:
                conn.execute(
                    insert(Job),
                    {"job_id": "new", "name": "X", "state": "queued", "attempt": 1}
                    | {"root_job_id": root, "parent_job_id": root, "depth": 1},
                )
            assert frozen.count_tree(root) == total
            assert frozen.stage_stats(root).total == total
        assert store.count_tree(root) == total + 1
    finally:
        writer.dispose()
        store.close()
