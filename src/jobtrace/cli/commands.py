"""The ``jobtrace`` commands: parse, ask the store one question, print the answer.

Each command is a function of a :class:`Context`, which resolves the database URL and opens the
store only when the command needs it. Options are checked by the parser (a state of the
vocabulary, numbers in range), so a bad one is a usage error before any work. Errors a user can
fix (unknown or ambiguous id, bad URL, unreachable database, a file that cannot be written) are
raised as :class:`CliError` or left as store errors for ``main`` to turn into one line.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from jobtrace.cli import prune as prune_cli
from jobtrace.cli import render
from jobtrace.display import run_health, stuck_stage_count
from jobtrace.lineage.export import FORMATS, export_tree, jsonable
from jobtrace.lineage.queries import (
    FAILURES,
    MAX_DEPTH,
    SCHEDULED,
    STUCK_AFTER,
    JobNotFoundError,
    JobRow,
    LineageStore,
)
from jobtrace.records import JobState

Handler = Callable[["Context"], int]


class CliError(Exception):
    """A problem the user can fix, printed as one line without a traceback."""


@dataclass
class Context:
    """What a command runs with: its arguments, its streams, and the store once opened."""

    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    _url: str | None = None
    _store: LineageStore | None = None

    @property
    def url(self) -> str:
        """``--database-url``, else ``JOBTRACE_DATABASE_URL``, else the store's default."""
        if self._url is None:
            url = self.args.database_url or os.environ.get("JOBTRACE_DATABASE_URL")
            if not url:
                from jobtrace.lineage.store import default_url

                url = default_url()
            self._url = url
        return self._url

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, fit for a message."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except ArgumentError:
            return "(unparseable URL)"

    @property
    def store(self) -> LineageStore:
        """The store, opened on first use; a missing SQLite file is an error, not a new store."""
        if self._store is None:
            self.require_existing_store()
            self._store = LineageStore(self.url)
        return self._store

    @property
    def style(self) -> render.Style:
        """Colours and alignment for ``out``."""
        return render.for_stream(self.out)

    @property
    def width(self) -> int | None:
        """Columns of the terminal ``out`` is, ``None`` when piped (lines are then never cut)."""
        if not self.out.isatty():
            return None
        return shutil.get_terminal_size().columns

    def resolve(self, typed: str) -> str:
        """The job id ``typed`` names: an id, or a unique prefix of one (``7d1e…``)."""
        return self.store.resolve(typed)

    def require_existing_store(self) -> None:
        """Refuse to read a SQLite file that is not there (connecting would create it empty)."""
        try:
            url = make_url(self.url)
        except ArgumentError as error:
            raise CliError(f"bad database URL: {error}") from None
        path = url.database
        file_path = path not in (None, "", ":memory:") and not str(path).startswith("file:")
        if url.get_backend_name() == "sqlite" and file_path and not Path(str(path)).exists():
            raise CliError(
                f"no lineage store at {path}: nothing recorded there yet"
                " (run a job under jobtrace.configure(), or `jobtrace demo`)"
            )

    def close(self) -> None:
        """Release the store's connections."""
        if self._store is not None:
            self._store.close()

    def print(self, lines: list[str], *, whole: bool = False) -> None:
        """Write ``lines`` to ``out``, cut to the terminal's width on a terminal unless ``whole``."""
        width = self.width
        if width is not None and not whole:
            lines = render.fit(lines, width)
        self.out.write("".join(line + "\n" for line in lines))

    def print_json(self, value: Any) -> None:
        """Write ``value`` as JSON to ``out``."""
        render.dump_json(jsonable(value), self.out)


def _with(value: Any, *properties: str) -> dict[str, Any]:
    """``value`` as JSON plus some of its derived properties."""
    return {**jsonable(value), **{name: jsonable(getattr(value, name)) for name in properties}}


# Read commands.


def cmd_runs(ctx: Context) -> int:
    """The latest runs and their health, as the dashboard judges it."""
    a = ctx.args
    store = ctx.store
    now = datetime.now(timezone.utc)
    runs = [
        (s.summary, run_health(s.summary, stuck_stages=stuck_stage_count(s.stuck)))
        for s in store.run_statuses(a.limit, name=a.name, stuck_after=a.stuck_after, now=now)
    ]
    if a.json:
        ctx.print_json(
            [
                {
                    **_with(summary, "failures", "active", "scheduled", "unknown"),
                    "health": health.state,
                    "failed_share": health.share,
                    "stuck_stages": health.stuck_stages,
                }
                for summary, health in runs
            ]
        )
    elif not runs:
        ctx.print(["no runs recorded"])
    else:
        ctx.print(render.runs_lines(runs, ctx.style))
    return 0


