"""The dashboard, served for real on a free port and read with urllib, on stores built row by row."""

from __future__ import annotations

import html
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from sqlalchemy import create_engine, text

from jobtrace.cli import main
from jobtrace.lineage.queries import LineageStore
from jobtrace.web import DEFAULT_TRACE_URL, trace_template
from tests.web.support import (
    HONEYCOMB,
    HOSTILE_ARGS,
    HOSTILE_CHILD,
    HOSTILE_NAME,
    HOSTILE_ROOT,
    HOSTILE_TRACE,
    Dashboard,
    Page,
    Stored,
    build,
    expected_counts,
    running,
    stage_counts,
)

# The pages.


def test_front_page_lists_runs_newest_first_with_their_health(
    stored: Stored, dashboard: Dashboard
) -> None:
    """/ lists every run, newest first, linking to its page, the failing one marked ✗."""
    page = dashboard.get("/")
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    rows = Page.parse(page.body).rows(0)
    assert [row["root"] for row in rows] == [stored.run.root, HOSTILE_ROOT]
    cinema = rows[0]
    assert cinema["health"] == "✗ failing"
    assert cinema["jobs"] == f"{len(stored.builder.under(stored.run.root)):,}"
    assert "discarded" in cinema["states"]
    hrefs = {href for href, _ in Page.parse(page.body).links}
    assert f"/runs/{stored.run.root}" in hrefs
    assert "/api/runs" in hrefs


def test_run_page_counts_every_stage_like_the_builder(stored: Stored, dashboard: Dashboard) -> None:
    """/runs/ROOT has one (depth, job, state, count) row for each state of each stage, exact."""
    page = dashboard.get(f"/runs/{stored.run.root}")
    assert page.status == 200
    assert stage_counts(Page.parse(page.body).rows(0)) == expected_counts(stored, stored.run.root)


def test_run_page_marks_stuck_and_failing_stages(stored: Stored, dashboard: Dashboard) -> None:
    """Queued details on the dead queue get ⚠ stuck, discarded showtimes ✗ failing, others nothing."""
    page = dashboard.get(f"/runs/{stored.run.root}")
    flags = {(row["job"], row["state"]): row["flag"] for row in Page.parse(page.body).rows(0)}
    assert flags[("MovieDetailJob", "queued")] == "⚠ stuck"
    assert flags[("MovieDetailJob", "succeeded")] == ""
    assert flags[("ShowtimeProcessJob", "discarded")] == "✗ failing"
    assert flags[("ShowtimeProcessJob", "succeeded")] == ""
    for quiet in ("PriceJob", "NotifyJob"):
        assert flags[(quiet, "succeeded")] == ""
    assert f"on queue <code>{stored.run.stuck_queue}</code>" in page.body


def test_run_page_groups_failures_by_error_with_samples(
    stored: Stored, dashboard: Dashboard
) -> None:
    """The failures table has one row per (stage, error) with its count and linked sample jobs."""
    page = dashboard.get(f"/runs/{stored.run.root}")
    parsed = Page.parse(page.body)
    (group,) = parsed.rows(1)
    discarded = [
        row for row in stored.builder.under(stored.run.root) if row["state"] == "discarded"
    ]
    assert group["job"] == "ShowtimeProcessJob ✗"
    assert group["error"] == stored.run.failing_error
    assert group["jobs"] == str(len(discarded))
    samples = [href for href, _ in parsed.links if href.startswith("/jobs/showtime")]
    assert samples
    assert {s.removeprefix("/jobs/") for s in samples} <= {row["job_id"] for row in discarded}
    assert '{"movie_id":"m-0000","showtime":0}' in html.unescape(group["e.g."])


