"""Two runs compared in the browser (/compare, /api/compare), the run page's way there, and its
list of traces when the fan-out split the run."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import pytest

from jobtrace.lineage.queries import LineageStore
from tests.lineage.builders import TreeBuilder, cinema_run, create_schema
from tests.web.support import Dashboard, Page, running
from tests.web.test_traces import split_run

HONEYCOMB = (
    "https://ui.honeycomb.io/acme/environments/prod/datasets/jobs/trace"
    "?trace_id={trace_id}&trace_start_ts={start}&trace_end_ts={end}"
)


@dataclass(frozen=True)
class TwoRuns:
    """Last night's and tonight's cinema runs and a split run, in one SQLite store."""

    url: str
    builder: TreeBuilder
    last: str
    this: str
    split: str


def two_runs(url: str) -> TwoRuns:
    engine = create_schema(url)
    builder = TreeBuilder()
    last = cinema_run(builder, random.Random(3), start=-86_400).root
    this = cinema_run(builder, random.Random(4), start=0).root
    split = split_run(builder, 7, start=100)
    builder.insert(engine)
    engine.dispose()
    return TwoRuns(url, builder, last, this, split)


@pytest.fixture
def runs(sqlite_url: str) -> TwoRuns:
    return two_runs(sqlite_url)


@pytest.fixture
def served(runs: TwoRuns) -> Iterator[Dashboard]:
    with running(runs.url, trace_url=HONEYCOMB) as dashboard:
        yield dashboard


def unique_prefix(runs: TwoRuns, job_id: str) -> str:
    """The shortest prefix of ``job_id`` no other job starts with."""
    for length in range(1, len(job_id) + 1):
        prefix = job_id[:length]
        if [other for other in runs.builder.jobs if other.startswith(prefix)] == [job_id]:
            return prefix
    raise AssertionError(job_id)


def test_compare_page_shows_each_stage_as_jobtrace_diff_does(
    runs: TwoRuns, served: Dashboard
) -> None:
    """/compare?a=&b= has one row per stage of either run: totals, delta, state deltas, medians."""
    page = served.get(f"/compare?a={runs.last}&b={runs.this}")
    assert page.status == 200
    assert "<title>Compare runs · jobtrace</title>" in page.body
    rows = {row["job"]: row for row in Page.parse(page.body).rows(0)}
    with LineageStore(runs.url) as store:
        diff = store.diff(runs.last, runs.this)
    assert set(rows) == {stage.name for stage in diff.stages}
    for stage in diff.stages:
        row = rows[stage.name]
        assert row["a"] == f"{stage.a.total:,}"
        assert row["b"] == f"{stage.b.total:,}"
        assert row["Δ"] == f"{stage.total_delta:+,}"
        changed = {s: d for s, d in stage.state_deltas.items() if d}
        for state, delta in changed.items():
            assert f"{state} {delta:+,}" in row["states Δ"]
        if not changed:
            assert row["states Δ"] == "-"
    hrefs = {href for href, _ in Page.parse(page.body).links}
    assert f"/runs/{runs.last}" in hrefs
    assert f"/runs/{runs.this}" in hrefs
    assert f"/api/compare?a={runs.last}&b={runs.this}" in hrefs


def test_compare_api_is_the_page_s_json_twin(runs: TwoRuns, served: Dashboard) -> None:
    """/api/compare answers the same diff as JSON, with each stage's deltas."""
    body = served.get(f"/api/compare?a={runs.last}&b={runs.this}").json()
    assert (body["a"]["job_id"], body["b"]["job_id"]) == (runs.last, runs.this)
    with LineageStore(runs.url) as store:
        diff = store.diff(runs.last, runs.this)
    by_name = {stage["name"]: stage for stage in body["stages"]}
    for stage in diff.stages:
        assert by_name[stage.name]["total_delta"] == stage.total_delta
        assert by_name[stage.name]["state_deltas"] == stage.state_deltas
        assert by_name[stage.name]["a"]["total"] == stage.a.total
    assert body["totals"] == {
        "a": sum(s.a.total for s in diff.stages),
        "b": sum(s.b.total for s in diff.stages),
    }