def cmd_tree(ctx: Context) -> int:
    """The stage tree with stuck and failing stages marked."""
    a = ctx.args
    overview = ctx.store.overview(
        ctx.resolve(a.job_id),
        stuck_after=a.stuck_after,
        min_failures=a.min_failures,
        min_ratio=a.fail_ratio,
    )
    if a.json:
        ctx.print_json(overview)
    else:
        ctx.print(render.overview_lines(overview, ctx.style, full=a.full), whole=a.full)
    return 0


def cmd_stats(ctx: Context) -> int:
    """The per-stage table of the job's run, stuck and failing rows flagged."""
    a = ctx.args
    store = ctx.store
    stats = store.stage_stats(ctx.resolve(a.job_id))
    flags: dict[tuple[int, str, str], str] = {}
    for stuck in store.stuck_stages(stats.root_job_id, a.stuck_after):
        flags.update({(stuck.depth, stuck.name, state): "stuck" for state in stuck.states})
    for failing in store.failing_stages(
        stats.root_job_id, min_failures=a.min_failures, min_ratio=a.fail_ratio
    ):
        flags.update({(failing.depth, failing.name, state): "failing" for state in FAILURES})
    if a.json:
        rows = [
            {**jsonable(row), "flag": flags.get((row.depth, row.name, row.state))}
            for row in stats.rows
        ]
        ctx.print_json({"root_job_id": stats.root_job_id, "rows": rows})
    else:
        ctx.print(render.stats_lines(stats, flags, ctx.style))
    return 0


def cmd_children(ctx: Context) -> int:
    """A parent's progress over its children, then the children themselves."""
    a = ctx.args
    job_id = ctx.resolve(a.job_id)
    progress = ctx.store.progress(job_id, limit=a.limit)
    children = ctx.store.children(job_id, state=a.state, limit=a.limit)
    if a.json:
        ctx.print_json({"progress": _with(progress, "fraction", "complete"), "children": children})
        return 0
    lines = render.progress_lines(progress, children, ctx.style, full=a.full)
    shown = progress.states.get(a.state, 0) if a.state else progress.total
    if shown > len(children):
        lines.append(f"… {shown - len(children):,} more (--limit)")
    ctx.print(lines, whole=a.full)
    return 0


def cmd_ancestors(ctx: Context) -> int:
    """The jobs above a job, from its root down, and why the path stops where it does."""
    job = ctx.store.job(ctx.resolve(ctx.args.job_id))
    ancestors = ctx.store.ancestors(job.job_id, limit=ctx.args.limit)
    if ctx.args.json:
        ctx.print_json(
            {
                "job": job,
                "ancestors": list(ancestors),
                "cycle_at": ancestors.cycle_at,
                "truncated_at": ancestors.truncated_at,
            }
        )
    else:
        ctx.print(
            render.ancestors_lines(
                [*ancestors, job],
                ctx.style,
                cycle_at=ancestors.cycle_at,
                truncated_at=ancestors.truncated_at,
            )
        )
    return 0


def cmd_why(ctx: Context) -> int:
    """The path to a job and the earliest failure related to it."""
    why = ctx.store.why(ctx.resolve(ctx.args.job_id))
    if ctx.args.json:
        ctx.print_json(why)
    else:
        ctx.print(render.why_lines(why, ctx.style, full=ctx.args.full), whole=ctx.args.full)
    return 0


def cmd_diff(ctx: Context) -> int:
    """Two runs stage by stage."""
    diff = ctx.store.diff(ctx.resolve(ctx.args.run_a), ctx.resolve(ctx.args.run_b))
    if ctx.args.json:
        stages = [
            _with(stage, "total_delta", "state_deltas", "median_delta") for stage in diff.stages
        ]
        ctx.print_json({"a": diff.a, "b": diff.b, "stages": stages})
    else:
        ctx.print(render.diff_lines(diff, ctx.style))
    return 0


# Other commands.


