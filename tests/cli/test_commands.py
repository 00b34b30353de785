"""The ``jobtrace`` command for on-call use: validated options, one-line errors, id prefixes,
``reap`` rows, output that fits the terminal, and ``--help`` with examples."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import pytest

from jobtrace.cli import main
from jobtrace.cli.commands import STATES, build_parser
from tests.cli.test_cli import FakeTerminal, run_cli
from tests.lineage.builders import TreeBuilder, create_schema

ANSI = re.compile(r"\x1b\[[0-9;]*m")
DOCS = Path(__file__).parents[2] / "docs" / "cli.md"


@pytest.fixture
def small(sqlite_url: str) -> tuple[str, dict[str, str]]:
    """A run whose ids share prefixes: a root, two pages and their children."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    root = builder.job("SyncJob", job_id="3f0c2c9e-root")
    first = builder.job("MoviePageJob", root, job_id="7d1e01aa-page")
    second = builder.job("MoviePageJob", root, job_id="7d1e02bb-page")
    detail = builder.job("MovieDetailJob", first, state="discarded", job_id="a91b-detail")
    builder.job("MovieDetailJob", second, job_id="c0ffee-detail")
    builder.insert(engine)
    engine.dispose()
    return sqlite_url, {"root": root, "first": first, "second": second, "detail": detail}


# Every option validated.


@pytest.mark.parametrize(
    "argv",
    [
        ["children", "{root}", "--state", "bogus"],
        ["children", "{root}", "--limit", "0"],
        ["children", "{root}", "--limit", "-3"],
        ["children", "{root}", "--limit", "9" * 30],
        ["tree", "{root}", "--stuck-after", "-5"],
        ["tree", "{root}", "--stuck-after", "0"],
        ["tree", "{root}", "--stuck-after", "nan"],
        ["tree", "{root}", "--stuck-after", "1e400"],
        ["stats", "{root}", "--stuck-after", "-5"],
        ["tree", "{root}", "--fail-ratio", "2"],
        ["stats", "{root}", "--fail-ratio", "-0.1"],
        ["tree", "{root}", "--fail-ratio", "nan"],
        ["tree", "{root}", "--min-failures", "0"],
        ["tree", "{root}", "--min-failures", "9" * 30],
        ["runs", "--limit", "-1"],
        ["runs", "--limit", "0"],
        ["runs", "--limit", "9" * 30],
        ["ancestors", "{root}", "--limit", "-1"],
        ["ancestors", "{root}", "--limit", "9" * 30],
        ["web", "--port", "99999"],
        ["web", "--port", "-1"],
        ["runs", "--name", "bad\udcffname"],
    ],
)
def test_a_bad_option_is_a_usage_error_in_one_line(
    capsys: pytest.CaptureFixture[str], small: tuple[str, dict[str, str]], argv: list[str]
) -> None:
    """An unknown state, a number out of range or a huge one is refused before any work is done."""
    url, ids = small
    argv = [arg.format(**ids) for arg in argv]
    code, out, err = run_cli(capsys, "--database-url", url, *argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"jobtrace {argv[0]}: error: argument")


def test_the_state_choices_are_the_state_vocabulary(
    capsys: pytest.CaptureFixture[str], small: tuple[str, dict[str, str]]
) -> None:
    """--state takes every stored state and 'scheduled', any case, and its error names them."""
    url, ids = small
    code, out, _ = run_cli(
        capsys, "--database-url", url, "children", ids["first"], "--state", "DISCARDED"
    )
    assert code == 0
    assert ids["detail"] in out
    for state in ("scheduled", "unknown", "crashed", "stalled"):
        code, _, _ = run_cli(
            capsys, "--database-url", url, "children", ids["first"], "--state", state
        )
        assert code == 0, state
    code, _, err = run_cli(capsys, "--database-url", url, "children", ids["first"], "--state", "x")
    assert "scheduled" in err
    assert "discarded" in err


