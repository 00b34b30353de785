"""The ``jobtrace`` command line, called through ``main([...])`` on stores built row by row."""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import jobtrace.demo
from jobtrace.cli import main
from jobtrace.lineage.queries import LineageStore
from tests.lineage.builders import (
    UPLOAD_PATH,
    CinemaRun,
    TreeBuilder,
    cinema_run,
    create_schema,
    upload_batches,
)


@pytest.fixture
def cinema(store_url: str) -> tuple[str, TreeBuilder, CinemaRun]:
    """A stored cinema run (plus an older one) on each backend, and what it holds."""
    engine = create_schema(store_url)
    builder = TreeBuilder()
    cinema_run(builder, random.Random(8), start=-86400)
    run = cinema_run(builder, random.Random(9))
    builder.insert(engine)
    engine.dispose()
    return store_url, builder, run


@pytest.fixture
def sqlite_cinema(sqlite_url: str) -> tuple[str, TreeBuilder, CinemaRun]:
    """The same on SQLite only, for behaviour that does not depend on the backend."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    run = cinema_run(builder, random.Random(10))
    builder.insert(engine)
    engine.dispose()
    return sqlite_url, builder, run


class FakeTerminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stage_line(out: str, name: str) -> str:
    """The tree line that heads stage ``name``."""
    return next(line for line in out.splitlines() if f"── {name} " in line)


def test_tree_marks_the_stuck_and_the_failing_stage(
    capsys: pytest.CaptureFixture[str], cinema: tuple[str, TreeBuilder, CinemaRun]
) -> None:
    """tree puts ⚠ on the stage waiting on a dead queue and ✗ on the stage with discards only."""
    url, builder, run = cinema
    code, out, _ = run_cli(capsys, "--database-url", url, "tree", run.root)
    assert code == 0
    assert out.splitlines()[0].startswith(f"SyncJob {run.root} succeeded")
    assert builder.jobs[run.root]["trace_id"] in out.splitlines()[0]
    detail = stage_line(out, "MovieDetailJob")
    assert "⚠" in detail
    assert "✗" not in detail
    showtime = stage_line(out, "ShowtimeProcessJob")
    assert "✗" in showtime
    assert "⚠" not in showtime
    for quiet in ("PriceJob", "NotifyJob"):
        assert "⚠" not in stage_line(out, quiet)
        assert "✗" not in stage_line(out, quiet)
    assert f"on queue {run.stuck_queue}" in out
    discarded = sum(row["state"] == "discarded" for row in builder.under(run.root))
    assert f"✗ {discarded} {run.failing_error}" in out
    assert "\x1b[" not in out, "no colour when piped"


def test_tree_waits_for_the_stuck_threshold(
    capsys: pytest.CaptureFixture[str], sqlite_cinema: tuple[str, TreeBuilder, CinemaRun]
) -> None:
    """With a threshold longer than the run's age nothing is marked stuck."""
    url, _, run = sqlite_cinema
    code, out, _ = run_cli(
        capsys, "--database-url", url, "tree", run.root, "--stuck-after", str(100 * 365 * 86400)
    )
    assert code == 0
    assert "⚠" not in out
    assert "✗" in out


def test_stats_prints_the_stage_table_tab_separated_when_piped(
    capsys: pytest.CaptureFixture[str], cinema: tuple[str, TreeBuilder, CinemaRun]
) -> None:
    """stats prints one tab-separated row per (depth, job, state) with its flag."""
    url, builder, run = cinema
    code, out, _ = run_cli(capsys, "stats", run.pages[0], "--database-url", url)
    assert code == 0
    rows = list(csv.reader(io.StringIO(out), delimiter="\t"))
    assert rows[0] == ["depth", "job", "state", "count", "flag"]
    got = {(int(r[0]), r[1], r[2]): int(r[3]) for r in rows[1:]}
    assert got == dict(builder.counts(builder.under(run.root)))
    flags = {(r[1], r[2]): r[4] for r in rows[1:]}
    assert flags[("MovieDetailJob", "queued")] == "⚠ stuck"
    assert flags[("ShowtimeProcessJob", "discarded")] == "✗ failing"
    assert flags[("ShowtimeProcessJob", "succeeded")] == ""