def cmd_export(ctx: Context) -> int:
    """A tree as JSON or CSV, to stdout or a file, with progress on a terminal's stderr."""
    a = ctx.args
    store = ctx.store
    job_id = ctx.resolve(a.job_id)  # an unknown id fails before any file is created
    show_progress = ctx.err.isatty()

    def on_progress(done: int, total: int) -> None:
        ctx.err.write(f"\rexporting {done:,}/{total:,} jobs")
        ctx.err.flush()

    options: dict[str, Any] = {
        "nested": a.nested,
        "on_progress": on_progress if show_progress else None,
    }
    if a.output in (None, "-"):
        count = export_tree(store, job_id, ctx.out, a.format, **options)
    else:
        try:
            with open(a.output, "w", encoding="utf-8", newline="") as out:
                count = export_tree(store, job_id, out, a.format, **options)
        except OSError as error:  # no such directory, a directory, no permission, disk full
            if show_progress:
                ctx.err.write("\n")
            raise CliError(f"cannot write {a.output}: {error.strerror or error}") from None
    if show_progress:
        ctx.err.write("\n")
    if a.output not in (None, "-"):
        ctx.err.write(f"wrote {count:,} jobs to {a.output}\n")
    return 0


def cmd_reap(ctx: Context) -> int:
    """Declare jobs without heartbeats crashed and jobs queued too long stalled."""
    from jobtrace.lineage.reaper import reap

    ctx.require_existing_store()
    options = {
        name: value
        for name, value in (
            ("heartbeat_timeout", ctx.args.heartbeat_timeout),
            ("stalled_after", ctx.args.stalled_after),
            ("missed_heartbeats", ctx.args.missed_heartbeats),
        )
        if value is not None
    }
    result = reap(
        ctx.url,
        heartbeat_timeout_by_name=dict(ctx.args.heartbeat_timeout_for),
        stalled_after_by_name=dict(ctx.args.stalled_after_for),
        **options,
    )
    crashed, stalled, lost = list(result.crashed), list(result.stalled), list(result.lost)
    if ctx.args.json:
        ctx.print_json({"crashed": crashed, "stalled": stalled, "lost": lost})
        return 0
    groups = [("crashed", crashed), ("stalled", stalled), ("lost track", lost)]
    ctx.print(render.reaped_lines(groups, _listed_jobs(ctx, groups, 20), ctx.style, 20))
    return 0


def _listed_jobs(
    ctx: Context, groups: list[tuple[str, list[str]]], shown: int
) -> dict[str, JobRow]:
    """The rows of the first ``shown`` ids of each group, read after reaping (name, run, queue)."""
    jobs = {}
    for _, ids in groups:
        for job_id in ids[:shown]:
            with contextlib.suppress(JobNotFoundError):  # gone since: listed bare
                jobs[job_id] = ctx.store.job(job_id)
    return jobs


#: What the parser accepts: numbers beyond these are typos, and some would overflow a query.
MAX_LIMIT = 100_000
MAX_SECONDS = 1000 * 365 * 86400.0
MAX_COUNT = 2**31 - 1
#: ``--state``: the stored states, and ``scheduled`` (queued, not due yet) as the counts show it.
STATES = (*(state.value for state in JobState), SCHEDULED)


def _positive_seconds(text: str) -> float:
    """A duration in seconds, more than zero: a negative timeout would crash live jobs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most 1,000 years ({MAX_SECONDS:,.0f} s)")
    return value


def _positive_count(text: str) -> int:
    """A whole number of at least 1 (and at most what a 32-bit column holds)."""
    return _whole(text, 1, MAX_COUNT)


def _limit(text: str) -> int:
    """How many rows to list: 1 to :data:`MAX_LIMIT`."""
    return _whole(text, 1, MAX_LIMIT)


def _whole(text: str, low: int, high: int, what: str = "") -> int:
    """An integer from ``low`` to ``high``; ``what`` words the range in the error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not low <= value <= high:
        what = what or f"from {low:,} to {high:,}"
        raise argparse.ArgumentTypeError(f"must be {what}: {text!r}")
    return value


