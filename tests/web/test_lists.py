"""The drill-down: counts that link to job lists, lists paged by cursor and downloaded whole, the
queue view across runs and per-stage times, served for real and read with urllib."""

from __future__ import annotations

import csv
import html
import io
import json
import random
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from jobtrace.web import Urls
from tests.lineage.builders import TreeBuilder, cinema_run, create_schema
from tests.web.support import HOSTILE_ROOT, Dashboard, Page, Stored, build, running


def listed_ids(stored: Stored, **where: Any) -> list[str]:
    """The ids a list of these built rows holds, oldest enqueued first, by id among equals."""
    rows = [
        row
        for row in stored.builder.jobs.values()
        if all(row.get(column) == value for column, value in where.items())
    ]
    rows.sort(key=lambda r: (r["enqueued_at"] is None, r["enqueued_at"] or 0, r["job_id"]))
    return [row["job_id"] for row in rows]


def whole_list(dashboard: Dashboard, url: str) -> list[str]:
    """Every job of a list, following its JSON twin's ``next`` cursors."""
    found: list[str] = []
    query = urlsplit(url).query
    after = ""
    while True:
        document = dashboard.get(f"/api/list?{query}{after}&limit=1000").json()
        found += [job["job_id"] for job in document["jobs"]]
        if document["next"] is None:
            return found
        after = f"&after={document['next']}"


def test_every_count_on_the_run_page_links_to_a_list_of_exactly_those_jobs(
    stored: Stored, dashboard: Dashboard
) -> None:
    """Each stage × state count is a link, and the list behind it holds that many jobs: those of
    the stage in that state."""
    root = stored.run.root
    page = Page.parse(dashboard.get(f"/runs/{root}").body)
    links = dict(page.links)
    for row in page.rows(0):
        url = Urls().stage(root, int(row["depth"]), row["job"], row["state"])
        assert links.get(url) == row["count"], (url, row)
        want = listed_ids(
            stored, root_job_id=root, depth=int(row["depth"]), name=row["job"], state=row["state"]
        )
        assert len(want) == int(row["count"].replace(",", ""))
        assert whole_list(dashboard, url) == want


def test_the_stuck_stage_links_to_its_waiting_jobs_on_its_queue(
    stored: Stored, dashboard: Dashboard
) -> None:
    """The ⚠ stuck line's count lists the stuck details on the dead queue."""
    root = stored.run.root
    page = Page.parse(dashboard.get(f"/runs/{root}").body)
    stuck = [
        href
        for href, text in page.links
        if text.endswith(" queued") and "queue=" in href and "MovieDetailJob" in href
    ]
    assert len(stuck) == 1
    assert parse_qs(urlsplit(stuck[0]).query)["queue"] == [stored.run.stuck_queue]
    want = listed_ids(stored, root_job_id=root, name="MovieDetailJob", state="queued")
    assert whole_list(dashboard, stuck[0]) == want