@pytest.mark.parametrize(
    "command",
    [
        ["runs"],
        ["tree", "{root}"],
        ["stats", "{root}"],
        ["children", "{page}"],
        ["ancestors", "{page}"],
        ["why", "{page}"],
        ["diff", "{root}", "{page}"],
    ],
)
def test_every_read_command_prints_json_on_request(
    capsys: pytest.CaptureFixture[str],
    cinema: tuple[str, TreeBuilder, CinemaRun],
    command: list[str],
) -> None:
    """--json makes each read command print one JSON document and nothing else."""
    url, _, run = cinema
    argv = [arg.format(root=run.root, page=run.pages[0]) for arg in command]
    code, out, _ = run_cli(capsys, "--database-url", url, *argv, "--json")
    assert code == 0
    document = json.loads(out)
    assert run.root in json.dumps(document)


def test_children_json_counts_progress_exactly(
    capsys: pytest.CaptureFixture[str], sqlite_cinema: tuple[str, TreeBuilder, CinemaRun]
) -> None:
    """children --json carries done / total and every child of the parent."""
    url, builder, run = sqlite_cinema
    code, out, _ = run_cli(capsys, "--database-url", url, "children", run.root, "--json")
    assert code == 0
    document = json.loads(out)
    pages = [row for row in builder.jobs.values() if row["parent_job_id"] == run.root]
    done = sum(row["state"] == "succeeded" for row in pages)
    assert document["progress"]["total"] == len(pages)
    assert document["progress"]["done"] == done
    assert document["progress"]["fraction"] == done / len(pages)
    assert {c["job_id"] for c in document["children"]} == {row["job_id"] for row in pages}


