"""The dashboard's HTML: one function per page, from a view to a string; no database access here.

Every value from the store (ids, names, args, errors) is hostile until escaped, so text only
reaches the page through :func:`_e` and URLs only through :mod:`jobtrace.web.links` then
:func:`_e`. Words and marks are those of the command line (stuck ⚠, failing ✗, ``jobtrace.cli.render``).
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterable, Mapping
from datetime import datetime
from http import HTTPStatus

from jobtrace.cli.render import FAILING, STATE_ORDER, STUCK, short, span, state_order, when
from jobtrace.lineage.queries import (
    FailureGroup,
    FailureSample,
    JobRow,
    Progress,
    RunSummary,
    StuckStage,
)
from jobtrace.web.links import Links, job_path, run_path
from jobtrace.web.views import JobView, RunsView, RunView

__all__ = ["error_page", "job_page", "run_page", "runs_page"]

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem;color:#222;max-width:90rem}
header{margin-bottom:1rem}header a{font-weight:bold;text-decoration:none}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.5rem}
table{border-collapse:collapse;margin:.5rem 0}
th,td{border-bottom:1px solid #ddd;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre,.id{font-family:ui-monospace,monospace;font-size:13px}
pre{white-space:pre-wrap;word-break:break-all;background:#f7f7f7;padding:.3rem;margin:0}
ul,ol{margin:.3rem 0;padding-left:1.4rem}
.failing,.s-failed,.s-discarded,.s-crashed{color:#b00020}
.stuck,.s-queued,.s-stalled,.s-retrying{color:#a66300}
.s-running{color:#0a6a8a}.s-succeeded,.ok{color:#1b7a2b}
.s-scheduled,.s-skipped,.s-cancelled,.muted,footer{color:#777}
.mark{font-weight:bold}footer{margin-top:2rem}
"""
_RELATION = {
    "self": "the job itself",
    "ancestor": "an ancestor",
    "descendant": "a descendant",
    "sibling": "an earlier sibling, as a failed dependency would be",
}
_MARKS = {"stuck": f"{STUCK} stuck", "failing": f"{FAILING} failing"}
_KNOWN_STATES = frozenset(STATE_ORDER)
_LONG_FIELDS = frozenset({"args", "error_message", "reason"})


# The pages.


def runs_page(view: RunsView, links: Links) -> str:
    """``/``: the latest runs, each with its health and counts per state."""
    of = f" of {_code(view.name)}" if view.name else ""
    intro = f"<p class=muted>The latest {view.limit:,} runs{of}, newest first.</p>"
    if not view.runs:
        table = "<p>No runs recorded.</p>"
    else:
        table = _table(
            ["root", "job", "started", "jobs", "health", "states", "trace"],
            (_run_row(run, links) for run in view.runs),
        )
    lookup = (
        '<form action="/jobs" method="get"><label>Job id <input name="id" required></label>'
        " <button>Open</button></form>"
    )
    return _page("Runs", f"<h1>Runs</h1>{intro}{table}{lookup}", "/api/runs")


def run_page(view: RunView, links: Links) -> str:
    """``/runs/ID``: the per-stage table, stuck stages, failures grouped by error."""
    overview = view.overview
    root = overview.root
    marks = []
    if overview.stuck:
        stuck = len({(s.depth, s.name) for s in overview.stuck})
        marks.append(_mark("stuck", f"{STUCK} {stuck} stuck"))
    if overview.failing:
        marks.append(_mark("failing", f"{FAILING} {len(overview.failing)} failing"))
    stages = len({(row.depth, row.name) for row in view.rows})
    summary = f"{view.total:,} jobs in {stages:,} stages" + "".join(f" · {m}" for m in marks)
    body = [
        f"<h1>Run {_e(root.name)} <span class=id>{_e(root.job_id)}</span></h1>",
        f"<p>{_job_summary(root, links)}</p>",
        f"<p>{summary}</p>",
        "<h2>Stages</h2>",
        _table(
            ["depth", "job", "state", "count", "flag"],
            (
                _tr(
                    [
                        _num(row.depth),
                        _e(row.name),
                        _state(row.state),
                        _num(row.count),
                        _mark(row.flag, _MARKS[row.flag]) if row.flag else "",
                    ],
                    row.flag,
                    right=(0, 3),
                )
                for row in view.rows
            ),
        ),
        f"<h2 class=stuck>{STUCK} Stuck</h2>",
        _stuck_section(overview.stuck, view.thresholds.stuck_after),
        f"<h2 class=failing>{FAILING} Failures by error</h2>",
        _failures_section(view, links),
    ]
    return _page(f"Run {root.name}", "".join(body), run_path(root.job_id, api=True))


