"""Text for people: the stage tree, tables, colours; no database access here.

On a terminal (and without ``NO_COLOR``) output gets ANSI colours and aligned columns, and lines
are cut to the terminal's width (:func:`fit`); piped, it is plain text, never cut, and tables are
tab-separated so ``cut``, ``sort`` and ``awk`` read them. The ⚠ and ✗ marks are part of the text
either way.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

from jobtrace.display import (
    FAILING,
    STUCK,
    Health,
    short,
    shorten_args,
    span,
    state_order,
    when,
)
from jobtrace.lineage.queries import (
    FAILURES,
    PENDING,
    PLACEHOLDER_NAME,
    UNKNOWN,
    UNKNOWN_DEPTH,
    AmbiguousJobIdError,
    ErrorCount,
    FailingStage,
    FailureGroup,
    JobRow,
    Overview,
    Progress,
    RunDiff,
    RunSummary,
    Stage,
    StageStats,
    StuckStage,
    Why,
)

#: Stage levels the tree draws indented; deeper ones are listed flat under the last, with depths.
DRAWN_LEVELS = 32
#: Longest path ``why`` prints whole; a longer one keeps its ends (``ancestors`` lists it all).
PATH_SHOWN = 12
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "magenta": "35",
    "cyan": "36",
}


def wants_color(stream: TextIO) -> bool:
    """Colour on a terminal unless ``NO_COLOR`` is set to anything (https://no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


@dataclass(frozen=True)
class Style:
    """How to draw: ``color`` adds ANSI codes, ``aligned`` pads table columns (else tabs)."""

    color: bool = False
    aligned: bool = False

    def paint(self, text: str, *styles: str) -> str:
        """``text`` in the given styles (``bold``, ``red``, ...) when colour is on."""
        if not self.color or not styles:
            return text
        codes = ";".join(_CODES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def state(self, state: str, text: str | None = None) -> str:
        """``text`` (default: the state) coloured by what the state means."""
        return self.paint(text or state, *_state_style(state))


def for_stream(stream: TextIO) -> Style:
    """The style fitting ``stream``: colours and alignment on a terminal, plain when piped."""
    tty = stream.isatty()
    return Style(color=tty and wants_color(stream), aligned=tty)


def _state_style(state: str) -> tuple[str, ...]:
    if state in FAILURES:
        return ("red",)
    if state in PENDING:
        return ("yellow",)
    if state == "running":
        return ("cyan",)
    if state == "succeeded":
        return ("green",)
    if state == UNKNOWN:
        return ("magenta",)
    return ("dim",)


def state_counts(states: Mapping[str, int], style: Style) -> str:
    """``queued 63 · running 3 · succeeded 70``."""
    return " · ".join(f"{style.state(s)} {states[s]:,}" for s in state_order(states))


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], style: Style, right: Iterable[int] = ()
) -> list[str]:
    """Aligned columns (numbers in ``right`` flush right) when aligned, else tab-separated."""
    rows = [list(row) for row in rows]
    if not style.aligned:
        return ["\t".join(headers), *("\t".join(_ANSI.sub("", c) for c in row) for row in rows)]
    flush_right = set(right)
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, _width(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = []
        for index, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            fill = " " * (width - _width(cell))
            padded.append(fill + cell if index in flush_right else cell + fill)
        return "  ".join(padded).rstrip()

    return [style.paint(line(headers), "bold"), *(line(row) for row in rows)]


def _width(cell: str) -> int:
    return len(_ANSI.sub("", cell))


def job_line(job: JobRow, style: Style) -> str:
    """``MoviePageJob page-17 failed: TimeoutError``: a job in one line.

    A job known only by name reads ``? ext-7 unknown (never recorded)``; one the store lost track
    of, ``... unknown (lost track)``.
    """
    text = (
        f"{style.paint(job.name, 'bold')} {job.job_id} {style.state(job.state, state_label(job))}"
    )
    if job.error:
        text += f": {job.error}"
    return text


def state_label(job: JobRow) -> str:
    """The job's state, with what ``unknown`` means for it: never recorded, or lost track of."""
    if job.is_placeholder:
        return f"{job.state} (never recorded)"
    if job.lost_track and (job.reason or "").startswith("lost track"):
        return f"{job.state} (lost track)"
    return job.state


def depth_text(depth: int | None) -> str:
    """A depth as printed: ``?`` where no record said it."""
    return "?" if depth is None or depth == UNKNOWN_DEPTH else str(depth)


# The tree of scenario 1.


def overview_lines(overview: Overview, style: Style, *, full: bool = False) -> list[str]:
    """The stage tree under the overview's job, stuck stages marked ⚠ and failing ones ✗.

    Drawn without recursion, and indented :data:`DRAWN_LEVELS` deep at most: the stages below
    that are listed flat, each with its depth, so a tree thousands of levels deep prints in lines
    of bounded width.
    """
    tree = overview.tree
    root = tree.root
    root_depth = UNKNOWN_DEPTH if root.depth is None else root.depth
    stuck: dict[tuple[int, str], list[StuckStage]] = {}
    for item in overview.stuck:
        stuck.setdefault((item.depth, item.name), []).append(item)
    failing = {(item.depth, item.name): item for item in overview.failing}
    failures: dict[tuple[int, str], list[FailureGroup]] = {}
    for group in overview.failures:
        failures.setdefault((group.depth, group.name), []).append(group)

    def head(stage: Stage) -> str:
        key = (stage.depth, stage.name)
        name = style.paint(stage.name, "bold")
        if stage.name == PLACEHOLDER_NAME and set(stage.states) == {UNKNOWN}:
            name += " (never recorded)"
        if stage.depth == UNKNOWN_DEPTH:
            name += " (depth unknown)"
        text = f"{name}  {stage.total:,} job{'s' * (stage.total != 1)}"
        if stage.depth > root_depth + 1 and root_depth != UNKNOWN_DEPTH:
            text += f" from {stage.parents:,} parent{'s' * (stage.parents != 1)}"
        text += f"  {state_counts(stage.states, style)}"
        if key in stuck:
            text += "  " + style.paint(f"{STUCK} stuck", "yellow", "bold")
        if key in failing:
            text += "  " + style.paint(f"{FAILING} failing", "red", "bold")
        return text

    def details(stage: Stage) -> list[str]:
        key = (stage.depth, stage.name)
        lines = [_stuck_line(item, style, full) for item in stuck.get(key, [])]
        if key in failing:
            lines += [
                _failure_line(g, failing[key], style, full) for g in failures.get(key, [])[:3]
            ]
        return lines

    root_stage = next(
        (s for s in tree.stages if (s.depth, s.name) == (root_depth, root.name)), None
    )
    first = f"{job_line(root, style)}  trace {root.trace_id or '-'}"
    if root.enqueued_at:
        first += f"  enqueued {when(root.enqueued_at)}"
    if root.items_total is not None:  # what the job meant to do: "did it schedule every page?"
        first += f"  items {root.items_processed or 0:,}/{root.items_total:,}"
    lines = [first]
    drawn: set[tuple[int, str]] = set()
    if root_stage is not None:
        drawn.add((root_stage.depth, root_stage.name))
        lines += ["  " + line for line in details(root_stage)]

    # (stage, prefix, last among its siblings, level): a stack instead of recursion.
    todo: list[tuple[Stage, str, bool, int]] = []

    def push(stages: list[Stage], prefix: str, level: int) -> None:
        for index in reversed(range(len(stages))):
            todo.append((stages[index], prefix, index == len(stages) - 1, level))

    def draw() -> None:
        while todo:
            stage, prefix, last, level = todo.pop()
            if (stage.depth, stage.name) in drawn:
                continue
            drawn.add((stage.depth, stage.name))
            kids = [k for k in tree.children_of(stage) if (k.depth, k.name) not in drawn]
            if level <= DRAWN_LEVELS:
                lines.append(prefix + ("└── " if last else "├── ") + head(stage))
                inner = prefix + ("    " if last else "│   ")
                lines.extend(inner + ("│   " if kids else "    ") + d for d in details(stage))
            else:
                lines.append(f"{prefix}↳ depth {stage.depth:,}  {head(stage)}")
                inner = prefix
                lines.extend(inner + "    " + d for d in details(stage))
            push(kids, inner, level + 1)

    push(tree.children_of(root_stage) if root_stage else [], "", 1)
    draw()
    # Stages whose parent stage is not one level up (inconsistent or unknown depths) still get
    # drawn, each at the top of what hangs under it.
    below = {(k.depth, k.name) for stage in tree.stages for k in tree.children_of(stage)}
    stray = [
        s for s in tree.stages if (s.depth, s.name) not in drawn and (s.depth, s.name) not in below
    ]
    push(stray, "", 1)
    draw()
    return lines


def _args(texts: Sequence[str | None], width: int, full: bool) -> list[str]:
    """Args as a row shows them: cut where the samples differ, or whole with ``--full``."""
    if full:
        return ["-" if text is None else " ".join(text.split()) for text in texts]
    return shorten_args(texts, width)


def _stuck_line(item: StuckStage, style: Style, full: bool = False) -> str:
    waiting = ", ".join(
        f"{n:,} {s}" for s, n in ((s, item.states[s]) for s in state_order(item.states))
    )
    recorded = [args for args in item.sample_args if args]
    samples = ", ".join(_args(recorded, 50, full)) or "no args recorded"
    text = (
        f"{STUCK} {waiting} on queue {item.queue or '-'}, no progress since {when(item.since)}"
        f" ({span(item.idle_seconds)}); e.g. {samples}"
    )
    return style.paint(text, "yellow")


def _failure_line(
    group: FailureGroup, stage: FailingStage, style: Style, full: bool = False
) -> str:
    text = f"{FAILING} {group.count:,} {group.error} ({group.count / stage.total:.0%})"
    if group.samples:
        sample = group.samples[0]
        (args,) = _args([sample.args], 50, full)
        text += f", e.g. {sample.job_id} {args}"
        if sample.parent_job_id:
            text += f" under {sample.parent_name or '?'} {sample.parent_job_id}"
            (parent_args,) = _args([sample.parent_args], 40, full)
            text += f" {parent_args}"
        if sample.trace_id:
            text += f" trace {sample.trace_id}"
    return style.paint(text, "red")


# The other read commands.


def stats_lines(
    stats: StageStats, flags: Mapping[tuple[int, str, str], str], style: Style
) -> list[str]:
    """The per-stage table of scenario 1, each row's flag (stuck, failing) in the last column."""
    rows = []
    for row in stats.rows:
        flag = flags.get((row.depth, row.name, row.state), "")
        mark = {"stuck": f"{STUCK} stuck", "failing": f"{FAILING} failing"}.get(flag, "")
        rows.append(
            [
                depth_text(row.depth),
                row.name,
                style.state(row.state),
                f"{row.count:,}" if style.aligned else str(row.count),
                style.paint(mark, "red" if flag == "failing" else "yellow"),
            ]
        )
    return table(["depth", "job", "state", "count", "flag"], rows, style, right=[0, 3])


def runs_lines(runs: Sequence[tuple[RunSummary, Health]], style: Style) -> list[str]:
    """One line per run: root, when, size, health, the share that failed, counts per state.

    Health is the dashboard's (``ok``, ``running``, ``stuck``, ``failing``): one failed job in
    380 reads ``running`` or ``ok`` with ``1 (0.3%)`` beside it, not an outage. A root never
    recorded shows ``? (never recorded)`` and when it was first heard of.
    """
    paint = {"failing": ("red",), "stuck": ("yellow",), "running": ("cyan",), "ok": ("green",)}
    rows = [
        [
            run.root.job_id,
            run.root.name + (" (never recorded)" if run.root.is_placeholder else ""),
            when(run.root.enqueued_at or run.root.started_at or run.root.updated_at),
            f"{run.total:,}" if style.aligned else str(run.total),
            style.paint(health.state, *paint[health.state]),
            health.failed_share_text,
            state_counts(run.states, style) if style.aligned else _plain_counts(run.states),
        ]
        for run, health in runs
    ]
    headers = ["root", "job", "started", "jobs", "health", "failed", "states"]
    return table(headers, rows, style, right=[3])


def _plain_counts(states: Mapping[str, int]) -> str:
    return ",".join(f"{s}={states[s]}" for s in state_order(states))


def progress_lines(
    progress: Progress, children: Sequence[JobRow], style: Style, *, full: bool = False
) -> list[str]:
    """Scenario 2: done / total of a parent's children, the crashed and failed ones, the list."""
    p = progress
    lines = [
        f"{job_line(p.parent, style)}: {p.done:,}/{p.total:,} children done ({p.fraction:.1%})"
        f" · {p.running:,} running · {p.pending:,} pending · {p.succeeded:,} succeeded"
        f" · {style.paint(f'{p.failed:,} failed', 'red' if p.failed else 'dim')}"
        f" · {style.paint(f'{p.crashed:,} crashed', 'red' if p.crashed else 'dim')}"
        + (f" · {style.paint(f'{p.unknown:,} unknown', 'magenta')}" if p.unknown else "")
    ]
    problem_args = _args([job.args for job in p.problems], 100, full)
    for job, args in zip(p.problems, problem_args, strict=True):
        reason = job.error_message or job.reason or ""
        lines.append(
            "  " + style.state(job.state, f"{FAILING} {job.state}") + f" {job.job_id}"
            f" {args}" + (f"  ({short(reason, 60)})" if reason else "")
        )
    if children:
        lines.append("")
        lines += jobs_table(children, style, full=full)
    return lines


def jobs_table(jobs: Sequence[JobRow], style: Style, *, full: bool = False) -> list[str]:
    """Jobs one per row: id, name, state, queue, times, error, args (cut where they differ)."""
    args = _args([job.args for job in jobs], 60, full)
    rows = [
        [
            job.job_id,
            job.name,
            style.state(job.state, state_label(job)),
            job.queue or "-",
            when(job.started_at),
            span(job.duration),
            job.error or "-",
            job_args,
        ]
        for job, job_args in zip(jobs, args, strict=True)
    ]
    headers = ["job id", "job", "state", "queue", "started", "took", "error", "args"]
    return table(headers, rows, style)


def ancestors_lines(
    path: Sequence[JobRow],
    style: Style,
    *,
    cycle_at: str | None = None,
    truncated_at: int | None = None,
) -> list[str]:
    """The path from the root down to a job, with trace ids, then why it stops where it does.

    Args:
        cycle_at: The job a parent cycle led back to (see ``Ancestors``).
        truncated_at: The depth where the walk stopped at its limit.
    """
    rows = [
        [
            depth_text(job.depth),
            job.job_id,
            job.name,
            style.state(job.state, state_label(job)),
            job.trace_id or "-",
        ]
        for job in path
    ]
    lines = table(["depth", "job id", "job", "state", "trace id"], rows, style, right=[0])
    return lines + path_notes(cycle_at, truncated_at, style)


def _depth_words(depth: int) -> str:
    return "?" if depth == UNKNOWN_DEPTH else f"{depth:,}"


def path_notes(cycle_at: str | None, truncated_at: int | None, style: Style) -> list[str]:
    """Why a path does not start at a root: a parent cycle, or the walk's limit."""
    notes = []
    if truncated_at is not None:
        notes.append(
            f"{STUCK} truncated at depth {_depth_words(truncated_at)}: more ancestors above"
            " (--limit)"
        )
    if cycle_at is not None:
        notes.append(f"{STUCK} cycle at {cycle_at}: its parent links lead back to it")
    return [style.paint(note, "yellow") for note in notes]


def why_lines(why: Why, style: Style, *, full: bool = False) -> list[str]:
    """The path, the earliest related failure and the job's attempts.

    A path longer than :data:`PATH_SHOWN` keeps its top and the jobs nearest the job.
    """
    lines = ["path:"]
    lines += ["  " + note for note in path_notes(why.cycle_at, why.truncated_at, style)]
    shown: list[JobRow | int] = list(why.path)
    if len(shown) > PATH_SHOWN:
        top, near = 3, PATH_SHOWN - 4
        shown = [*why.path[:top], len(why.path) - top - near, *why.path[-near:]]
    for level, job in enumerate(shown):
        if isinstance(job, int):
            lines.append(f"  {'  ' * level}⋮ {job:,} more (jobtrace ancestors {why.job.job_id})")
            continue
        mark = "  ← this job" if job.job_id == why.job.job_id else ""
        lines.append(f"  {'  ' * level}{job_line(job, style)}{mark}")
    lines.append(f"job: {_status(why.job)} · trace {why.job.trace_id or '-'}")
    cause = why.cause
    if cause is None:
        lines.append("cause: nothing failed in this job, above it, below it or before it")
    else:
        relation = {
            "self": "the job itself",
            "ancestor": "an ancestor",
            "descendant": "a descendant",
            "sibling": "an earlier sibling, as a failed dependency would be",
        }[why.relation or "self"]
        lines.append(f"cause: {relation}")
        lines.append(f"  {job_line(cause, style)}")
        if cause.error_message or cause.reason:
            lines.append(f"  {short(cause.error_message or cause.reason, 200)}")
        lines.append(
            f"  finished {when(cause.finished_at)} · trace {cause.trace_id or '-'}"
            f" · span {cause.span_id or '-'} · args {_args([cause.args], 80, full)[0]}"
        )
    if why.attempts:
        lines.append("attempts:")
        for attempt in why.attempts:
            error = attempt.error_type or attempt.reason or ""
            host = f" on {attempt.host}" if attempt.host else ""
            lines.append(
                f"  #{attempt.attempt} {style.state(attempt.state)} {error}".rstrip()
                + f" started {when(attempt.started_at)}{host} trace {attempt.trace_id or '-'}"
            )
    return lines


def _status(job: JobRow) -> str:
    """Where a job stands, in words: since when it waits, runs, or how it ended."""
    queue = f" on queue {job.queue}" if job.queue else ""
    if job.is_placeholder:
        return f"never recorded: {job.reason or 'only named by other jobs'}"
    if job.state == UNKNOWN:
        return f"unknown{queue} since {when(job.updated_at)}: {job.reason or 'no record says'}"
    if job.state in PENDING:
        start = (
            "never started" if job.started_at is None else f"last started {when(job.started_at)}"
        )
        return f"{job.state}{queue} since {when(job.enqueued_at)}, {start}"
    if job.state == "running":
        host = f" on {job.host}" if job.host else ""
        return (
            f"running{queue}{host} since {when(job.started_at)},"
            f" last heartbeat {when(job.heartbeat_at)}"
        )
    return f"{job.state} at {when(job.finished_at)} after {span(job.duration)}"


def diff_lines(diff: RunDiff, style: Style) -> list[str]:
    """Per stage, run a against run b: jobs, state changes, median durations, top errors."""
    lines = [f"a: {job_line(diff.a, style)}", f"b: {job_line(diff.b, style)}", ""]
    rows = []
    for stage in diff.stages:
        deltas = ", ".join(
            f"{s} {d:+,}"
            for s, d in ((s, stage.state_deltas[s]) for s in state_order(stage.state_deltas))
            if d
        )
        rows.append(
            [
                depth_text(stage.depth),
                stage.name,
                f"{stage.a.total:,}",
                f"{stage.b.total:,}",
                _delta(stage.total_delta, style),
                deltas or "-",
                span(stage.a.median_seconds),
                span(stage.b.median_seconds),
                _top_error(stage.a.errors),
                _top_error(stage.b.errors),
            ]
        )
    headers = [
        "depth",
        "job",
        "a",
        "b",
        "Δ",
        "states Δ",
        "median a",
        "median b",
        "error a",
        "error b",
    ]
    return lines + table(headers, rows, style, right=[0, 2, 3, 4, 6, 7])


def _delta(value: int, style: Style) -> str:
    return style.paint(f"{value:+,}", "dim") if value == 0 else f"{value:+,}"


def _top_error(errors: Sequence[ErrorCount]) -> str:
    return f"{errors[0].error} ×{errors[0].count:,}" if errors else "-"


def reaped_lines(
    groups: Sequence[tuple[str, Sequence[str]]],
    jobs: Mapping[str, JobRow],
    style: Style,
    shown: int = 20,
) -> list[str]:
    """What ``reap`` did: counts, then the first ``shown`` jobs of each group as a table.

    Args:
        groups: ``(label, job ids)`` such as ``("crashed", [...])``.
        jobs: The rows of the listed ids, read after reaping; an id without one shows ``-``.
    """
    lines = [", ".join(f"{len(ids):,} {label}" for label, ids in groups)]
    rows = []
    for label, ids in groups:
        for job_id in ids[:shown]:
            job = jobs.get(job_id)
            rows.append(
                [
                    style.state(job.state if job else label, label),
                    job_id,
                    job.name if job else "-",
                    (job.root_job_id or "?") if job else "-",
                    (job.queue or "-") if job else "-",
                ]
            )
    if rows:
        lines += table(["reaped", "job id", "job", "run", "queue"], rows, style)
    lines += [f"… {len(ids) - shown:,} more {label}" for label, ids in groups if len(ids) > shown]
    return lines


def ambiguous_message(error: AmbiguousJobIdError) -> str:
    """``'7d1e' matches several jobs: 7d1e01 (PageJob), ...``: one line to pick the right one from."""
    listed = ", ".join(f"{job.job_id} ({job.name})" for job in error.candidates)
    more = ", … and more" if error.more else ""
    return f"{error.prefix!r} matches several jobs: {listed}{more}; give more of the id"


# Fitting a terminal.

_ANSI_OR_CHAR = re.compile(r"\x1b\[[0-9;]*m|.", re.DOTALL)
_RESET = "\x1b[0m"


def columns(text: str) -> int:
    """Terminal columns ``text`` takes: wide characters two, combining ones and ANSI codes none."""
    if text.isascii():
        return len(_ANSI.sub("", text))
    return sum(_char_columns(c) for c in _ANSI_OR_CHAR.findall(text))


def _char_columns(char: str) -> int:
    if len(char) != 1:  # an ANSI code
        return 0
    if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def fit(lines: Iterable[str], width: int) -> list[str]:
    """``lines`` cut to ``width`` columns, each cut one ending in ``…``, so none wraps.

    Only the ends of lines go, so the guides of a tree and the first columns of a table stay
    where they were; an ANSI colour open at the cut is closed.
    """
    width = max(width, 2)
    return [line if columns(line) <= width else _cut(line, width) for line in lines]


def _cut(line: str, width: int) -> str:
    kept: list[str] = []
    used = 0
    painted = False
    for piece in _ANSI_OR_CHAR.findall(line):
        if len(piece) != 1:
            kept.append(piece)
            painted = piece != _RESET
            continue
        size = _char_columns(piece)
        if used + size > width - 1:
            break
        kept.append(piece)
        used += size
    return "".join(kept) + "…" + (_RESET if painted else "")


def dump_json(value: object, out: TextIO) -> None:
    """Pretty JSON with a final newline (``value`` already made of JSON types)."""
    json.dump(value, out, ensure_ascii=False, indent=2)
    out.write("\n")