def test_children_names_the_documents_of_a_crashed_batch(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """Scenario 2: children shows done / total and the crashed batch with its documents."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    upload = builder.job("UploadJob", state="running", heartbeat=50)
    batches = random.Random(2).randint(3, 8)
    for number in range(batches):
        builder.job("BatchJob", upload, args={"documents": [{"source": "PMC", "id": number}]})
    builder.job(
        "BatchJob",
        upload,
        state="crashed",
        args={"documents": [{"source": "PMC", "id": "4402192"}]},
        reason="no heartbeat for 60s",
    )
    builder.insert(engine)
    engine.dispose()
    code, out, _ = run_cli(capsys, "--database-url", sqlite_url, "children", upload, "--limit", "2")
    assert code == 0
    assert f"{batches + 1}/{batches + 1} children done (100.0%)" in out.splitlines()[0]
    crashed = next(line for line in out.splitlines() if "✗ crashed" in line)
    assert '"4402192"' in crashed
    assert "no heartbeat" in crashed
    assert f"… {batches - 1} more (--limit)" in out


def test_unknown_id_exits_1_with_a_message(
    capsys: pytest.CaptureFixture[str], sqlite_cinema: tuple[str, TreeBuilder, CinemaRun]
) -> None:
    """An id the store never saw is one line on stderr and exit status 1, for every command."""
    url = sqlite_cinema[0]
    for command in (["tree"], ["stats"], ["children"], ["why"], ["export"], ["diff", "x"]):
        code, out, err = run_cli(capsys, "--database-url", url, *command, "no-such-job")
        assert code == 1, command
        assert "no job 'no-such-job'" in err or "no job 'x'" in err
        assert len(err.strip().splitlines()) == 1
        assert "Traceback" not in err
        assert out == ""


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "bad database URL"),
        ("nosuchdialect://host/db", "bad database URL"),
    ],
)
def test_bad_url_exits_1_with_a_message(
    capsys: pytest.CaptureFixture[str], url: str, message: str
) -> None:
    """A URL SQLAlchemy cannot use is a one-line error, not a traceback."""
    code, _, err = run_cli(capsys, "--database-url", url, "runs")
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_unreachable_postgres_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A PostgreSQL server that refuses connections is reported as such, exit status 1."""
    url = "postgresql+psycopg://postgres@127.0.0.1:1/jobtrace"
    code, _, err = run_cli(capsys, "--database-url", url, "tree", "some-job")
    assert code == 1
    assert "127.0.0.1:1/jobtrace" in err
    assert "refused" in err.lower()
    assert len(err.strip().splitlines()) == 1


def test_a_missing_sqlite_file_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Reading a SQLite store that does not exist fails without creating an empty file."""
    path = tmp_path / "typo.db"
    code, _, err = run_cli(capsys, "--database-url", f"sqlite:///{path}", "runs")
    assert code == 1
    assert "no lineage store at" in err
    assert not path.exists()


def test_a_database_without_the_schema_asks_for_an_upgrade(
    capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    """A reachable database with no jobtrace tables points at `jobtrace db upgrade`."""
    code, _, err = run_cli(capsys, "--database-url", postgres_url, "runs")
    assert code == 1
    assert "jobtrace db upgrade" in err


def test_db_upgrade_then_runs_on_a_fresh_store(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """db upgrade creates the schema, after which runs answers that nothing is recorded."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    code, out, _ = run_cli(capsys, "db", "upgrade", "--database-url", url)
    assert code == 0
    assert "latest schema" in out
    code, out, _ = run_cli(capsys, "--database-url", url, "runs")
    assert (code, out) == (0, "no runs recorded\n")


def test_runs_json_counts_jobs_not_due_yet_as_scheduled(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """runs --json says ``scheduled`` for queued jobs due later, as tree does, with its own key."""
    url = f"sqlite:///{tmp_path / 'later.db'}"
    engine = create_schema(url)
    builder = TreeBuilder()
    root = builder.job("SyncJob", state="succeeded", enqueued=0, started=1, finished=2)
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    builder.job("MoviePageJob", root, state="queued", enqueued=2, due_at=later)
    builder.insert(engine)
    engine.dispose()
    code, out, _ = run_cli(capsys, "--database-url", url, "runs", "--json")
    (run,) = json.loads(out)
    assert code == 0
    assert run["states"] == {"scheduled": 1, "succeeded": 1}
    assert (run["scheduled"], run["active"], run["health"]) == (1, 0, "running")


def test_runs_lists_runs_newest_first(
    capsys: pytest.CaptureFixture[str], cinema: tuple[str, TreeBuilder, CinemaRun]
) -> None:
    """runs lists each root once, the latest first, with its job count and health."""
    url, builder, run = cinema
    code, out, _ = run_cli(capsys, "--database-url", url, "runs", "--limit", "5")
    assert code == 0
    rows = list(csv.reader(io.StringIO(out), delimiter="\t"))
    assert rows[1][:2] == [run.root, "SyncJob"]
    assert rows[1][3] == str(len(builder.under(run.root)))
    assert rows[1][4] == "failing"
    assert len(rows) == 3


def test_the_database_url_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sqlite_cinema: tuple[str, TreeBuilder, CinemaRun],
) -> None:
    """Without --database-url, JOBTRACE_DATABASE_URL names the store."""
    url, _, run = sqlite_cinema
    monkeypatch.setenv("JOBTRACE_DATABASE_URL", url)
    code, out, _ = run_cli(capsys, "ancestors", run.pages[0])
    assert code == 0
    assert [line.split("\t")[1] for line in out.splitlines()[1:]] == [run.root, run.pages[0]]


def test_export_writes_csv_and_nested_json(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    sqlite_cinema: tuple[str, TreeBuilder, CinemaRun],
) -> None:
    """export -o writes one CSV row per job; --nested JSON holds the whole subtree."""
    url, builder, run = sqlite_cinema
    target = tmp_path / "run.csv"
    code, _, err = run_cli(
        capsys, "--database-url", url, "export", run.root, "--format", "csv", "-o", str(target)
    )
    assert code == 0
    rows = list(csv.DictReader(target.open(encoding="utf-8", newline="")))
    assert len(rows) == len(builder.under(run.root))
    assert f"wrote {len(rows)} jobs" in err
    code, out, _ = run_cli(capsys, "--database-url", url, "export", run.pages[1], "--nested")
    assert code == 0

    def count(node: dict[str, object]) -> int:
        return 1 + sum(count(child) for child in node["children"])  # type: ignore[attr-defined]

    assert count(json.loads(out)) == len(builder.subtree(run.pages[1]))


def test_export_shows_progress_on_a_terminal(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sqlite_cinema: tuple[str, TreeBuilder, CinemaRun],
) -> None:
    """Exporting with stderr on a terminal reports jobs written; piped stderr stays quiet."""
    url, builder, run = sqlite_cinema
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["--database-url", url, "export", run.root]) == 0
    total = len(builder.under(run.root))
    assert f"exporting {total}/{total} jobs" in terminal.getvalue()
    assert len(json.loads(capsys.readouterr().out)["jobs"]) == total