def job_page(view: JobView, links: Links) -> str:
    """``/jobs/ID``: the job's path and cause, its children, its attempts, every field."""
    job = view.job
    why = view.why
    body = [
        f"<h1>{_e(job.name)} <span class=id>{_e(job.job_id)}</span> {_state(job.state)}</h1>",
        f"<p>{_job_summary(job, links)}</p>",
        "<h2>Path</h2>",
        "<ol class=path>",
        *(
            f"<li>{_job_link(row)} {_state(row.state)}"
            + (" <b>← this job</b>" if row.job_id == job.job_id else "")
            + "</li>"
            for row in why.path
        ),
        "</ol>",
        "<h2>Cause</h2>",
        _cause(view, links),
        "<h2>Children</h2>",
        _children(view, links),
        "<h2>Attempts</h2>",
        _attempts(view, links),
        "<h2>Fields</h2>",
        _table(["field", "value"], (_tr([_e(name), value]) for name, value in _fields(job, links))),
    ]
    return _page(f"{job.name} {job.job_id}", "".join(body), job_path(job.job_id, api=True))


def error_page(status: HTTPStatus, message: str) -> str:
    """An error as a page: the status and one sentence, never a traceback."""
    body = (
        f"<h1>{status.value} {_e(status.phrase)}</h1><p>{_e(message)}</p>"
        '<p><a href="/">All runs</a></p>'
    )
    return _page(status.phrase, body, None)


# Parts of pages.


def _run_row(run: RunSummary, links: Links) -> str:
    health = {
        "failing": _mark("failing", f"{FAILING} failing"),
        "active": "<span class=s-running>active</span>",
        "ok": "<span class=ok>ok</span>",
    }[run.health]
    cells = [
        _a(run_path(run.root.job_id), run.root.job_id, "id"),
        _e(run.root.name),
        _e(when(run.root.enqueued_at or run.root.started_at)),
        _num(run.total),
        health,
        _state_counts(run.states),
        _trace(run.root.trace_id, links),
    ]
    return _tr(cells, "failing" if run.health == "failing" else None, right=(3,))


def _job_summary(job: JobRow, links: Links) -> str:
    """State, run, trace, times and items of a job, in one line."""
    parts = [_state(job.state) + (f": {_e(job.error)}" if job.error else "")]
    if not job.is_root:
        parts.append(f"run {_a(run_path(job.root_job_id), job.root_job_id, 'id')}")
    else:
        parts.append(f"root of {_a(run_path(job.job_id), 'its run')}")
    parts.append(f"trace {_trace(job.trace_id, links)}")
    if job.enqueued_at:
        parts.append(f"enqueued {_e(when(job.enqueued_at))}")
    if job.duration is not None:
        parts.append(f"took {_e(span(job.duration))}")
    if job.items_total is not None:  # what the job meant to do: did it schedule every page?
        parts.append(f"items {job.items_processed or 0:,}/{job.items_total:,}")
    return " · ".join(parts)