def test_job_page_shows_fields_path_children_and_attempts(
    stored: Stored, dashboard: Dashboard
) -> None:
    """/jobs/ID shows the job's fields, its path from the root, its children's progress, attempts."""
    builder = stored.builder
    page_id = stored.run.pages[0]  # always ran: a stuck detail and a discarded showtime
    page = dashboard.get(f"/jobs/{page_id}")
    assert page.status == 200
    parsed = Page.parse(page.body)
    children = [row for row in builder.jobs.values() if row["parent_job_id"] == page_id]
    done = sum(row["state"] in ("succeeded", "discarded") for row in children)
    assert f"{done}/{len(children)} children done" in page.body
    path = [href for href, _ in parsed.links if href.startswith("/jobs/")]
    assert f"/jobs/{stored.run.root}" in path
    fields = {row["field"]: row["value"] for row in parsed.rows(-1)}
    assert fields["job_id"] == page_id
    assert fields["root_job_id"] == stored.run.root
    assert fields["args"] == '{"movie_id":"m-0000"}'
    assert "No attempt history recorded." in page.body
    failed = dashboard.get(f"/jobs/{quote(HOSTILE_CHILD, safe='')}")
    attempts = Page.parse(failed.body).rows(0)
    assert [(a["#"], a["state"], a["error"]) for a in attempts] == [
        ("1", "retrying", "TimeoutError"),
        ("2", "failed", "ValueError"),
    ]
    assert attempts[1]["host"] == "worker-2 pid 42"