def test_bounds_themselves_are_accepted() -> None:
    """Port 0 and 65535, a ratio of 0 and of 1, a limit of 1 and the largest one parse."""
    parser = build_parser()
    assert parser.parse_args(["web", "--port", "0"]).port == 0
    assert parser.parse_args(["web", "--port", "65535"]).port == 65535
    assert parser.parse_args(["tree", "x", "--fail-ratio", "0"]).fail_ratio == 0
    assert parser.parse_args(["tree", "x", "--fail-ratio", "1"]).fail_ratio == 1
    assert parser.parse_args(["runs", "--limit", "1"]).limit == 1
    assert parser.parse_args(["runs", "--limit", "100000"]).limit == 100_000


# One-line errors for files.


def _export_error(
    capsys: pytest.CaptureFixture[str], url: str, root: str, target: str
) -> tuple[int, str]:
    code, out, err = run_cli(capsys, "--database-url", url, "export", root, "-o", target)
    assert out == ""
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return code, err


def test_export_to_a_missing_directory_is_one_line(
    capsys: pytest.CaptureFixture[str], small: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """-o under a directory that does not exist says so in one line, exit status 1."""
    url, ids = small
    target = tmp_path / "nonexistent" / "x"
    code, err = _export_error(capsys, url, ids["root"], str(target))
    assert code == 1
    assert err.startswith(f"jobtrace: cannot write {target}: No such file or directory")


def test_export_to_a_directory_is_one_line(
    capsys: pytest.CaptureFixture[str], small: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """-o naming a directory (or a path under a file) is refused in one line."""
    url, ids = small
    code, err = _export_error(capsys, url, ids["root"], str(tmp_path))
    assert (code, "Is a directory" in err) == (1, True)
    afile = tmp_path / "file"
    afile.write_text("")
    code, err = _export_error(capsys, url, ids["root"], str(afile / "x"))
    assert (code, "Not a directory" in err) == (1, True)


def test_export_to_a_full_device_is_one_line(
    capsys: pytest.CaptureFixture[str], small: tuple[str, dict[str, str]]
) -> None:
    """A write that fails part way (no space left) is one line, whoever runs the test."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    url, ids = small
    code, err = _export_error(capsys, url, ids["root"], "/dev/full")
    assert code == 1
    assert "No space left on device" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes read-only files")
def test_export_to_a_read_only_file_is_one_line(
    capsys: pytest.CaptureFixture[str], small: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """A file without write permission is refused in one line."""
    url, ids = small
    target = tmp_path / "locked.json"
    target.write_text("")
    target.chmod(0o444)
    code, err = _export_error(capsys, url, ids["root"], str(target))
    assert (code, "Permission denied" in err) == (1, True)


def test_an_undecodable_id_is_an_unknown_id(
    capsys: pytest.CaptureFixture[str], small: tuple[str, dict[str, str]]
) -> None:
    """An id with bytes no encoding explains (a lone surrogate in argv) is "no job", not a crash."""
    url, _ = small
    code, out, err = run_cli(capsys, "--database-url", url, "tree", "x\udcff")
    assert (code, out) == (1, "")
    assert err.startswith("jobtrace: no job ")
    assert len(err.strip().splitlines()) == 1


# Id prefixes.


@pytest.mark.parametrize(
    ("argv", "shows"),
    [
        (["tree", "3f0c"], "root"),
        (["tree", "3f0c2c9e-…"], "root"),
        (["stats", "7d1e01…"], "MovieDetailJob\tdiscarded\t1"),
        (["children", "7d1e01"], "detail"),
        (["children", "7d1e01…", "--state", "discarded"], "detail"),
        (["ancestors", "a91b…"], "first"),
        (["why", "a91b"], "detail"),
        (["diff", "3f0c…", "7d1e02"], "root"),
        (["export", "7d1e01…"], "detail"),
    ],
)
def test_every_command_taking_an_id_takes_a_unique_prefix(
    capsys: pytest.CaptureFixture[str],
    small: tuple[str, dict[str, str]],
    argv: list[str],
    shows: str,
) -> None:
    """A unique prefix, or a short id as the docs print it (``7d1e01…``), names the job."""
    url, ids = small
    code, out, err = run_cli(capsys, "--database-url", url, *argv)
    assert (code, err) == (0, "")
    assert ids.get(shows, shows) in out


@pytest.mark.parametrize("command", ["tree", "stats", "children", "ancestors", "why", "export"])
def test_an_ambiguous_prefix_lists_its_candidates(
    capsys: pytest.CaptureFixture[str], small: tuple[str, dict[str, str]], command: str
) -> None:
    """A prefix several ids start with is one line naming them, exit status 1."""
    url, ids = small
    code, out, err = run_cli(capsys, "--database-url", url, command, "7d1e…")
    assert (code, out) == (1, "")
    assert len(err.strip().splitlines()) == 1
    assert "'7d1e' matches several jobs" in err
    assert f"{ids['first']} (MoviePageJob)" in err
    assert ids["second"] in err


def test_an_ambiguous_prefix_lists_ten_candidates_at_most(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """Of many matching jobs, ten are named and the line says there are more."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    root = builder.job("SyncJob", job_id="run")
    for number in range(25):
        builder.job("PageJob", root, job_id=f"page-{number:02d}")
    builder.insert(engine)
    engine.dispose()
    code, _, err = run_cli(capsys, "--database-url", sqlite_url, "why", "page-")
    assert code == 1
    assert err.count("(PageJob)") == 10
    assert "page-09 (PageJob)" in err
    assert "page-10" not in err
    assert "and more" in err


# reap shows what it reaped.


def test_reap_lists_name_run_and_queue_of_each_job(
    capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    """Each crashed or stalled job is listed with its name, its run's root and its queue."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    upload = builder.job("UploadJob", queue="uploads")
    batch = builder.job("BatchJob", upload, state="running", heartbeat=1, queue="batches")
    waiting = builder.job("BatchJob", upload, state="queued", queue="slow-lane")
    builder.insert(engine)
    engine.dispose()
    code, out, err = run_cli(
        capsys,
        "--database-url",
        sqlite_url,
        "reap",
        "--heartbeat-timeout",
        "60",
        "--stalled-after",
        "60",
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "1 crashed, 1 stalled, 0 lost track"
    rows = list(csv.reader(io.StringIO("\n".join(lines[1:])), delimiter="\t"))
    assert rows[0] == ["reaped", "job id", "job", "run", "queue"]
    assert ["crashed", batch, "BatchJob", upload, "batches"] in rows
    assert ["stalled", waiting, "BatchJob", upload, "slow-lane"] in rows


# Output that fits the terminal.


@pytest.fixture
def wide(sqlite_url: str) -> tuple[str, str]:
    """A run whose tree lines run past 250 characters: long names, a stuck queue, long args."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    root = builder.job("SyncJob")
    name = "Page" + "X" * 120 + "Job"
    for number in range(3):
        page = builder.job(name, root, args={"movie_id": f"m-{number}", "pad": "p" * 80})
        builder.job(
            "Detail" + "Y" * 150 + "Job",
            page,
            state="queued",
            queue="details-" + "q" * 60,
            args={"movie_id": f"m-{number}", "pad": "d" * 80},
        )
    builder.insert(engine)
    engine.dispose()
    return sqlite_url, root


def test_tree_lines_are_cut_to_the_terminal_width(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], wide: tuple[str, str]
) -> None:
    """At 160 columns no line wraps: long ones end in … and keep their guides; piped, none is cut."""
    url, root = wide
    code, piped, _ = run_cli(capsys, "--database-url", url, "tree", root)
    assert code == 0
    assert max(len(line) for line in piped.splitlines()) > 250
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["--database-url", url, "tree", root]) == 0
    shown = terminal.getvalue().splitlines()
    plain = [ANSI.sub("", line) for line in shown]
    assert len(plain) == len(piped.splitlines())
    assert max(len(line) for line in plain) == 160
    for full, cut, raw in zip(piped.splitlines(), plain, shown, strict=True):
        if len(full) > 160:
            assert cut.endswith("…")
            assert full.startswith(cut[:-1])
            assert raw.endswith("…") or raw.endswith("\x1b[0m")
        else:
            assert cut == full
    guides = [line[: len(line) - len(line.lstrip("│├└─ "))] for line in plain]
    assert guides == [line[: len(g)] for line, g in zip(piped.splitlines(), guides, strict=True)]


def test_tables_are_cut_to_the_terminal_width(
    monkeypatch: pytest.MonkeyPatch, wide: tuple[str, str]
) -> None:
    """children's table on an 80-column terminal: every line fits, the args column is cut."""
    url, root = wide
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["--database-url", url, "children", root]) == 0
    lines = terminal.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.endswith("…") for line in lines)