def test_a_list_page_shows_its_jobs_and_pages_by_next_links(
    stored: Stored, dashboard: Dashboard
) -> None:
    """/list?run=ROOT&limit=7: the table holds 7 jobs, the count says them all, and the Next links
    walk the run once, in order; the first page has no cursor."""
    root = stored.run.root
    url = f"/list?run={root}&limit=7"
    seen: list[str] = []
    pages = 0
    while url:
        body = dashboard.get(url).body
        parsed = Page.parse(body)
        rows = parsed.rows(0)
        assert len(rows) <= 7
        seen += [row["job id"] for row in rows]
        url = html.unescape(parsed.ids["next-page"]["href"]) if "next-page" in parsed.ids else ""
        pages += 1
    assert seen == listed_ids(stored, root_job_id=root)
    assert pages == -(-len(seen) // 7)
    first = dashboard.get(f"/list?run={root}&limit=7").body
    assert f'<span id="list-count">{len(seen):,} jobs</span>' in first


def test_the_run_filter_takes_a_prefix_or_any_job_of_the_run(
    stored: Stored, dashboard: Dashboard
) -> None:
    """run= resolves an id prefix, and a job inside a run stands for its run."""
    root = stored.run.root
    by_root = dashboard.get(f"/api/list?run={root}&limit=5").json()
    for typed in (root[:-1], stored.run.pages[1]):
        document = dashboard.get(f"/api/list?run={quote(typed)}&limit=5").json()
        assert document["filter"]["run"] == root
        assert document["jobs"] == by_root["jobs"]


def test_a_parent_s_children_page_past_the_job_page_s_limit(
    stored: Stored, dashboard: Dashboard
) -> None:
    """The job page lists few children but links to all of them and to each state's, paged."""
    root = stored.run.root
    body = dashboard.get(f"/jobs/{root}?limit=2").body
    hrefs = {html.unescape(href) for href, _ in Page.parse(body).links}
    everything = f"/list?parent={root}"
    assert everything in hrefs
    assert "page through all the children" in body
    assert whole_list(dashboard, everything) == listed_ids(stored, parent_job_id=root)
    queued = f"/list?parent={root}&state=queued"
    assert queued in hrefs
    assert whole_list(dashboard, queued) == listed_ids(stored, parent_job_id=root, state="queued")


def test_csv_and_json_stream_the_whole_list(stored: Stored, dashboard: Dashboard) -> None:
    """/list.csv and /list.json hold every job of the list in the page order, written as a
    stream (no Content-Length; the connection closes at the end)."""
    root = stored.run.root
    want = listed_ids(stored, root_job_id=root)
    answer = dashboard.get(f"/list.csv?run={root}")
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert "content-length" not in answer.headers
    assert answer.headers["connection"] == "close"
    assert answer.headers["content-disposition"].startswith('attachment; filename="jobs-')
    rows = list(csv.DictReader(io.StringIO(answer.body)))
    assert [row["job_id"] for row in rows] == want
    assert {row["root_job_id"] for row in rows} == {root}
    document = json.loads(dashboard.get(f"/list.json?run={root}").body)
    assert [job["job_id"] for job in document["jobs"]] == want
    assert document["count"] == len(want)
    assert document["filter"] == {"run": root}


def test_csv_cells_a_spreadsheet_would_run_are_defused(sqlite_url: str) -> None:
    """A name or args starting with = + - @ get a leading ' in the CSV, and nothing else does."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    root = builder.job('=HYPERLINK("http://x")')
    builder.jobs[root]["args"] = "@SUM(1)"  # as stored, not JSON
    builder.job("+cmd", root, args={"a": "=1"})
    builder.insert(engine)
    engine.dispose()
    with running(sqlite_url) as served:
        rows = list(csv.DictReader(io.StringIO(served.get(f"/list.csv?run={root}").body)))
    cells = {row["name"]: row["args"] for row in rows}  # both enqueued at once: by id
    assert cells == {'\'=HYPERLINK("http://x")': "'@SUM(1)", "'+cmd": '{"a":"=1"}'}


#: Bad filters and the sentence each is refused with.
BAD_FILTERS = [
    ("state=bogus", "State 'bogus' is not one of queued, running"),
    ("since=yesterday", "Since must be a time like 2024-11-23T02:00:00Z"),
    ("after=bm90IGEgY3Vyc29y", "The cursor is not one a job list wrote"),
    ("limit=0", "Limit must be a whole number from 1 to 1000"),
    ("args=movie_id", "Args must be a JSON path and a value"),
    ("depth=deep", "Depth must be a whole number from -1"),
    ("trace=nope", "Trace must be a trace id"),
    # Not a prefix with digits: the builder's ids count on across the session's tests.
    ("run=moviepagejob-", "Job id prefix 'moviepagejob-' matches several jobs"),
]
#: Pages and JSON twins take every parameter; downloads take no page parameters.
PAGED = {"after", "limit"}


@pytest.mark.parametrize(
    ("where", "query", "message"),
    [
        (where, query, message)
        for where in ("/list", "/api/list", "/list.csv", "/list.json")
        for query, message in BAD_FILTERS
        if "." not in where or query.split("=", 1)[0] not in PAGED
    ],
)
def test_bad_filters_are_one_line_400s(
    dashboard: Dashboard, where: str, query: str, message: str
) -> None:
    """A bad state, time, cursor, limit, path, depth, trace id or ambiguous run is a 400 with one
    sentence, as a page, as JSON under /api, and before a download starts."""
    answer = dashboard.get(f"{where}?{query}")
    assert answer.status == 400
    if where == "/api/list":
        error = answer.json()["error"]
    else:
        error = html.unescape(answer.body.split("<p>", 1)[1].split("</p>", 1)[0])
    assert error.startswith(message)
    assert "\n" not in error
    assert "Traceback" not in answer.body


def test_an_unknown_run_is_a_404(dashboard: Dashboard) -> None:
    """run= naming no job is the usual 404."""
    answer = dashboard.get("/api/list?run=no-such-run")
    assert answer.status == 404
    assert answer.json()["error"] == "No job 'no-such-run' in the lineage store."


def test_the_run_page_shows_each_stage_s_times_and_parents(
    stored: Stored, dashboard: Dashboard
) -> None:
    """ "Where the time went": per stage, jobs (linked), from how many distinct parents, p50/p95
    of duration and wait, first and last times."""
    root = stored.run.root
    page = Page.parse(dashboard.get(f"/runs/{root}").body)
    times = {(int(row["depth"]), row["job"]): row for row in page.rows(2)}
    rows = stored.builder.under(root)
    for (depth, name), row in times.items():
        stage = [r for r in rows if (r["depth"], r["name"]) == (depth, name)]
        assert row["jobs"] == f"{len(stage):,}"
        parents = {r["parent_job_id"] for r in stage if r["parent_job_id"]}
        assert row["from parents"] == (f"from {len(parents)}" if depth else "-")
    details = times[(2, "MovieDetailJob")]
    # The builder gives every job that ran start = enqueued + 1 and finish = start + 1.
    assert (details["took p50"], details["took p95"]) == ("1s", "1s")
    assert (details["wait p50"], details["wait p95"]) == ("1s", "1s")
    assert details["first enqueued"] == "2024-11-23 01:59:05Z"  # the run starts at T0 - 60 s


def test_the_run_page_twin_carries_the_stage_times(stored: Stored, dashboard: Dashboard) -> None:
    """The JSON twin has the same per-stage times as the page."""
    document = dashboard.get(f"/api/runs/{stored.run.root}").json()
    by_stage = {(t["depth"], t["name"]): t for t in document["stage_times"]}
    assert by_stage[(1, "MoviePageJob")]["duration_p50"] == 1.0
    assert by_stage[(1, "MoviePageJob")]["sampled"] is False


def queue_store(url: str) -> tuple[str, str]:
    """An older and a newer cinema run, both with details stuck on the dead queue."""
    engine = create_schema(url)
    builder = TreeBuilder()
    older = cinema_run(builder, random.Random(2), start=-86400)
    newer = cinema_run(builder, random.Random(3))
    builder.insert(engine)
    engine.dispose()
    return older.root, newer.root


def test_the_queue_view_says_whose_jobs_wait_on_each_queue(sqlite_url: str) -> None:
    """Q3: /queues?run=NEWER lists the dead queue's waiting jobs per run, the older run's first,
    marked "older run" and "this run", each count linking to those jobs."""
    older, newer = queue_store(sqlite_url)
    with running(sqlite_url) as served:
        run_page = Page.parse(served.get(f"/runs/{newer}").body)
        assert f"/queues?run={newer}" in {href for href, _ in run_page.links}
        page = served.get(f"/queues?run={newer}")
        queue = ""
        which = []
        for row in Page.parse(page.body).rows(0):
            queue = row["queue"] or queue  # written on a queue's first row only
            if queue == "details-legacy":
                which.append((row["run"], row["which"]))
        assert which == [(older, "older run"), (newer, "this run")]
        document = served.get(f"/api/queues?run={newer}").json()
        queue = next(q for q in document["queues"] if q["queue"] == "details-legacy")
        assert [run["root_job_id"] for run in queue["runs"]] == [older, newer]
        link = f"/list?run={newer}&queue=details-legacy&state=queued"
        assert link in {html.unescape(href) for href, _ in Page.parse(page.body).links}
        listed = served.get(f"/api/list?run={newer}&queue=details-legacy&state=queued").json()
        assert listed["count"] == queue["runs"][1]["states"]["queued"]


def test_hostile_values_in_a_list_are_escaped(stored: Stored, dashboard: Dashboard) -> None:
    """The hostile run's names, ids and args reach the list page as text only."""
    body = dashboard.get(f"/list?run={quote(HOSTILE_ROOT, safe='')}").body
    assert "<script>" not in body
    assert "<b onmouseover" not in body
    assert "&lt;script&gt;" in body


def test_lists_on_postgresql(postgres_url: str) -> None:
    """On PostgreSQL too the counts link to their lists, and a list downloads whole."""
    stored = build(postgres_url)
    root = stored.run.root
    with running(postgres_url) as served:
        page = Page.parse(served.get(f"/runs/{root}").body)
        for row in page.rows(0):
            url = Urls().stage(root, int(row["depth"]), row["job"], row["state"])
            want = listed_ids(
                stored,
                root_job_id=root,
                depth=int(row["depth"]),
                name=row["job"],
                state=row["state"],
            )
            assert whole_list(served, url) == want
        rows = list(csv.DictReader(io.StringIO(served.get(f"/list.csv?run={root}").body)))
        assert [row["job_id"] for row in rows] == listed_ids(stored, root_job_id=root)
        assert served.get("/api/queues").json()["queues"]