def test_trace_links_follow_the_template(stored: Stored, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trace links put the (percent-encoded) trace id into a Honeycomb or a Jaeger template."""
    trace_id = stored.builder.jobs[stored.run.root]["trace_id"]
    with running(stored.url, trace_url=HONEYCOMB) as served:
        links = [href for href, _ in Page.parse(served.get(f"/runs/{stored.run.root}").body).links]
        hostile = Page.parse(served.get(f"/jobs/{quote(HOSTILE_CHILD, safe='')}").body).links
        document = served.get(f"/api/runs/{stored.run.root}").json()
    assert HONEYCOMB.replace("{trace_id}", trace_id) in links
    assert document["trace_url"] == HONEYCOMB.replace("{trace_id}", trace_id)
    assert HONEYCOMB.replace("{trace_id}", quote(HOSTILE_TRACE, safe="")) in [
        href for href, _ in hostile
    ]
    monkeypatch.setenv("JOBTRACE_TRACE_URL", "http://traces.example/t/{trace_id}")
    with running(stored.url) as served:
        assert f'href="http://traces.example/t/{trace_id}"' in served.get("/").body
    monkeypatch.delenv("JOBTRACE_TRACE_URL")
    with running(stored.url) as served:
        assert f"http://localhost:16686/trace/{trace_id}" in served.get("/").body


def test_hostile_ids_names_and_args_are_escaped(dashboard: Dashboard) -> None:
    """Ids, names, args, errors and trace ids full of markup and unicode come out as text."""
    root_path = f"/runs/{quote(HOSTILE_ROOT, safe='')}"
    child_path = f"/jobs/{quote(HOSTILE_CHILD, safe='')}"
    for path in ("/", root_path, child_path):
        page = dashboard.get(path)
        assert page.status == 200, path
        body = page.body.lower()
        assert body.count("<script") == 1, path  # the dashboard's own, below
        assert '<script src="/static/live.js" defer></script>' in body, path
        assert "<img" not in body, path
        assert "<b onmouseover" not in body, path
        assert HOSTILE_NAME in html.unescape(page.body), path
        hrefs = [href for href, _ in Page.parse(page.body).links]
        assert f"/jobs/{quote(HOSTILE_CHILD, safe='')}" in hrefs or path == "/"
    child = dashboard.get(child_path)
    assert HOSTILE_CHILD in html.unescape(child.body)
    assert json.dumps(HOSTILE_ARGS, separators=(",", ":")) in html.unescape(child.body)
    document = dashboard.get(f"/api{child_path}").json()
    assert document["job"]["job_id"] == HOSTILE_CHILD
    assert json.loads(document["job"]["args"]) == HOSTILE_ARGS
    assert [row["job_id"] for row in document["path"]] == [HOSTILE_ROOT, HOSTILE_CHILD]
    runs = Page.parse(dashboard.get("/").body).links
    assert any(unquote(href) == f"/runs/{HOSTILE_ROOT}" for href, _ in runs)


def test_raw_utf8_paths_are_read_as_utf8(stored: Stored, dashboard: Dashboard) -> None:
    """An id sent as raw UTF-8 bytes (not percent-encoded) is found; bytes that are not UTF-8 are a 400."""
    host, port = dashboard.base.removeprefix("http://").rsplit(":", 1)

    def status_line(target: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(b"GET " + target + b" HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        return answer.split(b"\r\n", 1)[0]

    raw = "".join(c if ord(c) > 127 else quote(c, safe="") for c in HOSTILE_ROOT).encode()
    assert "☃".encode() in raw
    assert status_line(b"/runs/" + raw) == b"HTTP/1.0 200 OK"
    assert status_line(b"/jobs/\xff\xfe") == b"HTTP/1.0 400 Bad Request"


def test_unknown_ids_and_pages_are_404s(dashboard: Dashboard) -> None:
    """An id the store never saw is a 404 page (or JSON error), and so is an unknown path."""
    for path in ("/runs/no-such-job", "/jobs/no-such-job", "/runs/a/b", "/nowhere"):
        page = dashboard.get(path)
        assert page.status == 404, path
        assert page.headers["content-type"].startswith("text/html"), path
        assert "Traceback" not in page.body
    missing = html.unescape(dashboard.get("/jobs/no-such-job").body)
    assert "No job 'no-such-job' in the lineage store." in missing
    for path in ("/api/runs/no-such-job", "/api/jobs/no-such-job"):
        answer = dashboard.get(path)
        assert answer.status == 404
        assert answer.json() == {
            "error": "No job 'no-such-job' in the lineage store.",
            "status": 404,
        }


@pytest.mark.parametrize(
    "path",
    [
        "/?limit=abc",
        "/?limit=0",
        "/api/runs?limit=1e9",
        "/runs/ROOT?fail_ratio=2",
        "/runs/ROOT?stuck_after=nan",
        "/runs/ROOT?min_failures=-1",
        "/jobs/%ff",
        "/jobs/a%00b",
        f"/jobs/{'x' * 256}",
        "/jobs?id=",
        "/?name=%ff",
    ],
)
def test_bad_input_is_a_400_without_traceback(
    stored: Stored, dashboard: Dashboard, path: str
) -> None:
    """Malformed parameters and ids are a 400 with a sentence, in JSON under /api."""
    answer = dashboard.get(path.replace("ROOT", stored.run.root))
    assert answer.status == 400
    assert "Traceback" not in answer.body
    if path.startswith("/api/"):
        assert answer.json()["status"] == 400


def test_thresholds_come_from_the_query(stored: Stored, dashboard: Dashboard) -> None:
    """?stuck_after= and ?fail_ratio= change which stages are marked, like tree's options."""
    root = stored.run.root
    relaxed = dashboard.get(f"/runs/{root}?stuck_after=1e8&fail_ratio=1").body
    flags = {row["flag"] for row in Page.parse(relaxed).rows(0)}
    assert flags == {""}


def test_a_job_inside_a_run_leads_to_its_run(stored: Stored, dashboard: Dashboard) -> None:
    """/runs/ID of a job that is not a root redirects to its run's page, keeping the query."""
    answer = dashboard.get(f"/runs/{stored.run.pages[0]}?fail_ratio=0.5")
    assert answer.status == 200
    assert answer.url.endswith(f"/runs/{stored.run.root}?fail_ratio=0.5")
    lookup = dashboard.get(f"/jobs?id=+{quote(stored.run.pages[1])}+")
    assert lookup.url.endswith(f"/jobs/{stored.run.pages[1]}")


def test_json_twins_match_the_store(stored: Stored, dashboard: Dashboard) -> None:
    """/api/runs, /api/runs/ROOT and /api/jobs/ID carry the same numbers as the pages."""
    runs = dashboard.get("/api/runs").json()
    assert [run["root"]["job_id"] for run in runs["runs"]] == [stored.run.root, HOSTILE_ROOT]
    assert runs["runs"][0]["health"] == "failing"
    run = dashboard.get(f"/api/runs/{stored.run.root}").json()
    counts = {(s["depth"], s["name"], s["state"]): s["count"] for s in run["stages"]}
    assert counts == expected_counts(stored, stored.run.root)
    assert run["total"] == len(stored.builder.under(stored.run.root))
    flags = {(s["name"], s["state"]): s["flag"] for s in run["stages"]}
    assert flags[("MovieDetailJob", "queued")] == "stuck"
    assert flags[("ShowtimeProcessJob", "discarded")] == "failing"
    assert run["overview"]["failures"][0]["error"] == stored.run.failing_error
    job = dashboard.get(f"/api/jobs/{stored.run.root}").json()
    assert job["progress"]["total"] == len(stored.run.pages)
    assert job["path"][0]["job_id"] == stored.run.root
    assert job["trace_url"] == DEFAULT_TRACE_URL.replace(
        "{trace_id}", stored.builder.jobs[stored.run.root]["trace_id"]
    )


def test_only_get_and_head_are_served(dashboard: Dashboard) -> None:
    """HEAD answers headers without a body; POST is a 405 that says which methods work."""
    head = dashboard.get("/", method="HEAD")
    assert head.status == 200
    assert head.body == ""
    assert int(head.headers["content-length"]) > 0
    post = dashboard.get("/api/runs", method="POST")
    assert post.status == 405
    assert post.headers["allow"] == "GET, HEAD"
    assert post.json()["status"] == 405


def test_pages_forbid_scripts(dashboard: Dashboard) -> None:
    """Every answer carries a policy with no script source and nosniff, as a second wall."""
    for path in ("/", "/nowhere", "/api/runs"):
        headers = dashboard.get(path).headers
        assert headers["content-security-policy"].startswith("default-src 'none'")
        assert headers["x-content-type-options"] == "nosniff"


def test_a_store_without_the_schema_is_a_503_not_a_traceback(tmp_path: Path) -> None:
    """A database without jobtrace tables answers 503 with the fix, never the SQL or a traceback."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE unrelated (id INTEGER)"))
    engine.dispose()
    with running(url) as served:
        page = served.get("/")
        answer = served.get("/api/jobs/x")
    assert page.status == 503
    assert "jobtrace db upgrade" in page.body
    assert "Traceback" not in page.body
    assert "SELECT" not in page.body
    assert answer.status == 503
    assert "jobtrace db upgrade" in answer.json()["error"]


def test_a_bug_is_a_500_without_traceback(
    stored: Stored, dashboard: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception while rendering is a 500 saying to look at the log."""

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(LineageStore, "run_report", broken)
    page = dashboard.get(f"/runs/{stored.run.root}")
    assert page.status == 500
    assert "secret internals" not in page.body
    assert "Traceback" not in page.body
    assert "log" in page.body


# The command and the options.


def test_trace_template_comes_from_option_environment_or_jaeger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--trace-url beats JOBTRACE_TRACE_URL, which beats Jaeger; a bad template is refused."""
    assert trace_template(None) == DEFAULT_TRACE_URL
    monkeypatch.setenv("JOBTRACE_TRACE_URL", HONEYCOMB)
    assert trace_template(None) == HONEYCOMB
    assert trace_template("/jaeger/trace/{trace_id}") == "/jaeger/trace/{trace_id}"
    for bad in ("http://localhost:16686/trace/", "javascript:alert('{trace_id}')"):
        with pytest.raises(ValueError, match="trace URL template"):
            trace_template(bad)


def test_web_refuses_a_bad_template_or_a_missing_store(
    capsys: pytest.CaptureFixture[str], stored: Stored, tmp_path: Path
) -> None:
    """jobtrace web exits 1 with one line for a bad template, no SQLite file, or a taken port."""
    code = main(["--database-url", stored.url, "web", "--port", "0", "--trace-url", "http://x/"])
    err = capsys.readouterr().err
    assert code == 1
    assert "{trace_id}" in err
    assert len(err.strip().splitlines()) == 1
    missing = tmp_path / "typo.db"
    assert main(["--database-url", f"sqlite:///{missing}", "web", "--port", "0"]) == 1
    assert "no lineage store at" in capsys.readouterr().err
    assert not missing.exists()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["--database-url", stored.url, "web", "--port", port]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_jobtrace_web_serves_until_interrupted(stored: Stored) -> None:
    """`python -m jobtrace web --port 0` says where it listens, serves, and stops on Ctrl-C."""
    command = [sys.executable, "-m", "jobtrace", "--database-url", stored.url, "web"]
    command += ["--port", "0", "--trace-url", HONEYCOMB]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            assert line.startswith("jobtrace dashboard on http://127.0.0.1:"), line
            base = line.split()[3].rstrip("/")
            page = Dashboard(base).get(f"/runs/{stored.run.root}")
            assert page.status == 200
            trace_id = stored.builder.jobs[stored.run.root]["trace_id"]
            assert HONEYCOMB.replace("{trace_id}", trace_id) in html.unescape(page.body)
        finally:
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "Traceback" not in err


@pytest.mark.postgres
def test_run_page_on_postgresql(postgres_url: str) -> None:
    """On PostgreSQL the run page counts the same stages and the hostile ids still round-trip."""
    stored = build(postgres_url)
    with running(postgres_url) as served:
        page = served.get(f"/runs/{stored.run.root}")
        child = served.get(f"/api/jobs/{quote(HOSTILE_CHILD, safe='')}")
    assert stage_counts(Page.parse(page.body).rows(0)) == expected_counts(stored, stored.run.root)
    assert child.json()["job"]["job_id"] == HOSTILE_CHILD


def test_crashed_batches_show_their_document_ids_and_the_whole_args_one_click_away(
    sqlite_url: str,
) -> None:
    """Scenario 2 on the parent's page: args cut where the batches differ, as the CLI cuts them."""
    from tests.lineage.builders import UPLOAD_PATH, TreeBuilder, create_schema, upload_batches

    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    upload_batches(builder)
    path = UPLOAD_PATH
    builder.insert(engine)
    engine.dispose()
    with running(sqlite_url) as dashboard:
        body = html.unescape(dashboard.get("/jobs/upload-7").body)
        listed = html.unescape(dashboard.get("/list?parent=upload-7").body)
    for page in (body, listed):
        for n in range(3):
            ids = ",".join(str(n * 100 + i) for i in range(4))
            assert f'<summary><code>{{"upload":"s…"document_ids":[{ids}]}}</code></summary>' in page
            assert f'"document_ids":[{ids}]}}</code></details>' in page
        assert path in page  # the whole args, inside <details>


def test_runs_page_counts_jobs_not_due_yet_as_scheduled(sqlite_url: str) -> None:
    """The runs page (and /api/runs) says ``scheduled`` for queued jobs due later, as the run
    page's stage table does, not ``queued``."""
    from datetime import datetime, timedelta, timezone

    from tests.lineage.builders import TreeBuilder, create_schema

    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    root = builder.job("SyncJob", state="succeeded", enqueued=0, started=1, finished=2)
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    for _ in range(2):
        builder.job("MoviePageJob", root, state="queued", enqueued=2, due_at=later)
    builder.insert(engine)
    engine.dispose()
    with running(sqlite_url) as dashboard:
        (run,) = dashboard.get("/api/runs").json()["runs"]
        page = html.unescape(dashboard.get("/").body)
    assert run["states"] == {"scheduled": 2, "succeeded": 1}
    assert (run["scheduled"], run["active"], run["health"]) == (2, 0, "running")
    assert "scheduled" in page
    assert "queued" not in page
