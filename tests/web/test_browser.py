"""The dashboard in a real browser: Playwright driving Debian's Chromium, never a downloaded one.

Outside CI the tests skip when ``/usr/bin/chromium`` is missing (``apt-get install chromium``);
under ``CI=true`` they fail instead. Screenshots go to ``$JOBTRACE_TEST_ARTIFACTS`` when set, else
to a pytest temporary folder, and their paths are printed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import create_engine, update

from jobtrace.lineage.models import Job
from jobtrace.lineage.queries import LineageStore
from tests.lineage.builders import UPLOAD_PATH, TreeBuilder, create_schema, upload_batches
from tests.web.support import Stored, running
from tests.web.test_compare import two_runs

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: The most any wait for the page lasts; the page normally answers within a poll or two.
PATIENCE_MS = 20_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright, one for the module."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser tab with a desktop-sized window."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(PATIENCE_MS)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go."""
    folder = os.environ.get("JOBTRACE_TEST_ARTIFACTS")
    if folder:
        path = Path(folder) / "screenshots"
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


def screenshot(page: Any, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def stage_rows(page: Any) -> dict[tuple[str, str], str]:
    """The run page's stage table as ``(job, state) -> count``."""
    cells = page.eval_on_selector_all(
        "table.stages tbody tr",
        "rows => rows.map(r => Array.from(r.cells, c => c.textContent.trim()))",
    )
    return {(row[1], row[2]): row[3] for row in cells}


def test_from_the_runs_page_a_click_opens_the_run_and_its_stage_table(
    stored: Stored, page: Any, artifacts: Path
) -> None:
    """Scenario 1 by clicks: the runs page, then the run, whose stage table marks the stuck and the
    failing stage; then a failed showtime's page."""
    with running(stored.url) as served:
        page.goto(served.base + "/")
        assert page.title() == "Runs · jobtrace"
        screenshot(page, artifacts, "runs")
        page.click(f"a[href='/runs/{stored.run.root}']")
        page.wait_for_selector("table.stages")
        assert page.url == f"{served.base}/runs/{stored.run.root}"
        rows = stage_rows(page)
        assert rows[("SyncJob", "succeeded")] == "1"
        flags = page.eval_on_selector_all(
            "table.stages tbody tr",
            "rows => rows.map(r => [r.cells[1].textContent, r.cells[2].textContent,"
            " r.cells[4].textContent.trim()])",
        )
        assert ["MovieDetailJob", "queued", "⚠ stuck"] in flags
        assert ["ShowtimeProcessJob", "discarded", "✗ failing"] in flags
        screenshot(page, artifacts, "run")
        page.click("table.failures a[href^='/jobs/showtime']")
        page.wait_for_selector("h2:text('Cause')")
        assert "discarded" in page.inner_text("h1")
        screenshot(page, artifacts, "failed-job")


def live_run(url: str) -> tuple[str, list[str]]:
    """A run started seconds ago: a root and some children running, heartbeating now."""
    engine = create_schema(url)
    builder = TreeBuilder(start=datetime.now(timezone.utc) - timedelta(seconds=20))
    root = builder.job("ImportJob", state="running", started=1, heartbeat=19)
    children = [
        builder.job("RowJob", root, state="running", enqueued=2, started=3, heartbeat=19)
        for _ in range(random.Random(5).randint(3, 6))
    ]
    builder.insert(engine)
    engine.dispose()
    return root, children


def finish(url: str, job_id: str) -> None:
    """Another process records that a job succeeded."""
    engine = create_engine(url)
    with engine.begin() as conn:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        conn.execute(
            update(Job).where(Job.job_id == job_id).values(state="succeeded", finished_at=now)
        )
    engine.dispose()


def test_a_run_in_progress_updates_on_screen_without_a_reload(
    sqlite_url: str, page: Any, artifacts: Path
) -> None:
    """While the run goes on the stage table and "as of" change by themselves; paused, they do not;
    the page is never reloaded."""
    root, children = live_run(sqlite_url)
    with running(sqlite_url, poll_seconds=0.3) as served:
        page.goto(f"{served.base}/runs/{root}")
        page.wait_for_selector("#live[data-ready='true']")
        page.evaluate("window.notReloaded = true")
        running_count = str(len(children))
        assert stage_rows(page)[("RowJob", "running")] == running_count
        first_as_of = page.get_attribute("#as-of", "datetime")
        assert "updating every" in page.inner_text("#live-status")

        finish(sqlite_url, children[0])
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('table.stages td'))"
            ".some(td => td.textContent.trim() === 'succeeded')"
        )
        rows = stage_rows(page)
        assert rows[("RowJob", "succeeded")] == "1"
        assert rows[("RowJob", "running")] == str(len(children) - 1)
        assert page.get_attribute("#as-of", "datetime") != first_as_of
        assert page.evaluate("window.notReloaded") is True
        screenshot(page, artifacts, "run-live")

        page.click("#live-toggle")
        assert page.get_attribute("#live-toggle", "aria-pressed") == "true"
        assert "paused" in page.inner_text("#live-status")
        finish(sqlite_url, children[1])
        page.wait_for_timeout(1500)  # five polls' worth: a running page would have redrawn
        assert stage_rows(page)[("RowJob", "succeeded")] == "1"

        page.click("#live-toggle")
        page.wait_for_function(
            "() => Array.from(document.querySelectorAll('table.stages tr'))"
            ".some(tr => tr.cells[2].textContent.trim() === 'succeeded'"
            " && tr.cells[3].textContent.trim() === '2')"
        )
        assert page.evaluate("window.notReloaded") is True