def _stuck_section(stuck: Iterable[StuckStage], threshold: float) -> str:
    items = [_stuck_item(item) for item in stuck]
    if not items:
        return (
            "<p class=muted>Nothing stuck: no stage has active jobs idle for more than"
            f" {_e(span(threshold))}.</p>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def _stuck_item(item: StuckStage) -> str:
    waiting = ", ".join(f"{item.states[s]:,} {_e(s)}" for s in state_order(item.states))
    samples = ", ".join(
        f"{_job_link_id(job_id)} {_code(short(args, 80)) if args else ''}".rstrip()
        for job_id, args in zip(item.sample_job_ids, item.sample_args, strict=False)
    )
    return (
        f"<li class=stuck>{_mark('stuck', STUCK)} <b>{_e(item.name)}</b> (depth {item.depth}):"
        f" {waiting} on queue {_code(item.queue or '-')}, no progress since"
        f" {_e(when(item.since))} ({_e(span(item.idle_seconds))});"
        f" last progress {_e(when(item.last_progress_at))},"
        f" oldest enqueued {_e(when(item.oldest_enqueued_at))}"
        + (f"; e.g. {samples}" if samples else "")
        + "</li>"
    )


def _failures_section(view: RunView, links: Links) -> str:
    groups = view.overview.failures
    if not groups:
        return "<p class=muted>Nothing failed in this run.</p>"
    failing = {(stage.depth, stage.name) for stage in view.overview.failing}
    rows = []
    for group in groups:
        key = (group.depth, group.name)
        total = view.stage_total(*key)
        share = f"{group.count / total:.0%}" if total else "-"
        stage = _e(group.name) + (" " + _mark("failing", FAILING) if key in failing else "")
        rows.append(
            _tr(
                [
                    _num(group.depth),
                    stage,
                    _code(group.error),
                    _num(group.count),
                    share,
                    _e(when(group.first_at)),
                    _e(when(group.last_at)),
                    _samples(group, links),
                ],
                "failing" if key in failing else None,
                right=(0, 3),
            )
        )
    headers = ["depth", "job", "error", "jobs", "share", "first", "last", "e.g."]
    return _table(headers, rows)


def _samples(group: FailureGroup, links: Links) -> str:
    return "<ul>" + "".join(_sample(sample, links) for sample in group.samples) + "</ul>"


def _sample(sample: FailureSample, links: Links) -> str:
    text = f"{_job_link_id(sample.job_id)} {_state(sample.state)}"
    if sample.args:
        text += f" {_code(short(sample.args, 80))}"
    if sample.parent_job_id:
        text += f" under {_e(sample.parent_name or '?')} {_job_link_id(sample.parent_job_id)}"
        if sample.parent_args:
            text += f" {_code(short(sample.parent_args, 60))}"
    if sample.trace_id:
        text += f" · trace {_trace(sample.trace_id, links)}"
    if sample.error_message:
        text += f"<br><span class=muted>{_e(short(sample.error_message, 160))}</span>"
    return f"<li>{text}</li>"


def _cause(view: JobView, links: Links) -> str:
    cause = view.why.cause
    if cause is None:
        return "<p class=muted>Nothing failed in this job, above it, below it or before it.</p>"
    relation = _RELATION[view.why.relation or "self"]
    message = cause.error_message or cause.reason
    if message == cause.error:
        message = None  # a reason that is the error itself: said once already
    return (
        f"<p>{_e(relation)}: {_job_link(cause)} {_state(cause.state)}"
        + (f": {_e(cause.error)}" if cause.error else "")
        + f" · finished {_e(when(cause.finished_at))} · trace {_trace(cause.trace_id, links)}</p>"
        + (f"<pre>{_e(message)}</pre>" if message else "")
        + (f"<p>args</p><pre>{_e(cause.args)}</pre>" if cause.args else "")
    )


def _children(view: JobView, links: Links) -> str:
    p = view.progress
    if p.total == 0:
        return "<p class=muted>No children.</p>"
    parts = [_progress_line(p)]
    if p.problems:
        parts.append("<ul>")
        for job in p.problems:
            reason = job.error_message or job.reason
            parts.append(
                f"<li class=failing>{_mark('failing', f'{FAILING} {job.state}')}"
                f" {_job_link_id(job.job_id)}"
                + (f" {_code(short(job.args, 120))}" if job.args else "")
                + (f" ({_e(short(reason, 80))})" if reason else "")
                + "</li>"
            )
        parts.append("</ul>")
    headers = ["job id", "job", "state", "queue", "started", "took", "error", "args", "trace"]
    rows = (
        _tr(
            [
                _job_link_id(job.job_id),
                _e(job.name),
                _state(job.state),
                _e(job.queue or "-"),
                _e(when(job.started_at)),
                _e(span(job.duration)),
                _e(job.error or "-"),
                _code(short(job.args, 80)) if job.args else "-",
                _trace(job.trace_id, links),
            ]
        )
        for job in view.children
    )
    parts.append(_table(headers, rows))
    if view.more_children:
        parts.append(f"<p class=muted>… {view.more_children:,} more (?limit=)</p>")
    return "".join(parts)


def _progress_line(p: Progress) -> str:
    failed = f"{p.failed:,} failed"
    crashed = f"{p.crashed:,} crashed"
    return (
        f"<p class=progress>{p.done:,}/{p.total:,} children done ({p.fraction:.1%})"
        f" · {p.running:,} running · {p.pending:,} pending · {p.succeeded:,} succeeded"
        f" · {_mark('failing', failed) if p.failed else failed}"
        f" · {_mark('failing', crashed) if p.crashed else crashed}</p>"
    )


def _attempts(view: JobView, links: Links) -> str:
    if not view.why.attempts:
        return "<p class=muted>No attempt history recorded.</p>"
    headers = ["#", "state", "error", "host", "started", "finished", "trace"]
    rows = (
        _tr(
            [
                _num(a.attempt),
                _state(a.state),
                _e(a.error_type or a.reason or "-"),
                _e(a.host or "-") + (f" pid {a.pid}" if a.pid is not None else ""),
                _e(when(a.started_at)),
                _e(when(a.finished_at)),
                _trace(a.trace_id, links),
            ],
            right=(0,),
        )
        for a in view.why.attempts
    )
    return _table(headers, rows)


def _fields(job: JobRow, links: Links) -> Iterable[tuple[str, str]]:
    """Every column of the job, formatted; ids link to their job, trace ids to the trace."""
    for field in dataclasses.fields(job):
        value = getattr(job, field.name)
        if value is None:
            yield field.name, "<span class=muted>-</span>"
        elif field.name in ("parent_job_id", "root_job_id"):
            yield field.name, _job_link_id(str(value))
        elif field.name == "trace_id":
            yield field.name, _trace(str(value), links)
        elif field.name in _LONG_FIELDS:
            yield field.name, f"<pre>{_e(value)}</pre>"
        elif isinstance(value, datetime):
            yield field.name, _e(when(value))
        else:
            yield field.name, _e(value)


# Small pieces.


def _page(title: str, body: str, api: str | None) -> str:
    twin = f'JSON: <a href="{_e(api)}">{_e(api)}</a>' if api else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} · jobtrace</title><style>{_CSS}</style></head><body>"
        '<header><a href="/">jobtrace</a></header>'
        f"<main>{body}</main><footer>{twin}</footer></body></html>\n"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _a(href: str, text: str, cls: str | None = None) -> str:
    attr = f' class="{_e(cls)}"' if cls else ""
    return f'<a href="{_e(href)}"{attr}>{_e(text)}</a>'