def _ratio(text: str) -> float:
    """A share from 0 (any share, the default) to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1: {text!r}")
    return value


def _port(text: str) -> int:
    """A TCP port, 0 for any free one."""
    return _whole(text, 0, 65535, "a port from 0 to 65535")


def _text(text: str) -> str:
    """Text that a store or a socket can take: no control characters, no undecodable bytes."""
    if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise argparse.ArgumentTypeError(
            f"has control characters or bytes that are not UTF-8: {text!a}"
        )
    return text


def _name_seconds(text: str) -> tuple[str, float]:
    """``NAME=SECONDS`` of a per-job-name threshold."""
    name, sep, seconds = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS, got {text!r}")
    return _text(name), _positive_seconds(seconds)


def cmd_db_upgrade(ctx: Context) -> int:
    """Create or migrate the lineage tables."""
    from jobtrace.lineage.store import upgrade

    upgrade(ctx.url)
    ctx.print([f"lineage store {ctx.safe_url} is at the latest schema"])
    return 0


def cmd_web(ctx: Context) -> int:
    """Serve the dashboard until interrupted."""
    from jobtrace.web import make_server

    a = ctx.args
    try:
        server = make_server(
            ctx.store, a.host, a.port, trace_url=a.trace_url, trace_service=a.trace_service
        )
    except ValueError as error:  # a trace URL template without {trace_id}
        raise CliError(str(error)) from None
    except OSError as error:  # port taken, unknown host
        raise CliError(f"cannot listen on {a.host}:{a.port}: {error.strerror or error}") from None
    with server:
        ctx.err.write(f"jobtrace dashboard on {server.url} (lineage store {ctx.safe_url})\n")
        ctx.err.flush()
        server.serve_forever()
    return 0


# The parser.

_IDS = """\
An ID is a job id or a unique prefix of one; a trailing … is ignored, so the short ids
the docs and the tree print (7d1e…) work. A prefix several jobs share is an error that
lists them."""

_STORE = """\
The store is --database-url, else JOBTRACE_DATABASE_URL, else the local SQLite file."""

_MAIN = f"""\
examples:
  jobtrace runs                                 the latest runs and their health
  jobtrace tree 3f0c2c9e                        a run stage by stage, ⚠ stuck and ✗ failing
  jobtrace children upload-7 --state crashed    a parent's crashed children, with their args
  jobtrace why 7d1e…                            why a job waits or failed
  jobtrace --database-url postgresql+psycopg://db/lineage runs

{_IDS}

{_STORE}
`jobtrace COMMAND --help` shows each command's options and examples; docs/cli.md has more."""

#: Each command's examples for its ``--help``: (the line after ``jobtrace``, what it shows).
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "runs": [
        ("runs", "the 20 latest runs"),
        ("runs --name SyncJob --limit 5", "the 5 latest runs of one root job"),
        ("runs --stuck-after 3600", "stuck: a stage without progress for an hour"),
        (
            "runs --json | jq -r '.[] | select(.health == \"stuck\") | .root.job_id'",
            "the root ids of the stuck runs",
        ),
    ],
    "tree": [
        ("tree 3f0c2c9e", "the run under a root, named by the first characters of its id"),
        ("tree 7d1e… --stuck-after 600", "stuck means 10 minutes without progress"),
        ("tree ROOT --min-failures 10 --fail-ratio 0.05", "failing: 10 failures and 5%"),
        ("tree ROOT --json | jq '.stuck[] | {name, queue, since}'", "the stuck stages as JSON"),
    ],
    "stats": [
        ("stats 3f0c2c9e", "the per-stage table of the run a job belongs to"),
        ("stats ROOT | awk -F'\\t' '$5 != \"\"'", "the flagged rows (piped, columns are tabs)"),
    ],
    "children": [
        ("children upload-7", "done / total, crashed children with their args"),
        ("children a91b --state discarded --limit 500", "a page's discarded children"),
        ("children PARENT --state scheduled", "children queued but not due yet"),
        ("children upload-7 --state crashed --full", "the crashed batches' args in full"),
    ],
    "ancestors": [
        ("ancestors 7d1e…", "the path from the root down to a job, with trace ids"),
        ("ancestors JOB --limit 50", "only the 50 nearest ancestors"),
    ],
    "why": [
        ("why annotate-91", "the path, where the job stands and the earliest related failure"),
        ("why JOB --json | jq .cause", "the failure alone, as JSON"),
    ],
    "diff": [
        ("diff 3f0c2c9e 91aa04d2", "two runs (any job of each) stage by stage"),
        (
            "diff LAST_NIGHT TONIGHT --json | jq '.stages[] | select(.total_delta != 0)'",
            "the stages whose size changed",
        ),
    ],
    "export": [
        ("export 3f0c2c9e -o run.json", "a run as JSON, parents by id"),
        ("export ROOT --format csv -o run.csv", "one CSV row per job, every column"),
        ("export PAGE --nested | jq '.children | length'", "nested JSON to stdout"),
    ],
    "reap": [
        ("reap", "running jobs silent 60 s and 3 heartbeats crashed, queued 1 h stalled"),
        ("reap --heartbeat-timeout 300 --stalled-after 86400", "wider thresholds"),
        ("reap --heartbeat-timeout-for ReportJob=1800", "one slow job name's own timeout"),
    ],
    "prune": prune_cli.EXAMPLES,
    "web": [
        ("web", "the dashboard on http://127.0.0.1:8080"),
        ("web --port 0", "on any free port (printed at start)"),
        ("web --trace-url 'https://jaeger.example/trace/{trace_id}'", "links into your Jaeger"),
        (
            "web --trace-service cinema-worker --trace-url"
            " 'https://ui.honeycomb.io/TEAM/environments/prod/datasets/{service}/trace"
            "?trace_id={trace_id}&trace_start_ts={start}&trace_end_ts={end}'",
            "links into Honeycomb, with the dataset and the job's time range",
        ),
    ],
    "db upgrade": [
        ("db upgrade", "create or migrate the tables of the default store"),
        ("db upgrade --database-url postgresql+psycopg://db/lineage", "a PostgreSQL store"),
    ],
}


