"""Retention: whole runs deleted once they are old enough, in small transactions beside live writers.

A run (every job with one ``root_job_id``, their attempts, and the jobs without a known root that
hang under them) is deleted whole or not at all. It qualifies when none of its jobs is active and
none shows activity (any of its times) within its age limit, which depends on its outcome and on
its root job's name. Each transaction deletes a few whole runs under a per-row guard that the run
is still old, then checks that nothing of those runs is left: a run that a writer touched in the
meantime (a late child, a late outcome) is rolled back whole and kept. So prune is idempotent and
safe from cron on any machine, beside writers, readers and another prune. On SQLite, whose writers
take turns on one write lock, a transaction takes the lock up front and prune holds it at most
``SQLITE_LOCK_SHARE`` of the time (a duty cycle). See ``docs/lineage.md``.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from opentelemetry.instrumentation.utils import suppress_instrumentation
from sqlalchemy import (
    ColumnElement,
    Table,
    and_,
    case,
    delete,
    func,
    inspect,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from jobtrace.exceptions import StoreError
from jobtrace.lineage.models import Attempt, Base, Job
from jobtrace.lineage.store import create_store_engine, safe_url
from jobtrace.records import FAILED_STATES, JobState

__all__ = [
    "BATCH_SIZE",
    "PAUSE",
    "SQLITE_LOCK_SHARE",
    "PruneResult",
    "RuleCount",
    "format_duration",
    "parse_duration",
    "prune",
]

#: Jobs deleted per transaction (with their attempts); a run larger than this is deleted alone.
BATCH_SIZE = 1000
#: Seconds to wait after each transaction, so writers and readers get the store in between.
PAUSE = 0.1
#: On SQLite, the most of the time a prune holds the store's one write lock: after a transaction
#: that held it ``t`` seconds, the next one begins ``t / SQLITE_LOCK_SHARE`` seconds after this
#: one began at the earliest (its reads and ``pause`` count toward the wait).
SQLITE_LOCK_SHARE = 0.1

JOBS: Table = Base.metadata.tables[Job.__tablename__]
ATTEMPTS: Table = Base.metadata.tables[Attempt.__tablename__]

_ACTIVE = (
    JobState.QUEUED.value,
    JobState.RUNNING.value,
    JobState.RETRYING.value,
    JobState.STALLED.value,
)
_FAILURES = tuple(sorted(state.value for state in FAILED_STATES))
#: Every time a row carries: a run's last activity is the latest of them over its rows.
_TIMES = ("updated_at", "enqueued_at", "started_at", "finished_at", "heartbeat_at", "lost_at")
_SCAN_PAGE = 2000  # (time, run) entries read per step of the scan
_DECIDE_CHUNK = 200  # runs aggregated per query
_IN_CHUNK = 500  # ids per IN list
_SEEN = 200_000  # runs remembered per pass, so a kept run is not judged again at each of its rows
_ATTEMPTS = 5  # tries of one transaction that hit a deadlock or SQLite's lock timeout
_PG_LOCK_KEY = 0x6A747072  # "jtpr": prunes on PostgreSQL take turns per transaction
_INDEX = "ix_jobtrace_jobs_updated_at_root_job_id"  # schema revision 0005

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdwy])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0, "y": 31_536_000.0}

Outcome = Literal["clean", "failing"]


def parse_duration(value: str) -> float:
    """Seconds in a duration such as ``7d``, ``90d``, ``12h``, ``1d12h`` or ``1.5w``.

    Units: s, m, h, d, w, y (365 days). A bare number is refused: ``--keep 7`` meaning seven
    seconds would delete almost everything.

    Raises:
        ValueError: Not a duration, or not more than zero.
    """
    text_value = value.strip().lower()
    if not text_value or _DURATION.sub("", text_value):
        raise ValueError(f"not a duration (like 7d, 12h, 90d): {value!r}")
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text_value))
    if seconds <= 0:
        raise ValueError(f"a duration must be more than 0: {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` the way a user would write it (``7d``, ``90d``, ``12h``, ``45s``)."""
    for unit in ("y", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class RuleCount:
    """What one rule deleted (or, in a dry run, would delete)."""

    #: The root job name the rule is for; ``None`` for every other run.
    name: str | None
    #: ``clean`` (no failures) or ``failing`` (a job failed, was discarded, crashed, or lost track).
    outcome: Outcome
    #: Seconds since their last activity after which such runs go.
    keep: float
    runs: int = 0
    jobs: int = 0
    attempts: int = 0

    @property
    def label(self) -> str:
        """``failing runs of ReportJob idle for 90d`` and the like."""
        which = "runs" if self.name is None else f"runs of {self.name}"
        return f"{self.outcome} {which} idle for {format_duration(self.keep)}"


@dataclass(frozen=True)
class PruneResult:
    """What a prune deleted, in total and per rule.

    In a dry run nothing is deleted and the counts say what would have been.
    """

    runs: int
    jobs: int
    attempts: int
    by_rule: tuple[RuleCount, ...]
    #: Runs that qualified but were written to while being deleted: rolled back and kept whole.
    changed: int = 0
    dry_run: bool = False


@dataclass(frozen=True)
class _Rule:
    name: str | None
    keep: float
    keep_failing: float


@dataclass
class _Run:
    """A candidate run: its aggregates at the time it was judged."""

    key: str  # the root id, or the top job of a subtree no record gave a root
    root_job_id: str | None  # ``None`` for such a subtree (its ``extra`` jobs are the run)
    jobs: int = 0
    active: int = 0
    failing: int = 0
    last: datetime | None = None
    #: Jobs without a root that belong to the run (deleted with it), by id.
    extra: tuple[str, ...] = ()
    name: str | None = None


@dataclass
class _Tally:
    runs: int = 0
    jobs: int = 0
    attempts: int = 0


@dataclass
class _Pass:
    """One prune: its rules, its clock, and what it did so far."""

    rules: Mapping[str, _Rule]
    default: _Rule
    now: datetime
    dry_run: bool
    tallies: dict[tuple[str | None, Outcome], _Tally] = field(default_factory=dict)
    changed: int = 0

    def rule(self, run: _Run) -> tuple[_Rule, Outcome]:
        rule = self.rules.get(run.name, self.default) if run.name is not None else self.default
        return rule, "failing" if run.failing else "clean"

    def cutoff(self, run: _Run) -> datetime:
        rule, outcome = self.rule(run)
        keep = rule.keep_failing if outcome == "failing" else rule.keep
        return self.now - timedelta(seconds=keep)

    def qualifies(self, run: _Run) -> bool:
        # A run none of whose rows carries a time has no known age: kept.
        return (
            run.jobs > 0 and not run.active and run.last is not None and run.last < self.cutoff(run)
        )

    def count(self, run: _Run, jobs: int, attempts: int) -> None:
        rule, outcome = self.rule(run)
        tally = self.tallies.setdefault((rule.name, outcome), _Tally())
        tally.runs += 1
        tally.jobs += jobs
        tally.attempts += attempts

    def result(self) -> PruneResult:
        counts = []
        for rule in (self.default, *self.rules.values()):
            ages: tuple[tuple[Outcome, float], ...] = (
                ("clean", rule.keep),
                ("failing", rule.keep_failing),
            )
            for outcome, keep in ages:
                tally = self.tallies.get((rule.name, outcome), _Tally())
                counts.append(
                    RuleCount(rule.name, outcome, keep, tally.runs, tally.jobs, tally.attempts)
                )
        return PruneResult(
            runs=sum(c.runs for c in counts),
            jobs=sum(c.jobs for c in counts),
            attempts=sum(c.attempts for c in counts),
            by_rule=tuple(counts),
            changed=self.changed,
            dry_run=self.dry_run,
        )


def prune(
    url_or_engine: str | Engine | None = None,
    *,
    keep: float,
    keep_failing: float | None = None,
    keep_by_name: Mapping[str, float] | None = None,
    keep_failing_by_name: Mapping[str, float] | None = None,
    batch_size: int = BATCH_SIZE,
    pause: float = PAUSE,
    dry_run: bool = False,
    now: datetime | None = None,
    on_progress: Callable[[PruneResult], None] | None = None,
) -> PruneResult:
    """Delete whole runs whose last activity is older than their age limit.

    Args:
        url_or_engine: The store (``None``: ``JOBTRACE_DATABASE_URL``, else the local default).
        keep: Seconds a run without failures is kept after its last activity.
        keep_failing: Seconds a run with failures (a job failed, was discarded or crashed, or the
            store lost track of it) is kept; default ``keep``.
        keep_by_name: ``keep`` for the runs of one root job name.
        keep_failing_by_name: ``keep_failing`` for the runs of one root job name; default the
            longer of that name's ``keep`` and ``keep_failing``.
        batch_size: Jobs deleted per transaction, with their attempts (a bigger run alone).
        pause: Seconds to wait after each transaction, at least; on SQLite also until the
            write lock was held at most :data:`SQLITE_LOCK_SHARE` of the time (none at all if 0).
        dry_run: Count what each rule would delete, delete nothing.
        now: The prune's "now" (tests); else this machine's clock.
        on_progress: Called with the totals so far after each transaction (each step of a dry run).

    Raises:
        ValueError: An age that is not more than zero, a batch size under 1, a negative pause.
        StoreError: The store has no jobtrace schema, or one older than prune needs.
    """
    rules, default = _rules(keep, keep_failing, keep_by_name or {}, keep_failing_by_name or {})
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
    if not math.isfinite(pause) or pause < 0:
        raise ValueError(f"pause must be 0 or more seconds, got {pause!r}")
    state = _Pass(rules, default, now or datetime.now(timezone.utc), dry_run)
    engine = url_or_engine if isinstance(url_or_engine, Engine) else None
    own_engine = engine is None
    with suppress_instrumentation():
        if engine is None:
            engine = create_store_engine(url_or_engine if isinstance(url_or_engine, str) else None)
        try:
            _require_schema(engine)
            _Pruner(engine, state, batch_size, pause, on_progress).run()
        finally:
            if own_engine:
                engine.dispose()
    return state.result()


def _rules(
    keep: float,
    keep_failing: float | None,
    keep_by_name: Mapping[str, float],
    keep_failing_by_name: Mapping[str, float],
) -> tuple[dict[str, _Rule], _Rule]:
    _check_age("keep", keep)
    if keep_failing is None:
        keep_failing = keep
    _check_age("keep_failing", keep_failing)
    default = _Rule(None, keep, keep_failing)
    rules = {}
    for name in sorted({*keep_by_name, *keep_failing_by_name}):
        name_keep = keep_by_name.get(name, keep)
        _check_age(f"keep for {name!r}", name_keep)
        name_failing = keep_failing_by_name.get(name, max(name_keep, keep_failing))
        _check_age(f"keep_failing for {name!r}", name_failing)
        rules[name] = _Rule(name, name_keep, name_failing)
    return rules, default


def _require_schema(engine: Engine) -> None:
    """Refuse a store without the index prune walks: without it every step would scan the table."""
    if engine.dialect.name == "sqlite":
        found = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = :name"
    else:
        found = "SELECT 1 FROM pg_indexes WHERE indexname = :name"
    with _connect(engine) as conn:
        where = safe_url(engine.url.render_as_string(hide_password=False))
        if not inspect(conn).has_table(JOBS.name):
            raise StoreError(f"{where} has no jobtrace schema: run `jobtrace db upgrade`")
        if conn.execute(text(found), {"name": _INDEX}).first() is None:
            raise StoreError(
                f"{where} has an older jobtrace schema than prune needs (revision 0005):"
                " run `jobtrace db upgrade`"
            )


def _connect(engine: Engine) -> Connection:
    """A connection, retried a few times: a SQLite file may refuse one for a moment.

    SQLite answers "database is locked" at once, without its busy timeout, to a connection that
    opens while another process's last connection cleans up the WAL.
    """
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return engine.connect()
        except OperationalError:
            if attempt == _ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("not reached")  # pragma: no cover


def _check_age(what: str, seconds: float) -> None:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be more than 0 seconds, got {seconds!r}")


def _settled(cutoff: datetime) -> ColumnElement[bool]:
    """A job row that is not active and shows no activity since ``cutoff``."""
    return and_(
        JOBS.c.state.not_in(_ACTIVE),
        *(or_(JOBS.c[name].is_(None), JOBS.c[name] < cutoff) for name in _TIMES),
    )


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Changed(Exception):
    """Rows of a run being deleted were written meanwhile: the transaction is rolled back."""


class _Pruner:
    """One pass over the store: scan for old runs, judge them, delete the ones that qualify."""

    def __init__(
        self,
        engine: Engine,
        state: _Pass,
        batch_size: int,
        pause: float,
        on_progress: Callable[[PruneResult], None] | None,
    ) -> None:
        self.engine = engine
        self.state = state
        self.batch_size = batch_size
        self.pause = pause
        self.on_progress = on_progress
        self.postgres = engine.dialect.name == "postgresql"
        self.sqlite = engine.dialect.name == "sqlite"
        #: When (monotonic) the next SQLite write transaction may begin: the duty cycle.
        self.next_lock = 0.0
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.unrooted = _Unrooted({}, {})
        self.pending: list[_Run] = []
        self.pending_jobs = 0

    def run(self) -> None:
        with _connect(self.engine) as conn:
            self.unrooted = _unrooted(conn)
            # The scan can skip everything written since the most lenient cutoff.
            rules = (self.state.default, *self.state.rules.values())
            shortest = min(min(rule.keep, rule.keep_failing) for rule in rules)
            before = self.state.now - timedelta(seconds=shortest)
            keys = self.unrooted.orphans_keys()
            self._judge(conn, [], keys)
            for roots in _scan(conn, before):
                fresh = [root for root in roots if self._first_time(root)]
                for chunk in _chunks(fresh, _DECIDE_CHUNK):
                    self._judge(conn, list(chunk), [])
                    conn.rollback()  # end the read transaction: no snapshot held across deletes
        self._flush()

    def _first_time(self, key: str) -> bool:
        if key in self.seen:
            self.seen.move_to_end(key)
            return False
        self.seen[key] = None
        if len(self.seen) > _SEEN:
            self.seen.popitem(last=False)
        return True

    def _judge(self, conn: Connection, roots: list[str], orphan_keys: list[str]) -> None:
        runs = _aggregate(conn, roots, orphan_keys, self.unrooted)
        for run in runs:
            if not self.state.qualifies(run):
                continue
            if self.state.dry_run:
                self.state.count(run, run.jobs, _count_attempts(conn, run))
                continue
            if run.jobs >= self.batch_size:
                self._flush()  # a run as big as a batch goes in a transaction of its own
            self.pending.append(run)
            self.pending_jobs += run.jobs
            if self.pending_jobs >= self.batch_size:
                self._flush()
        if self.state.dry_run and runs and self.on_progress is not None:
            self.on_progress(self.state.result())

    def _flush(self) -> None:
        """Delete the pending runs in one transaction (one by one if one changed meanwhile)."""
        batch, self.pending, self.pending_jobs = self.pending, [], 0
        if not batch:
            return
        try:
            self._transaction(batch)
        except _Changed:
            for run in batch:
                self._retry_alone(run)
        if self.on_progress is not None:
            self.on_progress(self.state.result())
        if self.pause:
            time.sleep(self.pause)

    def _retry_alone(self, run: _Run) -> None:
        """Judge one run again from what the store holds now, and delete it alone if it still goes."""
        with _connect(self.engine) as conn:
            roots, orphans = ([], [run.key]) if run.root_job_id is None else ([run.key], [])
            fresh = _aggregate(conn, roots, orphans, self.unrooted)
        if not fresh or not fresh[0].jobs:
            return  # gone already: another prune deleted it
        if not self.state.qualifies(fresh[0]):
            self.state.changed += 1
            return
        try:
            self._transaction(fresh)
        except _Changed:
            self.state.changed += 1

    def _transaction(self, runs: list[_Run]) -> None:
        """Delete ``runs`` whole in one transaction, retried on a deadlock or a lock timeout."""
        for attempt in range(1, _ATTEMPTS + 1):
            self._wait_turn()
            try:
                with _connect(self.engine) as conn:
                    if self.sqlite:
                        counts = self._sqlite_transaction(conn, runs)
                    else:
                        with conn.begin():
                            if self.postgres:  # prunes take turns; writers are not blocked
                                conn.execute(
                                    text("SELECT pg_advisory_xact_lock(:key)"),
                                    {"key": _PG_LOCK_KEY},
                                )
                            counts = self._delete(conn, runs)
            except OperationalError:
                if attempt == _ATTEMPTS:
                    raise
                time.sleep(0.2 * attempt)
                continue
            for run, (jobs, attempts) in zip(runs, counts, strict=True):
                if jobs:  # another prune may have deleted it first
                    self.state.count(run, jobs, attempts)
            return

    def _wait_turn(self) -> None:
        """On SQLite, wait until the last transaction's hold is a small enough share of the time."""
        if self.sqlite and self.pause:
            wait = self.next_lock - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def _sqlite_transaction(self, conn: Connection, runs: list[_Run]) -> list[tuple[int, int]]:
        """The transaction on SQLite: the write lock up front, the WAL checkpointed after it.

        ``BEGIN IMMEDIATE`` takes the one write lock before the first statement (waiting for a
        writer's transaction to end), so the duty cycle measures the time prune held the lock,
        not the time it waited for it, and no write lands between the DELETEs and the check.
        The pages the transaction wrote are copied back into the database by prune, after the
        commit and outside the lock, not by the commit (which would count them as held) nor by
        the next writer's commit (which would make the writer pay for them).
        """
        every = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
        conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
        conn.commit()
        locked: float | None = None
        try:
            with conn.begin():
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                locked = time.monotonic()
                return self._delete(conn, runs)
        finally:
            if locked is not None:  # committed or rolled back: the lock was held till now
                now = time.monotonic()
                self.next_lock = locked + (now - locked) / SQLITE_LOCK_SHARE
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").all()
            conn.exec_driver_sql(f"PRAGMA wal_autocheckpoint={int(every)}")
            conn.commit()

    def _delete(self, conn: Connection, runs: list[_Run]) -> list[tuple[int, int]]:
        """The DELETEs of one transaction; raises :class:`_Changed` if any run is left in part.

        On SQLite the transaction holds the write lock already, so the check at the end sees
        every write that came before and none can come between.
        """
        by_cutoff: dict[datetime, list[_Run]] = {}
        for run in runs:
            by_cutoff.setdefault(self.state.cutoff(run), []).append(run)
        owner: dict[str, str] = {}
        for run in runs:
            owner.update((job_id, run.key) for job_id in run.extra)
        deleted: dict[str, list[str]] = {run.key: [] for run in runs}
        for cutoff, group in by_cutoff.items():
            guard = _settled(cutoff)
            roots = [run.key for run in group if run.root_job_id is not None]
            extra = [job_id for run in group for job_id in run.extra]
            for chunk in _chunks(roots):
                stmt = (
                    delete(JOBS)
                    .where(JOBS.c.root_job_id.in_(chunk), guard)
                    .returning(JOBS.c.job_id, JOBS.c.root_job_id)
                )
                for job_id, root in conn.execute(stmt):
                    deleted[root].append(job_id)
            for chunk in _chunks(extra):
                loose = (
                    delete(JOBS)
                    .where(JOBS.c.job_id.in_(chunk), JOBS.c.root_job_id.is_(None), guard)
                    .returning(JOBS.c.job_id)
                )
                for job_id in conn.execute(loose).scalars():
                    deleted[owner[job_id]].append(job_id)
        counts = []
        for run in runs:
            attempts = 0
            for chunk in _chunks(deleted[run.key]):
                attempts += conn.execute(
                    delete(ATTEMPTS).where(ATTEMPTS.c.job_id.in_(chunk))
                ).rowcount
            counts.append((len(deleted[run.key]), attempts))
        roots = [run.key for run in runs if run.root_job_id is not None]
        extra = list(owner)
        left = any(
            conn.execute(
                select(JOBS.c.job_id).where(JOBS.c.root_job_id.in_(chunk)).limit(1)
            ).first()
            for chunk in _chunks(roots)
        ) or any(
            conn.execute(select(JOBS.c.job_id).where(JOBS.c.job_id.in_(chunk)).limit(1)).first()
            for chunk in _chunks(extra)
        )
        if left:
            raise _Changed()
        return counts


def _scan(conn: Connection, before: datetime) -> Iterator[list[str]]:
    """Root ids of runs with a row last written before ``before``, oldest first, a page at a time.

    Walks the ``(updated_at, root_job_id)`` index: only rows older than the most lenient cutoff
    are read, so a store pruned daily reads little more than the runs kept for longer. A run that
    qualifies has every row older than its cutoff, so it shows up here. Rows without
    ``updated_at`` (not written by jobtrace's writer) are read first, by run.
    """
    after: str | None = None
    while True:
        stmt = select(JOBS.c.root_job_id).distinct().where(JOBS.c.updated_at.is_(None))
        stmt = stmt.where(JOBS.c.root_job_id.is_not(None))
        if after is not None:
            stmt = stmt.where(JOBS.c.root_job_id > after)
        page = [
            root for (root,) in conn.execute(stmt.order_by(JOBS.c.root_job_id).limit(_SCAN_PAGE))
        ]
        if page:
            yield page
        if len(page) < _SCAN_PAGE:
            break
        after = page[-1]
    last: tuple[datetime, str] | None = None
    while True:
        pairs = (
            select(JOBS.c.updated_at, JOBS.c.root_job_id)
            .distinct()
            .where(JOBS.c.updated_at < before, JOBS.c.root_job_id.is_not(None))
        )
        if last is not None:
            pairs = pairs.where(tuple_(JOBS.c.updated_at, JOBS.c.root_job_id) > last)
        rows = conn.execute(
            pairs.order_by(JOBS.c.updated_at, JOBS.c.root_job_id).limit(_SCAN_PAGE)
        ).all()
        if rows:
            yield list(dict.fromkeys(root for _, root in rows))
        if len(rows) < _SCAN_PAGE:
            return
        last = (rows[-1][0], rows[-1][1])


@dataclass
class _Unrooted:
    """Jobs no record gave a root: the run each hangs under, or the subtree it heads.

    A job without a root belongs to the run of its nearest ancestor with one (as the queries read
    it) and is deleted with that run; jobs with no such ancestor form subtrees of their own, each
    a run for retention, keyed by its topmost job.
    """

    by_root: dict[str, tuple[str, ...]]
    orphans: dict[str, tuple[str, ...]]

    def orphans_keys(self) -> list[str]:
        return sorted(self.orphans)


def _unrooted(conn: Connection) -> _Unrooted:
    """Where each job without a root belongs, from one read of them (normally few or none)."""
    parent: dict[str, str | None] = dict(
        conn.execute(
            select(JOBS.c.job_id, JOBS.c.parent_job_id).where(JOBS.c.root_job_id.is_(None))
        ).all()
    )
    if not parent:
        return _Unrooted({}, {})
    outside = sorted({p for p in parent.values() if p is not None and p not in parent})
    root_of: dict[str, str] = {}
    for chunk in _chunks(outside):
        stmt = select(JOBS.c.job_id, JOBS.c.root_job_id).where(JOBS.c.job_id.in_(chunk))
        root_of.update((job_id, root) for job_id, root in conn.execute(stmt) if root is not None)
    anchor: dict[str, tuple[bool, str]] = {}  # job -> (hangs under a run, the run's key)
    for job_id in parent:
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = job_id
        while node is not None and node in parent and node not in anchor and node not in on_path:
            on_path.add(node)
            path.append(node)
            node = parent[node]
        if node is not None and node in anchor:
            found = anchor[node]
        elif node is not None and node in on_path:  # a cycle: its smallest id heads it
            found = (False, min(path[path.index(node) :]))
        elif node is not None and node in root_of:
            found = (True, root_of[node])
        else:  # the parent is not stored, or there is none: the topmost job heads a subtree
            found = (False, path[-1])
        for step in path:
            anchor[step] = found
    by_root: dict[str, list[str]] = {}
    orphans: dict[str, list[str]] = {}
    for job_id, (rooted, key) in anchor.items():
        (by_root if rooted else orphans).setdefault(key, []).append(job_id)
    return _Unrooted(
        {key: tuple(sorted(ids)) for key, ids in by_root.items()},
        {key: tuple(sorted(ids)) for key, ids in orphans.items()},
    )


def _aggregate(
    conn: Connection, roots: list[str], orphan_keys: list[str], unrooted: _Unrooted
) -> list[_Run]:
    """The candidate runs with their counts, failures and last activity, as the store has them now."""
    runs = {root: _Run(root, root, extra=unrooted.by_root.get(root, ())) for root in roots}
    for key in orphan_keys:
        if key in unrooted.orphans:
            runs[key] = _Run(key, None, extra=unrooted.orphans[key])
    if not runs:
        return []
    failing = or_(
        JOBS.c.state.in_(_FAILURES),
        and_(JOBS.c.state == JobState.UNKNOWN.value, JOBS.c.attempt > 0),
    )
    columns: list[Any] = [
        func.count(),
        func.sum(case((JOBS.c.state.in_(_ACTIVE), 1), else_=0)),
        func.sum(case((failing, 1), else_=0)),
        *(func.max(JOBS.c[name]) for name in _TIMES),
    ]
    for chunk in _chunks(roots, _DECIDE_CHUNK):
        stmt = (
            select(JOBS.c.root_job_id, *columns)
            .where(JOBS.c.root_job_id.in_(chunk))
            .group_by(JOBS.c.root_job_id)
        )
        for root, *values in conn.execute(stmt):
            _add(runs[root], values)
    owner = {job_id: run.key for run in runs.values() for job_id in run.extra}
    for chunk in _chunks(sorted(owner)):
        stmt = (
            select(JOBS.c.job_id, *columns)
            .where(JOBS.c.job_id.in_(chunk), JOBS.c.root_job_id.is_(None))
            .group_by(JOBS.c.job_id)
        )
        for job_id, *values in conn.execute(stmt):
            _add(runs[owner[job_id]], values)
    for chunk in _chunks(roots):
        stmt = select(JOBS.c.job_id, JOBS.c.name).where(JOBS.c.job_id.in_(chunk))
        for job_id, name in conn.execute(stmt):
            runs[job_id].name = name
    return list(runs.values())


def _add(run: _Run, values: Sequence[Any]) -> None:
    count, active, failing, *times = values
    run.jobs += int(count)
    run.active += int(active or 0)
    run.failing += int(failing or 0)
    known = [moment for moment in times if moment is not None]
    if run.last is not None:
        known.append(run.last)
    run.last = max(known, default=None)


def _count_attempts(conn: Connection, run: _Run) -> int:
    """The attempts a dry run would delete with ``run``."""
    total = 0
    if run.root_job_id is not None:
        jobs = select(JOBS.c.job_id).where(JOBS.c.root_job_id == run.root_job_id)
        total += int(
            conn.execute(
                select(func.count()).select_from(ATTEMPTS).where(ATTEMPTS.c.job_id.in_(jobs))
            ).scalar_one()
        )
    for chunk in _chunks(list(run.extra)):
        total += int(
            conn.execute(
                select(func.count()).select_from(ATTEMPTS).where(ATTEMPTS.c.job_id.in_(chunk))
            ).scalar_one()
        )
    return total