def _code(text: str) -> str:
    return f"<code>{_e(text)}</code>"


def _num(value: int) -> str:
    return f"{value:,}"


def _job_link(job: JobRow) -> str:
    return f"{_e(job.name)} {_job_link_id(job.job_id)}"


def _job_link_id(job_id: str) -> str:
    return _a(job_path(job_id), job_id, "id")


def _trace(trace_id: str | None, links: Links) -> str:
    url = links.trace(trace_id)
    if url is None or trace_id is None:
        return "<span class=muted>-</span>"
    return f'<a href="{_e(url)}" class="id trace" rel="noreferrer">{_e(trace_id)}</a>'


def _state(state: str) -> str:
    """A state coloured by its class; an unknown state (a newer jobtrace's) gets no class."""
    cls = f"s-{state}" if state in _KNOWN_STATES else "s-other"
    return f'<span class="{cls}">{_e(state)}</span>'


def _state_counts(states: Mapping[str, int]) -> str:
    return " · ".join(f"{_state(s)} {states[s]:,}" for s in state_order(states))


def _mark(kind: str, text: str) -> str:
    return f'<span class="{kind} mark">{_e(text)}</span>'


def _tr(cells: Iterable[str], cls: str | None = None, right: Iterable[int] = ()) -> str:
    """A row of cells already in HTML; the cells at indexes in ``right`` (numbers) flush right."""
    attr = f' class="{cls}"' if cls else ""
    flush = set(right)
    tds = "".join(
        f"<td class=n>{cell}</td>" if index in flush else f"<td>{cell}</td>"
        for index, cell in enumerate(cells)
    )
    return f"<tr{attr}>{tds}</tr>"


def _table(headers: Iterable[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