# --help with examples.

COMMANDS = [
    ["runs"],
    ["tree"],
    ["stats"],
    ["children"],
    ["ancestors"],
    ["why"],
    ["diff"],
    ["export"],
    ["reap"],
    ["web"],
    ["db", "upgrade"],
]


@pytest.mark.parametrize("command", [[], *COMMANDS], ids=lambda c: " ".join(c) or "jobtrace")
def test_help_shows_examples(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    """Every command's --help ends with examples of that command, their layout kept."""
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0
    examples = out.split("examples:\n", 1)[1]
    lines = [line for line in examples.splitlines() if line.startswith("  jobtrace ")]
    assert len(lines) >= 2
    assert all(line.startswith(" ".join(["  jobtrace", *command])) for line in lines)


# The JSON shapes, documented.


def _json_section() -> str:
    text = DOCS.read_text(encoding="utf-8")
    return text.split("## JSON output", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["runs"],
        ["tree", "{root}"],
        ["stats", "{root}"],
        ["children", "{first}"],
        ["ancestors", "{detail}"],
        ["why", "{detail}"],
        ["diff", "{root}", "{root}"],
        ["reap"],
    ],
)
def test_the_json_keys_of_every_command_are_documented(
    capsys: pytest.CaptureFixture[str], small: tuple[str, dict[str, str]], argv: list[str]
) -> None:
    """docs/cli.md's JSON section names each command and every key its --json prints."""
    url, ids = small
    code, out, _ = run_cli(
        capsys, "--database-url", url, *[a.format(**ids) for a in argv], "--json"
    )
    assert code == 0
    section = _json_section()
    assert f"`{argv[0]}`" in section

    def keys(value: object) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for item in value for k in keys(item)}
        return set()

    document = json.loads(out)
    # Per-state maps are keyed by state names, not fields.
    missing = sorted(k for k in keys(document) - set(STATES) if f"`{k}`" not in section)
    assert missing == []


def test_web_fills_a_templates_service_from_trace_service(
    capsys: pytest.CaptureFixture[str],
    small: tuple[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """{service} without --trace-service is a one-line error; with it the server gets the name."""
    url, _ = small
    monkeypatch.delenv("JOBTRACE_TRACE_SERVICE", raising=False)
    template = "https://ui.honeycomb.io/t/datasets/{service}/trace?trace_id={trace_id}"
    code, _, err = run_cli(capsys, "--database-url", url, "web", "--trace-url", template)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "service" in err
    seen: dict[str, object] = {}

    class Started(Exception):
        pass

    def fake_make_server(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise Started

    monkeypatch.setattr("jobtrace.web.make_server", fake_make_server)
    with pytest.raises(Started):
        main(["--database-url", url, "web", "--trace-url", template, "--trace-service", "cinema"])
    assert seen["trace_service"] == "cinema"