def test_compare_takes_unique_prefixes_and_any_job_of_a_run(
    runs: TwoRuns, served: Dashboard
) -> None:
    """Prefixes resolve as /list?run= resolves them; a job inside a run stands for its run."""
    inside = next(
        j
        for j, row in runs.builder.jobs.items()
        if row["root_job_id"] == runs.this and j != runs.this
    )
    a, b = unique_prefix(runs, runs.last), unique_prefix(runs, inside)
    body = served.get(f"/api/compare?a={a}&b={b}").json()
    assert (body["a"]["job_id"], body["b"]["job_id"]) == (runs.last, runs.this)


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("", 400, "Comparing needs two runs: ?a=RUN&b=RUN (a is missing)."),
        ("?a=X", 400, "Comparing needs two runs: ?a=RUN&b=RUN (b is missing)."),
        ("?a=syncjob-&b=X", 400, "Job id prefix 'syncjob-' matches several jobs"),
        ("?a=%01&b=X", 400, "A job id has no control characters."),
        (f"?a={'x' * 300}&b=X", 400, "A job id has at most"),
        ("?a=nope-nothing&b=nope", 404, "No job 'nope-nothing' in the lineage store."),
    ],
)
def test_bad_or_unknown_runs_are_one_sentence(
    served: Dashboard, query: str, status: int, message: str
) -> None:
    """Missing, ambiguous or malformed ids are 400s, unknown ones 404s, as JSON under /api."""
    api = served.get(f"/api/compare{query}")
    assert api.status == status
    assert api.json()["error"].startswith(message)
    assert "\n" not in api.json()["error"]
    page = served.get(f"/compare{query}")
    assert page.status == status
    assert "Traceback" not in page.body


def test_run_page_links_the_previous_run_and_the_comparison(
    runs: TwoRuns, served: Dashboard
) -> None:
    """Tonight's run links last night's (same root name) and /compare?a=last&b=this."""
    page = Page.parse(served.get(f"/runs/{runs.this}").body)
    assert page.element("previous-run")["href"] == f"/runs/{runs.last}"
    assert page.element("compare-previous")["href"] == f"/compare?a={runs.last}&b={runs.this}"
    oldest = served.get(f"/runs/{runs.last}")
    assert "compare-previous" not in oldest.body
    assert "No earlier run of SyncJob." in oldest.body
    body = served.get(f"/api/runs/{runs.this}").json()
    assert body["previous"]["job_id"] == runs.last


def test_a_split_run_says_how_many_traces_and_links_the_first(
    runs: TwoRuns, served: Dashboard
) -> None:
    """ "8 traces" on a run split by its fan-out, the first five linked with their own times."""
    page = served.get(f"/runs/{runs.split}")
    assert "<b>8 traces</b>" in page.body
    assert "and 3 more" in page.body
    links = [href for href, _ in Page.parse(page.body).links if href.startswith("https://ui.")]
    listed = [parse_qs(urlsplit(href).query) for href in links]
    ids = [query["trace_id"][0] for query in listed]
    split = [trace_id for trace_id in ids if trace_id.startswith("split-")]
    assert split == ["split-000", "split-001", "split-002", "split-003"]
    body = served.get(f"/api/runs/{runs.split}").json()
    assert body["traces"]["count"] == 8
    assert len(body["traces"]["listed"]) == 5
    first_split = next(t for t in body["traces"]["listed"] if t["trace_id"] == "split-000")
    query = parse_qs(urlsplit(first_split["trace_url"]).query)
    start = runs.builder.at(110).timestamp() - 60  # type: ignore[union-attr]
    end = runs.builder.at(120).timestamp() + 60  # type: ignore[union-attr]
    assert int(query["trace_start_ts"][0]) == int(start)
    assert int(query["trace_end_ts"][0]) == int(end)


def test_an_unsplit_run_links_its_one_trace_over_the_run_s_time(
    runs: TwoRuns, served: Dashboard
) -> None:
    """A run of one trace says so; its link's range covers last night's run, not the last hour."""
    page = served.get(f"/runs/{runs.last}")
    assert "One trace:" in page.body
    assert "traces</b>" not in page.body
    body = served.get(f"/api/runs/{runs.last}").json()
    assert body["traces"]["count"] == 1
    query = parse_qs(urlsplit(body["trace_url"]).query)
    assert int(query["trace_start_ts"][0]) == int(runs.builder.at(-86_400 - 60).timestamp())  # type: ignore[union-attr]
