"""``jobtrace prune``: delete whole runs idle longer than their age limit, from cron on any machine.

Ages are durations (``7d``, ``12h``, ``90d``). Bad input is one line on stderr and exit status 2,
like a usage error; nothing is deleted then. See ``docs/lineage.md``.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from jobtrace.lineage.prune import BATCH_SIZE, PAUSE, PruneResult, format_duration, parse_duration

if TYPE_CHECKING:
    from jobtrace.cli.commands import Context

HELP = "delete whole runs idle longer than their age limit (from cron)"
#: Its examples for ``--help``: (the line after ``jobtrace``, what it does).
EXAMPLES = [
    ("prune --keep 7d --keep-failing 90d --dry-run", "what each rule would delete"),
    ("prune --keep 7d --keep-failing 90d", "clean runs idle 7 days go, runs with failures 90"),
    ("prune --keep 7d --keep-for NightlyReport=1y", "one root job name's runs kept a year"),
]


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``jobtrace prune`` (checked by :func:`cmd_prune`, for one-line errors)."""
    parser.add_argument(
        "--keep",
        metavar="AGE",
        help="keep runs without failures for AGE after their last activity (7d, 12h; required)",
    )
    parser.add_argument(
        "--keep-failing",
        metavar="AGE",
        help="keep runs with a failed, discarded, crashed or lost job for AGE (as --keep)",
    )
    parser.add_argument(
        "--keep-for",
        action="append",
        default=[],
        metavar="NAME=AGE",
        help="--keep for the runs whose root job is NAME (repeatable)",
    )
    parser.add_argument(
        "--keep-failing-for",
        action="append",
        default=[],
        metavar="NAME=AGE",
        help="--keep-failing for the runs whose root job is NAME (repeatable)",
    )
    parser.add_argument(
        "--batch-size",
        default=str(BATCH_SIZE),
        metavar="N",
        help=f"jobs deleted per transaction with their attempts; a bigger run alone ({BATCH_SIZE})",
    )
    parser.add_argument(
        "--pause",
        default=str(PAUSE),
        metavar="SECONDS",
        help=f"wait between transactions, so writers and readers go on ({PAUSE:g})",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what each rule would delete, delete nothing"
    )


class _BadInput(ValueError):
    """An option value that makes no sense: one line, exit status 2."""


def _age(option: str, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise _BadInput(f"{option}: {error}") from None


def _by_name(option: str, values: list[str]) -> dict[str, float]:
    ages = {}
    for value in values:
        name, sep, age = value.rpartition("=")
        if not sep or not name:
            raise _BadInput(f"{option}: expected NAME=AGE (like ReportJob=30d), got {value!r}")
        ages[name] = _age(option, age)
    return ages


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`jobtrace.lineage.prune.prune`, checked."""
    if args.keep is None:
        raise _BadInput("--keep AGE is required (like --keep 7d --keep-failing 90d)")
    try:
        batch_size = int(args.batch_size)
    except ValueError:
        raise _BadInput(f"--batch-size: not a whole number: {args.batch_size!r}") from None
    if batch_size < 1:
        raise _BadInput(f"--batch-size: must be at least 1: {args.batch_size!r}")
    try:
        pause = float(args.pause)
    except ValueError:
        raise _BadInput(f"--pause: not a number of seconds: {args.pause!r}") from None
    if not math.isfinite(pause) or pause < 0:
        raise _BadInput(f"--pause: must be 0 or more seconds: {args.pause!r}")
    return {
        "keep": _age("--keep", args.keep),
        "keep_failing": None
        if args.keep_failing is None
        else _age("--keep-failing", args.keep_failing),
        "keep_by_name": _by_name("--keep-for", args.keep_for),
        "keep_failing_by_name": _by_name("--keep-failing-for", args.keep_failing_for),
        "batch_size": batch_size,
        "pause": pause,
        "dry_run": args.dry_run,
    }


def cmd_prune(ctx: Context) -> int:
    """Delete (or with ``--dry-run`` count) the runs past their age, per rule."""
    from jobtrace.lineage.prune import prune

    try:
        options = _options(ctx.args)
    except _BadInput as error:
        ctx.err.write(f"jobtrace prune: {error}\n")
        return 2
    ctx.require_existing_store()
    show_progress = ctx.err.isatty()
    verb = "counting" if ctx.args.dry_run else "pruning"

    def on_progress(so_far: PruneResult) -> None:
        ctx.err.write(
            f"\r{verb}: {so_far.runs:,} runs, {so_far.jobs:,} jobs, {so_far.attempts:,} attempts"
        )
        ctx.err.flush()

    result = prune(ctx.url, on_progress=on_progress if show_progress else None, **options)
    if show_progress:
        ctx.err.write("\n")
    if ctx.args.json:
        ctx.print_json(_json(result))
    else:
        ctx.print(lines(result))
    return 0


def lines(result: PruneResult) -> list[str]:
    """The summary, then one line per rule, then the runs kept because they changed."""
    head = "would prune" if result.dry_run else "pruned"
    out = [f"{head} {_counts(result.runs, result.jobs, result.attempts)}"]
    for rule in result.by_rule:
        out.append(f"  {rule.label}: {_counts(rule.runs, rule.jobs, rule.attempts)}")
    if result.changed:
        out.append(f"kept {result.changed:,} runs written to while being pruned")
    return out


def _counts(runs: int, jobs: int, attempts: int) -> str:
    return f"{runs:,} runs ({jobs:,} jobs, {attempts:,} attempts)"


def _json(result: PruneResult) -> dict[str, Any]:
    return {
        "dry_run": result.dry_run,
        "runs": result.runs,
        "jobs": result.jobs,
        "attempts": result.attempts,
        "changed": result.changed,
        "rules": [
            {
                "name": rule.name,
                "outcome": rule.outcome,
                "keep": format_duration(rule.keep),
                "keep_seconds": rule.keep,
                "runs": rule.runs,
                "jobs": rule.jobs,
                "attempts": rule.attempts,
            }
            for rule in result.by_rule
        ],
    }