def test_a_job_that_finishes_stops_its_page_polling(sqlite_url: str, page: Any) -> None:
    """When nothing is left to do the page says so and stops asking."""
    _, children = live_run(sqlite_url)
    with running(sqlite_url, poll_seconds=0.3) as served:
        page.goto(f"{served.base}/jobs/{children[0]}")
        page.wait_for_selector("#live[data-ready='true']")
        finish(sqlite_url, children[0])
        page.wait_for_function(
            "() => document.getElementById('live-status').textContent.includes('nothing in progress')"
        )
        assert page.is_hidden("#live-toggle")
        assert "succeeded" in page.inner_text("h1")


@pytest.mark.parametrize("where", ["runs", "run", "job"])
def test_tab_reaches_every_link(stored: Stored, page: Any, where: str, artifacts: Path) -> None:
    """Keyboard users reach every link of a page with Tab alone, in order, and see where they are."""
    paths = {
        "runs": "/",
        "run": f"/runs/{stored.run.root}",
        "job": f"/jobs/{stored.run.pages[0]}",
    }
    with running(stored.url) as served:
        page.goto(served.base + paths[where])
        page.wait_for_selector("#live[data-ready='true']")
        if page.is_visible("#live-toggle"):
            page.click("#live-toggle")  # no redraw while tabbing
            page.keyboard.press("Escape")
            page.evaluate("document.activeElement.blur()")
        # By their attribute: an SVG link's href property is an object, not the URL.
        links = page.eval_on_selector_all(
            "a[href]",
            "links => links.map(a => new URL(a.getAttribute('href'), document.baseURI).href)",
        )
        reached: list[str] = []
        for _ in range(len(links) + 10):
            page.keyboard.press("Tab")
            href = page.evaluate(
                "(e => e && e.getAttribute && e.getAttribute('href')"
                " ? new URL(e.getAttribute('href'), document.baseURI).href : null)"
                "(document.activeElement)"
            )
            if href:
                reached.append(href)
            if set(links) <= set(reached):
                break
        missing = [link for link in links if link not in reached]
        assert not missing, f"{len(missing)} of {len(links)} links not reached: {missing[:5]}"
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        screenshot(page, artifacts, f"keyboard-{where}")


