"""``jobtrace prune``: per-rule summaries, a dry run, progress on a terminal, one-line errors."""

from __future__ import annotations

import io
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from jobtrace.cli import main
from jobtrace.lineage.store import create_store_engine
from tests.lineage.builders import TreeBuilder
from tests.lineage.test_prune import run, store, stored


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def aged(store_url: str) -> tuple[str, dict[str, list[str]]]:
    """A store with runs of several ages and outcomes, 100 days of the real clock back."""
    builder = TreeBuilder(start=datetime.now(timezone.utc) - timedelta(days=100))
    runs = {
        "old": run(builder, 10),
        "recent": run(builder, 2),
        "failing": run(builder, 20, states=("failed", "succeeded", "succeeded")),
        "old_failing": run(builder, 40, states=("crashed", "succeeded", "succeeded")),
        "report": run(builder, 10, name="ReportJob"),
    }
    store(store_url, builder)
    return store_url, runs


def test_prune_prints_what_each_rule_deleted(
    capsys: pytest.CaptureFixture[str], aged: tuple[str, dict[str, list[str]]]
) -> None:
    """The summary line, one line per rule (name overrides included), and the store pruned."""
    url, runs = aged
    code, out, err = run_cli(
        capsys,
        "--database-url",
        url,
        "prune",
        "--keep",
        "7d",
        "--keep-failing",
        "30d",
        "--keep-for",
        "ReportJob=30d",
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "pruned 2 runs (8 jobs, 8 attempts)",
        "  clean runs idle for 7d: 1 runs (4 jobs, 4 attempts)",
        "  failing runs idle for 30d: 1 runs (4 jobs, 4 attempts)",
        "  clean runs of ReportJob idle for 30d: 0 runs (0 jobs, 0 attempts)",
        "  failing runs of ReportJob idle for 30d: 0 runs (0 jobs, 0 attempts)",
    ]
    assert set(stored(url)[0]) == {*runs["recent"], *runs["failing"], *runs["report"]}


def test_a_dry_run_deletes_nothing_and_says_would(
    capsys: pytest.CaptureFixture[str], aged: tuple[str, dict[str, list[str]]]
) -> None:
    """--dry-run counts per rule and leaves every row; --json says the same for a script."""
    url, _ = aged
    before = stored(url)
    code, out, _ = run_cli(capsys, "--database-url", url, "prune", "--keep", "7d", "--dry-run")
    assert code == 0
    assert out.splitlines()[0] == "would prune 4 runs (16 jobs, 16 attempts)"
    code, out, _ = run_cli(
        capsys, "--database-url", url, "prune", "--keep", "7d", "--dry-run", "--json"
    )
    assert code == 0
    report = json.loads(out)
    assert (report["dry_run"], report["runs"], report["jobs"]) == (True, 4, 16)
    assert report["rules"][0] == {
        "name": None,
        "outcome": "clean",
        "keep": "7d",
        "keep_seconds": 604_800.0,
        "runs": 2,
        "jobs": 8,
        "attempts": 8,
    }
    assert stored(url) == before


def test_prune_shows_progress_on_a_terminal(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    aged: tuple[str, dict[str, list[str]]],
) -> None:
    """With stderr on a terminal, prune reports runs deleted so far; piped it stays quiet."""
    url, _ = aged
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    code = main(["--database-url", url, "prune", "--keep", "7d", "--batch-size", "1"])
    assert code == 0
    assert "\rpruning: 1 runs, 4 jobs, 4 attempts" in terminal.getvalue()
    assert terminal.getvalue().endswith("pruning: 4 runs, 16 jobs, 16 attempts\n")
    capsys.readouterr()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--keep", "7x"], "--keep: not a duration"),
        (["--keep", "7"], "--keep: not a duration"),
        (["--keep=-3d"], "--keep: not a duration"),
        (["--keep", "0d"], "--keep: a duration must be more than 0"),
        (["--keep", "7d", "--keep-failing", "0s"], "--keep-failing: a duration must be more"),
        (["--keep", "7d", "--keep-for", "ReportJob"], "--keep-for: expected NAME=AGE"),
        (["--keep", "7d", "--keep-failing-for", "R=soon"], "--keep-failing-for: not a duration"),
        (["--keep", "7d", "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["--keep", "7d", "--pause", "-1"], "--pause: must be 0 or more"),
        (["--keep", "7d", "--pause", "nan"], "--pause: must be 0 or more"),
        ([], "--keep AGE is required"),
    ],
)
def test_bad_input_is_one_line_and_deletes_nothing(
    capsys: pytest.CaptureFixture[str],
    aged: tuple[str, dict[str, list[str]]],
    options: list[str],
    message: str,
) -> None:
    """Nonsense, negative or zero ages and bad batch options: one line, exit 2, the store untouched."""
    url, _ = aged
    before = stored(url)
    code, out, err = run_cli(capsys, "--database-url", url, "prune", *options)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"jobtrace prune: {message}")
    assert stored(url) == before


def test_an_unreachable_store_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A PostgreSQL server that refuses connections: one line naming it, exit status 1."""
    url = "postgresql+psycopg://postgres@127.0.0.1:1/jobtrace"
    code, _, err = run_cli(capsys, "--database-url", url, "prune", "--keep", "7d")
    assert code == 1
    assert "127.0.0.1:1/jobtrace" in err
    assert "refused" in err.lower()
    assert len(err.strip().splitlines()) == 1


def test_a_missing_sqlite_file_is_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Pruning a SQLite store that is not there fails in one line without creating the file."""
    path = tmp_path / "typo.db"
    code, _, err = run_cli(capsys, "--database-url", f"sqlite:///{path}", "prune", "--keep", "7d")
    assert code == 1
    assert "no lineage store at" in err
    assert not path.exists()


def test_an_older_schema_asks_for_an_upgrade(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """A store at revision 0004 (without the index prune walks) points at `jobtrace db upgrade`."""
    config = Config()
    config.set_main_option("script_location", "jobtrace.lineage:migrations")
    engine = create_store_engine(sqlite_url)
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "0004")
    finally:
        engine.dispose()
    code, _, err = run_cli(capsys, "--database-url", sqlite_url, "prune", "--keep", "7d")
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "run `jobtrace db upgrade`" in err