def test_colour_only_on_a_terminal_without_no_color(
    monkeypatch: pytest.MonkeyPatch, sqlite_cinema: tuple[str, TreeBuilder, CinemaRun]
) -> None:
    """ANSI colours and aligned columns on a terminal; NO_COLOR keeps alignment, drops colour."""
    url, _, run = sqlite_cinema
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["--database-url", url, "stats", run.root]) == 0
    assert "\x1b[" in terminal.getvalue()
    assert "\t" not in terminal.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    plain = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", plain)
    assert main(["--database-url", url, "stats", run.root]) == 0
    lines = plain.getvalue().splitlines()
    assert "\x1b[" not in plain.getvalue()
    assert "\t" not in plain.getvalue()
    assert lines[1].index("SyncJob") == lines[0].index("job")
    column = lines[0].index("state")
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines[1:])


def test_demo_hands_its_arguments_to_jobtrace_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """demo passes everything after it, --help included, and the global URL to jobtrace.demo."""
    seen: list[list[str]] = []

    def fake_demo(argv: list[str] | None = None) -> jobtrace.demo.DemoRun:
        seen.append(list(argv or []))
        return jobtrace.demo.DemoRun(7)

    monkeypatch.setattr(jobtrace.demo, "run", fake_demo)
    assert main(["demo", "--pages", "5", "--help"]) == 7
    assert main(["--database-url", "sqlite:///x.db", "demo", "--seed", "1"]) == 7
    assert seen == [["--pages", "5", "--help"], ["--database-url", "sqlite:///x.db", "--seed", "1"]]