def test_from_the_runs_page_three_clicks_reach_the_stuck_stage_s_jobs(
    stored: Stored, page: Any, artifacts: Path
) -> None:
    """Scenario 1's stuck stage by clicks: the runs page, the run, the ⚠ stuck count of queued
    details; the job list then shows exactly those jobs, on the dead queue, and links on to each."""
    root = stored.run.root
    stuck = sorted(
        (row["enqueued_at"], row["job_id"])
        for row in stored.builder.under(root)
        if row["name"] == "MovieDetailJob" and row["state"] == "queued"
    )
    with running(stored.url) as served:
        page.goto(served.base + "/")
        page.click(f"a[href='/runs/{root}']")
        page.wait_for_selector("table.stages")
        row = page.locator("table.stages tbody tr.stuck", has_text="MovieDetailJob")
        count = row.locator("td").nth(3)
        assert count.inner_text().strip() == str(len(stuck))
        count.locator("a").click()
        page.wait_for_selector("table.jobs")
        assert urlsplit(page.url).path == "/list"
        listed = page.eval_on_selector_all(
            "table.jobs tbody tr",
            "rows => rows.map(r => [r.cells[0].textContent.trim(), r.cells[3].textContent.trim(),"
            " r.cells[4].textContent.trim()])",
        )
        assert listed == [[job_id, "queued", stored.run.stuck_queue] for _, job_id in stuck]
        assert page.inner_text("#list-count") == f"{len(stuck)} jobs"
        screenshot(page, artifacts, "stuck-jobs")
        page.click(f"table.jobs a[href='/jobs/{stuck[0][1]}']")
        page.wait_for_selector("h2:text('Path')")
        assert "queued" in page.inner_text("h1")


def test_from_the_runs_page_a_run_is_compared_with_the_one_before(
    sqlite_url: str, page: Any, artifacts: Path
) -> None:
    """Runs page → tonight's run → "compare with previous": last night's run against tonight's,
    each stage's totals and deltas as ``jobtrace diff`` has them."""
    runs = two_runs(sqlite_url)
    with LineageStore(sqlite_url) as store:
        diff = store.diff(runs.last, runs.this)
    with running(sqlite_url) as served:
        page.goto(served.base + "/")
        page.click(f"a[href='/runs/{runs.this}']")
        page.wait_for_selector("table.stages")
        assert page.get_attribute("#previous-run", "href") == f"/runs/{runs.last}"
        page.click("#compare-previous")
        page.wait_for_selector("table.compare")
        assert page.title() == "Compare runs · jobtrace"
        query = parse_qs(urlsplit(page.url).query)
        assert (query["a"], query["b"]) == ([runs.last], [runs.this])
        cells = page.eval_on_selector_all(
            "table.compare tbody tr",
            "rows => rows.map(r => Array.from(r.cells, c => c.textContent.trim()))",
        )
        shown = {row[1]: (row[2], row[3], row[4]) for row in cells}
        assert shown == {
            stage.name: (f"{stage.a.total:,}", f"{stage.b.total:,}", f"{stage.total_delta:+,}")
            for stage in diff.stages
        }
        screenshot(page, artifacts, "compare")


def test_scenario_2_by_clicks_the_crashed_batches_documents(
    sqlite_url: str, page: Any, artifacts: Path
) -> None:
    """Scenario 2: the runs page, the upload run, its root job's page: the crashed batches with
    their document ids on screen (the shared upload path cut), one more click for the whole args."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder(start=datetime.now(timezone.utc) - timedelta(minutes=30))
    upload_batches(builder, 6, crashed=lambda n: n % 2 == 1, state="running", heartbeat=1790)
    path = UPLOAD_PATH
    builder.insert(engine)
    engine.dispose()
    with running(sqlite_url) as served:
        page.goto(served.base + "/")
        page.click("a[href='/runs/upload-7']")
        page.wait_for_selector("table.stages")
        page.click("a.id[href='/jobs/upload-7']")
        page.wait_for_selector("li.failing")
        crashed = page.inner_text("ul:has(li.failing)")
        for n in (1, 3, 5):
            assert f'"document_ids":[{n}00,{n}01,{n}02,{n}03]' in crashed
        assert path not in crashed
        page.click("li.failing >> nth=0 >> details.args summary")
        assert path in page.inner_text("li.failing >> nth=0")
        screenshot(page, artifacts, "crashed-batches")
