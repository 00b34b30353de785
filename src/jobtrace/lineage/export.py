"""Writing a job tree out as JSON or CSV, and query results as plain JSON values.

Flat exports stream the tree in batches, so exporting a 100k-job run holds one batch in memory;
the nested JSON form has to hold the whole tree to hang children under their parents. It is
written without recursion, so a tree of any depth or with parent cycles is written whole, each job
once.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Literal, TextIO

from jobtrace.lineage.queries import JobRow, LineageStore

ExportFormat = Literal["json", "csv"]
FORMATS: tuple[ExportFormat, ...] = ("json", "csv")
#: Columns of a flat export, in schema order.
COLUMNS = tuple(f.name for f in dataclasses.fields(JobRow))
#: Rows between two progress reports.
PROGRESS_EVERY = 1000

ProgressCallback = Callable[[int, int], None]


def jsonable(value: Any) -> Any:
    """``value`` as JSON types: dataclasses become objects, times ISO 8601 strings, tuples lists."""
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    return value


def job_record(job: JobRow) -> dict[str, Any]:
    """One job as a flat JSON object."""
    return {
        name: value.isoformat() if isinstance(value, datetime) else value
        for name, value in ((name, getattr(job, name)) for name in COLUMNS)
    }


def export_tree(
    store: LineageStore,
    job_id: str,
    out: TextIO,
    fmt: ExportFormat = "json",
    *,
    nested: bool = False,
    on_progress: ProgressCallback | None = None,
) -> int:
    """Write the subtree under ``job_id`` to ``out`` and return how many jobs it held.

    Args:
        fmt: ``json`` (an object with a ``jobs`` list, or the nested tree) or ``csv`` (one row per
            job, header first).
        nested: JSON only: the anchor job with a ``children`` list in every job, recursively
            (see :func:`write_nested_json`).
        on_progress: Called with ``(jobs written, jobs in the tree)`` every thousand jobs and
            at the end.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "csv" and nested:
        raise ValueError("a CSV export is flat: nested needs the JSON format")
    total = store.count_tree(job_id)  # raises for an unknown id before anything is written
    jobs = _counting(store.iter_tree(job_id), total, on_progress)
    if fmt == "csv":
        return write_csv(jobs, out)
    if nested:
        return write_nested_json(jobs, out, job_id)
    return write_flat_json(jobs, out, job_id)


def write_flat_json(jobs: Iterable[JobRow], out: TextIO, job_id: str) -> int:
    """``{"job_id": ..., "jobs": [...]}``, one job per line, with parent ids to rebuild the tree."""
    out.write(f'{{"job_id": {json.dumps(job_id)}, "jobs": [')
    count = 0
    for job in jobs:
        out.write(",\n" if count else "\n")
        out.write(json.dumps(job_record(job), ensure_ascii=False))
        count += 1
    out.write("\n]}\n")
    return count


def write_nested_json(jobs: Iterable[JobRow], out: TextIO, job_id: str | None = None) -> int:
    """The anchor job (``job_id``, else the first) with its descendants under ``children``.

    Jobs may come in any order. Each is written once, one per line, at any depth: a job whose
    parent link leads back to it hangs only where it was first reached. Jobs of the export that do
    not hang under the anchor (their parent is outside it, or they form a cycle of their own) are
    listed, each with what hangs under it, in the anchor's ``unattached`` list, present only then.
    A reader in Python needs a recursion limit above the tree's depth to load a very deep one.
    """
    records: dict[str, dict[str, Any]] = {job.job_id: job_record(job) for job in jobs}
    if not records:
        out.write("null\n")
        return 0
    anchor = job_id if job_id in records else next(iter(records))
    children: dict[str, list[str]] = {}
    for child, record in records.items():
        parent = record["parent_job_id"]
        if parent in records and child != anchor:
            children.setdefault(parent, []).append(child)
    written: set[str] = set()
    _write_subtree(anchor, records, children, written, out)
    unattached = [job for job in records if job not in written]
    if unattached:
        listed = False
        out.write(', "unattached": [')
        for job in unattached:
            if job in written:
                continue
            out.write(",\n" if listed else "\n")
            listed = True
            _write_subtree(_topmost(job, records, written), records, children, written, out)
            out.write("}")
        out.write("\n]")
    out.write("}\n")
    return len(records)


def _write_subtree(
    top: str,
    records: Mapping[str, Mapping[str, Any]],
    children: Mapping[str, list[str]],
    written: set[str],
    out: TextIO,
) -> None:
    """``top`` and everything under it not written yet, all but ``top``'s closing brace.

    A stack of the children still to write at each level, instead of recursion.
    """
    written.add(top)
    out.write(_opening(records[top]))
    levels: list[tuple[Iterator[str], list[bool]]] = [(iter(children.get(top, ())), [False])]
    while levels:
        kids, started = levels[-1]
        kid = next((k for k in kids if k not in written), None)
        if kid is None:
            levels.pop()
            out.write("\n]" if started[0] else "]")
            if levels:
                out.write("}")
            continue
        out.write(",\n" if started[0] else "\n")
        started[0] = True
        written.add(kid)
        out.write(_opening(records[kid]))
        levels.append((iter(children.get(kid, ())), [False]))


def _opening(record: Mapping[str, Any]) -> str:
    """A job's object up to the opening bracket of its ``children``."""
    return json.dumps(record, ensure_ascii=False)[:-1] + ', "children": ['


def _topmost(job: str, records: Mapping[str, Mapping[str, Any]], written: set[str]) -> str:
    """The highest job not written yet that ``job`` hangs under, stopping where a cycle closes."""
    seen = {job}
    while True:
        parent = records[job]["parent_job_id"]
        if parent not in records or parent in written or parent in seen:
            return job
        seen.add(parent)
        job = parent


def write_csv(jobs: Iterable[JobRow], out: TextIO) -> int:
    """One row per job, every column, times in ISO 8601, missing values empty."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    count = 0
    for job in jobs:
        record = job_record(job)
        writer.writerow(["" if record[name] is None else record[name] for name in COLUMNS])
        count += 1
    return count


def _counting(
    jobs: Iterable[JobRow], total: int, on_progress: ProgressCallback | None
) -> Iterable[JobRow]:
    if on_progress is None:
        yield from jobs
        return
    done = 0
    for job in jobs:
        yield job
        done += 1
        if done % PROGRESS_EVERY == 0:
            on_progress(done, total)
    on_progress(done, total)