def _epilog(command: str, *notes: str) -> str:
    """``examples:``, each command line under a ``#`` line saying what it shows, then ``notes``."""
    lines = ["examples:"]
    for line, what in EXAMPLES[command]:
        lines += [f"  # {what}", f"  jobtrace {line}"]
    return "\n".join([*lines, *(f"\n{note}" for note in notes)])


def build_parser() -> argparse.ArgumentParser:
    """``jobtrace`` and its subcommands, every option checked as it is parsed."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="jobtrace",
        description="See background-job pipelines: runs, stage trees, stuck and failing stages.",
        epilog=_MAIN,
        formatter_class=raw,
    )
    parser.add_argument("--database-url", type=_text, help="the lineage store (SQLAlchemy URL)")
    parser.set_defaults(handler=None, json=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    # Every command also takes --database-url after its name; SUPPRESS keeps the global one.
    url = argparse.ArgumentParser(add_help=False)
    url.add_argument(
        "--database-url", type=_text, default=argparse.SUPPRESS, help="the lineage store"
    )
    read = argparse.ArgumentParser(add_help=False, parents=[url])
    read.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    whole = argparse.ArgumentParser(add_help=False)
    whole.add_argument(
        "--full",
        action="store_true",
        help="args in full, lines never cut (args are otherwise cut where they differ)",
    )
    marks = argparse.ArgumentParser(add_help=False)
    marks.add_argument(
        "--stuck-after",
        type=_positive_seconds,
        default=STUCK_AFTER,
        metavar="S",
        help=f"a stage with active jobs and no progress for S seconds is stuck ({STUCK_AFTER:g})",
    )
    marks.add_argument(
        "--min-failures",
        type=_positive_count,
        default=1,
        metavar="N",
        help="failures that make a stage failing, at least 1 (1)",
    )
    marks.add_argument(
        "--fail-ratio",
        type=_ratio,
        default=0.0,
        metavar="R",
        help="... and the share of its jobs they must be, 0 to 1 (0: any share)",
    )

    def add(
        name: str, handler: Handler, help: str, *parents: argparse.ArgumentParser, notes: str = ""
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            parents=list(parents),
            epilog=_epilog(name, *([notes] if notes else [])),
            formatter_class=raw,
        )
        sub.set_defaults(handler=handler)
        return sub

    def job_id(
        sub: argparse.ArgumentParser,
        name: str = "job_id",
        metavar: str = "ID",
        help: str = "a job id, or a unique prefix of one (7d1e…)",
    ) -> None:
        sub.add_argument(name, metavar=metavar, help=help)

    runs = add("runs", cmd_runs, "the latest pipeline runs and their health", read)
    runs.add_argument(
        "--stuck-after",
        type=_positive_seconds,
        default=STUCK_AFTER,
        metavar="S",
        help=f"a run is stuck when a stage made no progress for S seconds ({STUCK_AFTER:g})",
    )
    runs.add_argument(
        "--limit",
        type=_limit,
        default=20,
        metavar="N",
        help=f"runs to show, 1 to {MAX_LIMIT:,} (20)",
    )
    runs.add_argument("--name", type=_text, help="only runs whose root job has this name")

    tree = add(
        "tree",
        cmd_tree,
        "a job's subtree per stage; stuck ⚠ and failing ✗ stages",
        read,
        marks,
        whole,
        notes=_IDS,
    )
    job_id(tree)
    stats = add(
        "stats",
        cmd_stats,
        "the per-stage table of the run a job belongs to",
        read,
        marks,
        notes=_IDS,
    )
    job_id(stats)
    children = add(
        "children", cmd_children, "a parent's progress and its children", read, whole, notes=_IDS
    )
    job_id(children)
    children.add_argument(
        "--state",
        type=str.lower,
        choices=STATES,
        metavar="STATE",
        help=f"only children in this state: {', '.join(STATES)} (queued, not due yet)",
    )
    children.add_argument(
        "--limit",
        type=_limit,
        default=50,
        metavar="N",
        help=f"children to list, 1 to {MAX_LIMIT:,} (50)",
    )
    ancestors = add(
        "ancestors", cmd_ancestors, "the jobs above a job, up to its root", read, notes=_IDS
    )
    job_id(ancestors)
    ancestors.add_argument(
        "--limit",
        type=_limit,
        default=MAX_DEPTH,
        metavar="N",
        help=f"ancestors to list at most, the nearest, 1 to {MAX_LIMIT:,} ({MAX_DEPTH:,})",
    )
    why = add(
        "why",
        cmd_why,
        "the path to a job and the earliest related failure",
        read,
        whole,
        notes=_IDS,
    )
    job_id(why)
    diff = add("diff", cmd_diff, "two runs side by side, stage by stage", read, notes=_IDS)
    job_id(diff, "run_a", "A", "any job of the first run (an id or a unique prefix)")
    job_id(diff, "run_b", "B", "any job of the second run")

    export = add("export", cmd_export, "a job's subtree as JSON or CSV", url, notes=_IDS)
    job_id(export)
    export.add_argument("--format", choices=FORMATS, default="json", help="json (default) or csv")
    export.add_argument("--nested", action="store_true", help="JSON: children inside their parent")
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")

    reap = add("reap", cmd_reap, "mark silent running jobs crashed, long-queued ones stalled", read)
    reap.add_argument(
        "--heartbeat-timeout",
        type=_positive_seconds,
        metavar="S",
        help="running without a heartbeat for S s (60)",
    )
    reap.add_argument(
        "--missed-heartbeats",
        type=_positive_count,
        metavar="N",
        help="and missed N heartbeats at the interval its worker recorded (3)",
    )
    reap.add_argument(
        "--stalled-after", type=_positive_seconds, metavar="S", help="queued for longer than S s"
    )
    reap.add_argument(
        "--heartbeat-timeout-for",
        type=_name_seconds,
        action="append",
        default=[],
        metavar="NAME=S",
        help="the heartbeat timeout of one job name (repeatable)",
    )
    reap.add_argument(
        "--stalled-after-for",
        type=_name_seconds,
        action="append",
        default=[],
        metavar="NAME=S",
        help="the stalled threshold of one job name (repeatable)",
    )

    prune_cli.configure(add("prune", prune_cli.cmd_prune, prune_cli.HELP, read))

    web = add("web", cmd_web, "serve the dashboard: runs, stage tables, jobs, trace links", url)
    web.add_argument(
        "--host", type=_text, default="127.0.0.1", help="address to listen on (127.0.0.1)"
    )
    web.add_argument(
        "--port", type=_port, default=8080, help="port to listen on, 0 to 65535, 0 for any (8080)"
    )
    web.add_argument(
        "--trace-url",
        type=_text,
        metavar="TEMPLATE",
        help="trace links: {trace_id}, {start}, {end}, {start_ms}, {end_ms}, {service} substituted"
        " (JOBTRACE_TRACE_URL, else Jaeger on :16686)",
    )
    web.add_argument(
        "--trace-service",
        type=_text,
        metavar="NAME",
        help="what a trace template's {service} becomes (JOBTRACE_TRACE_SERVICE)",
    )

    db = commands.add_parser(
        "db", help="manage the lineage store", description="manage the lineage store"
    )
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    upgrade = db_commands.add_parser(
        "upgrade",
        help="create or migrate the lineage tables",
        description="create or migrate the lineage tables",
        parents=[url],
        epilog=_epilog("db upgrade", _STORE),
        formatter_class=raw,
    )
    upgrade.set_defaults(handler=cmd_db_upgrade)

    # `demo` hands every argument after it to jobtrace.demo, its own help included.
    commands.add_parser("demo", help="run the cinema-scraper demo pipeline", add_help=False)
    return parser