def test_reap_marks_a_silent_running_job_crashed(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """reap declares a running job without recent heartbeats crashed and prints its id."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    root = builder.job("UploadJob", state="running", heartbeat=1)
    silent = builder.job("BatchJob", root, state="running", heartbeat=2)
    builder.insert(engine)
    engine.dispose()
    code, out, _ = run_cli(
        capsys, "--database-url", sqlite_url, "reap", "--heartbeat-timeout", "60", "--json"
    )
    assert code == 0
    assert silent in json.loads(out)["crashed"]
    code, out, _ = run_cli(capsys, "--database-url", sqlite_url, "children", root, "--json")
    assert json.loads(out)["progress"]["crashed"] == 1


def test_reap_takes_thresholds_per_job_name(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """--heartbeat-timeout-for NAME=S gives one job name its own, longer timeout."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    root = builder.job("UploadJob", state="running", heartbeat=1)
    report = builder.job("ReportJob", root, state="running", heartbeat=2)
    builder.insert(engine)
    engine.dispose()
    code, out, _ = run_cli(
        capsys,
        "--database-url",
        sqlite_url,
        "reap",
        "--heartbeat-timeout",
        "60",
        "--heartbeat-timeout-for",
        f"ReportJob={100 * 365 * 86400}",
        "--json",
    )
    assert code == 0
    assert json.loads(out)["crashed"] == [root]
    assert report not in out
    assert main(["reap", "--heartbeat-timeout-for", "ReportJob"]) == 2


def test_usage_errors_return_2_without_raising(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing id, an unknown option or no command at all is a usage message and status 2."""
    assert main(["tree"]) == 2
    assert main(["runs", "--bogus"]) == 2
    assert main([]) == 2
    assert "usage: jobtrace" in capsys.readouterr().err


def test_python_dash_m_jobtrace_runs_the_cli(
    sqlite_cinema: tuple[str, TreeBuilder, CinemaRun],
) -> None:
    """`python -m jobtrace` is the jobtrace command."""
    url, _, run = sqlite_cinema
    done = subprocess.run(
        [sys.executable, "-m", "jobtrace", "--database-url", url, "why", run.pages[0]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("path:")


# Deep and cyclic lineage, and jobs never recorded.


@pytest.fixture
def chain_store(store_url: str) -> tuple[str, list[str]]:
    """A stored run that is one line of 10,001 jobs, root first."""
    engine = create_schema(store_url)
    builder = TreeBuilder()
    chain = builder.chain(10_001)
    builder.insert(engine)
    engine.dispose()
    return store_url, chain


def test_tree_and_why_of_a_10001_deep_chain_print_in_lines_of_bounded_width(
    capsys: pytest.CaptureFixture[str], chain_store: tuple[str, list[str]]
) -> None:
    """tree lists every stage of a chain deeper than Python's recursion limit; why keeps its ends."""
    url, chain = chain_store
    code, out, _ = run_cli(capsys, "--database-url", url, "tree", chain[0])
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(chain)
    assert max(len(line) for line in lines) < 300
    assert lines[-1].lstrip().startswith(f"↳ depth {len(chain) - 1:,}  ChainJob  1 job")
    code, out, _ = run_cli(capsys, "--database-url", url, "why", chain[-1])
    assert code == 0
    path = out.split("job:")[0].splitlines()
    assert path[1].strip().startswith(f"ChainJob {chain[0]} ")
    assert f"⋮ {len(chain) - 11:,} more" in out
    assert path[-1].strip() == f"ChainJob {chain[-1]} succeeded  ← this job"
    assert max(len(line) for line in out.splitlines()) < 300


def test_ancestors_says_where_a_cycle_closes_and_where_the_limit_cut(
    capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """A parent cycle ends the path with "cycle at X"; --limit cuts it with "truncated at depth N"."""
    engine = create_schema(store_url)
    builder = TreeBuilder()
    root = builder.job("SyncJob")
    a = builder.job("AJob", root)
    b = builder.job("BJob", a)
    builder.reparent(a, b)
    leaf = builder.job("LeafJob", b)
    builder.insert(engine)
    engine.dispose()
    code, out, _ = run_cli(capsys, "--database-url", url := store_url, "ancestors", leaf)
    assert code == 0
    assert [line.split("\t")[1] for line in out.splitlines()[1:4]] == [a, b, leaf]
    assert out.splitlines()[-1] == f"⚠ cycle at {b}: its parent links lead back to it"
    code, out, _ = run_cli(capsys, "--database-url", url, "ancestors", leaf, "--json")
    document = json.loads(out)
    assert (document["cycle_at"], document["truncated_at"]) == (b, None)
    assert [job["job_id"] for job in document["ancestors"]] == [a, b]
    code, out, _ = run_cli(capsys, "--database-url", url, "ancestors", leaf, "--limit", "1")
    assert [line.split("\t")[1] for line in out.splitlines()[1:3]] == [b, leaf]
    assert f"⚠ truncated at depth {builder.jobs[b]['depth']}: more ancestors above" in out
    code, out, _ = run_cli(capsys, "--database-url", url, "why", leaf, "--json")
    assert json.loads(out)["cycle_at"] == b
    code, out, _ = run_cli(capsys, "--database-url", url, "why", a)
    assert f"⚠ cycle at {a}" in out


@pytest.fixture
def foreign_store(store_url: str) -> str:
    """A run under a root and a parent jobtrace never saw (placeholders), beside a whole run."""
    engine = create_schema(store_url)
    builder = TreeBuilder()
    builder.job("PageJob", builder.job("SyncJob", enqueued=100), enqueued=100)
    builder.placeholder("ext-root", heard=400)
    builder.placeholder("ext-parent", "ext-root", depth=1, heard=400, named_by="chunk-0")
    for number, state in enumerate(["succeeded", "succeeded", "failed"]):
        builder.job("ChunkJob", "ext-parent", state=state, enqueued=400, job_id=f"chunk-{number}")
    builder.job(
        "ChunkJob",
        "ext-parent",
        state="unknown",
        enqueued=400,
        job_id="chunk-lost",
        finished_at=None,
        reason="lost track: records dropped while the store was down",
    )
    builder.insert(engine)
    engine.dispose()
    return store_url


def test_a_run_never_recorded_at_its_root_reads_like_any_other(
    capsys: pytest.CaptureFixture[str], foreign_store: str
) -> None:
    """runs, stats, children, tree, why and export all answer and say what was never recorded."""
    url = foreign_store
    code, out, _ = run_cli(capsys, "--database-url", url, "runs")
    rows = list(csv.reader(io.StringIO(out), delimiter="\t"))
    assert rows[1][:2] == ["ext-root", "? (never recorded)"]
    assert rows[1][3:5] == ["6", "failing"]
    code, out, _ = run_cli(capsys, "--database-url", url, "stats", "chunk-0")
    assert code == 0
    assert "0\t?\tunknown\t1\t" in out
    code, out, _ = run_cli(capsys, "--database-url", url, "children", "ext-parent")
    assert code == 0
    assert out.splitlines()[0].startswith("? ext-parent unknown (never recorded): 3/4 children")
    assert "· 1 unknown" in out.splitlines()[0]
    assert "unknown (lost track)" in out
    code, out, _ = run_cli(capsys, "--database-url", url, "tree", "ext-root")
    assert code == 0
    assert out.startswith("? ext-root unknown (never recorded)  trace -")
    assert stage_line(out, "? (never recorded)").startswith("└── ")
    assert "│   └── ChunkJob  4 jobs" in out or "    └── ChunkJob  4 jobs" in out
    code, out, _ = run_cli(capsys, "--database-url", url, "why", "chunk-0")
    assert code == 0
    assert out.splitlines()[1:4] == [
        "  ? ext-root unknown (never recorded)",
        "    ? ext-parent unknown (never recorded)",
        "      ChunkJob chunk-0 succeeded  ← this job",
    ]
    code, out, _ = run_cli(capsys, "--database-url", url, "why", "ext-parent")
    assert "job: never recorded: named as the parent of chunk-0; never recorded" in out
    code, out, _ = run_cli(capsys, "--database-url", url, "why", "chunk-lost")
    assert "job: unknown on queue default since" in out
    assert "lost track: records dropped" in out
    code, out, _ = run_cli(capsys, "--database-url", url, "export", "ext-root", "--nested")
    assert code == 0
    tree = json.loads(out)
    assert tree["children"] == [], "no record says the parent's parent"
    (parent,) = tree["unattached"]
    assert (parent["job_id"], parent["state"], len(parent["children"])) == (
        "ext-parent",
        "unknown",
        4,
    )


def test_jobs_only_named_by_others_answer_on_a_store_without_placeholders(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """stats and children work for a parent and root that exist only as ids in other rows."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    for number in range(2):
        builder.job(
            "ChunkJob",
            job_id=f"orphan-{number}",
            parent_job_id="ghost-parent",
            root_job_id="ghost-root",
            depth=2,
        )
    builder.insert(engine)
    engine.dispose()
    code, out, err = run_cli(capsys, "--database-url", sqlite_url, "stats", "orphan-0")
    assert (code, err) == (0, "")
    assert "2\tChunkJob\tsucceeded\t2\t" in out
    code, out, err = run_cli(capsys, "--database-url", sqlite_url, "children", "ghost-parent")
    assert (code, err) == (0, "")
    assert out.startswith("? ghost-parent unknown (never recorded): 2/2 children done")


@pytest.mark.parametrize(
    "option",
    [
        ["--heartbeat-timeout", "-5"],
        ["--heartbeat-timeout", "0"],
        ["--heartbeat-timeout", "nan"],
        ["--stalled-after", "-1"],
        ["--missed-heartbeats", "0"],
        ["--heartbeat-timeout-for", "BatchJob=-5"],
    ],
)
def test_reap_refuses_thresholds_that_would_crash_live_jobs(
    capsys: pytest.CaptureFixture[str], sqlite_url: str, option: list[str]
) -> None:
    """A negative, zero or NaN threshold is a one-line usage error, and nothing is reaped."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    alive = builder.job("BatchJob", state="running", heartbeat=1)
    builder.insert(engine)
    engine.dispose()
    code, _, err = run_cli(capsys, "--database-url", sqlite_url, "reap", *option)
    assert code == 2
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("jobtrace reap: error: argument")
    with LineageStore(sqlite_url) as store:
        assert store.job(alive).state == "running"


def test_reap_waits_for_missed_heartbeats_and_says_what_it_lost_track_of(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """--missed-heartbeats is honoured, and jobs whose records were lost are listed apart."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    slow = builder.job("BatchJob", state="running", heartbeat=1, heartbeat_interval=1e9)
    lost = builder.job("BatchJob", state="running", heartbeat=1, lost_at=builder.at(2))
    builder.insert(engine)
    engine.dispose()
    code, out, _ = run_cli(
        capsys, "--database-url", sqlite_url, "reap", "--missed-heartbeats", "2", "--json"
    )
    assert code == 0
    assert json.loads(out) == {"crashed": [], "stalled": [], "lost": [lost]}
    with LineageStore(sqlite_url) as store:
        assert store.job(slow).state == "running"


def test_runs_judges_health_as_the_dashboard_does(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """One failure in 380 is not an outage; a run waiting for days on a dead queue is stuck."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder(start=datetime.now(timezone.utc) - timedelta(days=3))
    busy = builder.job("NightlySync", job_id="busy-run")
    for n in range(379):
        builder.job("PageJob", busy, state="failed" if n == 0 else "succeeded")
    builder.job("PageJob", busy, state="running", started=3 * 86400 - 5, heartbeat=3 * 86400 - 1)
    stuck = builder.job("NightlySync", job_id="stuck-run", enqueued=10)
    builder.job("DetailJob", stuck, state="queued", enqueued=20)
    builder.insert(engine)
    engine.dispose()
    code, out, _ = run_cli(capsys, "--database-url", sqlite_url, "runs")
    assert code == 0
    rows = {row[0]: row for row in csv.reader(io.StringIO(out), delimiter="\t")}
    assert rows["root"][4:6] == ["health", "failed"]
    assert rows["busy-run"][4:6] == ["running", "1 (0.3%)"]
    assert rows["stuck-run"][4:6] == ["stuck", "0"]
    _, out, _ = run_cli(capsys, "--database-url", sqlite_url, "runs", "--json")
    health = {run["root"]["job_id"]: run for run in json.loads(out)}
    assert health["busy-run"]["health"] == "running"
    assert health["busy-run"]["failed_share"] == pytest.approx(1 / 381)
    assert health["stuck-run"]["stuck_stages"] == 1


def test_children_shows_what_tells_crashed_batches_apart(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """Scenario 2: the shared upload path is cut, the document ids are shown; --full has all."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    upload_batches(builder)
    path = UPLOAD_PATH
    builder.insert(engine)
    engine.dispose()
    _, out, _ = run_cli(capsys, "--database-url", sqlite_url, "children", "upload-7")
    assert '"document_ids":[100,101,102,103]' in out
    assert '"document_ids":[200,201,202,203]' in out
    assert path not in out
    _, out, _ = run_cli(capsys, "--database-url", sqlite_url, "children", "upload-7", "--full")
    assert out.count(path) == 6  # the crashed list and the table, three batches each
