"""Building lineage trees row by row for query tests, without running any job.

A :class:`TreeBuilder` hands out job ids, fills in ``root_job_id`` and ``depth`` from the parent,
turns second offsets into times, and keeps every row so a test derives what it expects from what
it built instead of hard-coding counts. :func:`cinema_run` builds a randomised five-level run
shaped like scenario 1.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from jobtrace.lineage.models import Attempt, Base, Job

T0 = datetime(2024, 11, 23, 2, 0, tzinfo=timezone.utc)
TIME_FIELDS = ("enqueued_at", "started_at", "finished_at", "heartbeat_at")
_ids = itertools.count(1)


def create_schema(url: str) -> Engine:
    """An engine on ``url`` with the lineage tables created (migrations are the store's business)."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    Base.metadata.create_all(engine)
    return engine


@dataclass
class TreeBuilder:
    """Job rows of one or more runs, inserted in one go by :meth:`insert`."""

    start: datetime = T0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def at(self, seconds: float | None) -> datetime | None:
        """The time ``seconds`` after the builder's start."""
        return None if seconds is None else self.start + timedelta(seconds=seconds)

    def job(
        self,
        name: str,
        parent: str | None = None,
        *,
        state: str = "succeeded",
        enqueued: float | None = 0.0,
        started: float | None = None,
        finished: float | None = None,
        heartbeat: float | None = None,
        args: Any = None,
        **columns: Any,
    ) -> str:
        """Add one job under ``parent`` (a root when ``None``) and return its id.

        Times are seconds after the builder's start; a succeeded or failed job without times gets
        ``started = enqueued + 1`` and ``finished = started + 1``.
        """
        job_id = columns.pop("job_id", None) or f"{name.lower()}-{next(_ids):06d}"
        if parent is None:
            root, depth = job_id, 0
        else:
            root, depth = self.jobs[parent]["root_job_id"], self.jobs[parent]["depth"] + 1
        if state not in ("queued", "stalled") and started is None and enqueued is not None:
            started = enqueued + 1
        if state not in ("queued", "stalled", "running", "retrying") and finished is None:
            finished = None if started is None else started + 1
        row: dict[str, Any] = {
            "job_id": job_id,
            "name": name,
            "queue": "default",
            "system": "test",
            "state": state,
            "attempt": 1,
            "parent_job_id": parent,
            "root_job_id": root,
            "depth": depth,
            "trace_id": hashlib.md5(root.encode()).hexdigest(),
            "span_id": hashlib.md5(job_id.encode()).hexdigest()[:16],
            "args": None if args is None else json.dumps(args, separators=(",", ":")),
            "error_type": None,
            "error_message": None,
            "reason": None,
            "enqueued_at": self.at(enqueued),
            "started_at": self.at(started),
            "finished_at": self.at(finished),
            "heartbeat_at": self.at(heartbeat),
        }
        row.update(columns)
        self.jobs[job_id] = row
        return job_id

    def placeholder(
        self,
        job_id: str,
        root: str | None = None,
        *,
        depth: int = 0,
        parent: str | None = None,
        heard: float = 0.0,
        named_by: str = "a job",
    ) -> str:
        """Add the row the writer keeps for a job only named as a parent or root, and return its id.

        Its shape is the writer's: state ``unknown``, attempt 0, name ``?``, ``root`` (itself when
        ``None``), ``depth`` one above the job that named it, no enqueue time, and ``heard`` (seconds
        after the start) as ``updated_at``, when it was first heard of.
        """
        relation = "root" if root is None else "parent"
        self.jobs[job_id] = {
            "job_id": job_id,
            "name": "?",
            "state": "unknown",
            "attempt": 0,
            "parent_job_id": parent,
            "root_job_id": root or job_id,
            "depth": depth,
            "reason": f"named as the {relation} of {named_by}; never recorded",
            "enqueued_at": None,
            "updated_at": self.at(heard),
        }
        return job_id

    def chain(self, length: int, name: str = "ChainJob") -> list[str]:
        """A run that is one line of ``length`` jobs, each the parent of the next; root first."""
        ids = [self.job(name, enqueued=0.0)]
        for _ in range(length - 1):
            ids.append(self.job(name, ids[-1], enqueued=0.0))
        return ids

    def reparent(self, job_id: str, parent: str) -> None:
        """Point ``job_id`` at another parent, root and depth untouched, as bad metadata would."""
        self.jobs[job_id]["parent_job_id"] = parent

    def attempt(self, job_id: str, attempt: int, state: str, **columns: Any) -> None:
        """Add one attempt of ``job_id`` to the audit trail."""
        self.attempts.append({"job_id": job_id, "attempt": attempt, "state": state, **columns})

    def insert(self, engine: Engine) -> None:
        """Write every row built so far."""
        columns = {c.name for c in Job.__table__.columns}
        rows = [{c: row.get(c) for c in columns} for row in self.jobs.values()]
        with engine.begin() as conn:
            if rows:
                conn.execute(insert(Job), rows)
            if self.attempts:
                attempt_columns = {c.name for c in Attempt.__table__.columns}
                conn.execute(
                    insert(Attempt),
                    [{c: row.get(c) for c in attempt_columns} for row in self.attempts],
                )

    def under(self, root: str) -> list[dict[str, Any]]:
        """The rows of one run."""
        return [row for row in self.jobs.values() if row["root_job_id"] == root]

    def subtree(self, job_id: str) -> list[dict[str, Any]]:
        """The rows under ``job_id``, itself included, each once even across a parent cycle."""
        children: dict[str, list[dict[str, Any]]] = {}
        for row in self.jobs.values():
            children.setdefault(row["parent_job_id"], []).append(row)
        found = [self.jobs[job_id]]
        seen = {job_id}
        for row in found:
            for child in children.get(row["job_id"], []):
                if child["job_id"] not in seen:
                    seen.add(child["job_id"])
                    found.append(child)
        return found

    def counts(self, rows: list[dict[str, Any]]) -> Counter[tuple[int, str, str]]:
        """``(depth, name, state) -> count`` over ``rows``: what the stage table must say."""
        return Counter((row["depth"], row["name"], row["state"]) for row in rows)


@dataclass(frozen=True)
class CinemaRun:
    """A scenario-1-shaped run and what was put in it."""

    root: str
    pages: list[str]
    stuck_queue: str
    failing_error: str


def cinema_run(builder: TreeBuilder, rng: random.Random, *, start: float = 0.0) -> CinemaRun:
    """A five-level run with random counts: some pages unrun, details stuck, showtimes failing.

    Sync → MoviePage (some queued, a few running, the rest done) → per finished page one
    MovieDetail (some on a queue nobody serves) and several Showtime (some discarded) → per
    showtime a Price → per price a Notify.
    """
    root = builder.job("SyncJob", enqueued=start, started=start + 1, finished=start + 30)
    stuck_queue = "details-legacy"
    error = "movie_not_ready"
    pages = []
    for number in range(rng.randint(8, 16)):
        # Page 0 and page 1 always ran: page 0 has a stuck detail and a discarded showtime, page 1
        # a detail that ran and a showtime with its price and notify jobs. The rest is chance.
        roll = rng.random() if number > 1 else 1.0
        state = "queued" if roll < 0.25 else "running" if roll < 0.35 else "succeeded"
        heartbeat = start + 9 if state == "running" else None
        page = builder.job(
            "MoviePageJob",
            root,
            state=state,
            queue="pages",
            enqueued=start + 2,
            heartbeat=heartbeat,
            args={"movie_id": f"m-{number:04d}"},
        )
        pages.append(page)
        if state != "succeeded":
            continue
        stuck = number == 0 or (number > 1 and rng.random() < 0.5)
        builder.job(
            "MovieDetailJob",
            page,
            state="queued" if stuck else "succeeded",
            queue=stuck_queue if stuck else "details",
            enqueued=start + 5,
            args={"movie_id": f"m-{number:04d}"},
        )
        for showtime in range(rng.randint(2, 6)):
            forced = {0: True, 1: False}.get(number) if showtime == 0 else None
            discarded = rng.random() < 0.4 if forced is None else forced
            job = builder.job(
                "ShowtimeProcessJob",
                page,
                state="discarded" if discarded else "succeeded",
                queue="showtimes",
                enqueued=start + 6,
                error_type=error if discarded else None,
                reason=error if discarded else None,
                args={"movie_id": f"m-{number:04d}", "showtime": showtime},
            )
            if discarded:
                continue
            price = builder.job("PriceJob", job, queue="prices", enqueued=start + 8)
            builder.job("NotifyJob", price, queue="notify", enqueued=start + 10)
    return CinemaRun(root, pages, stuck_queue, error)


#: The upload path scenario 2's batches share: long, so a row cut at its end shows nothing else.
UPLOAD_PATH = "s3://bucket/uploads/2024/11/23/customer-4411/" + "nested/" * 8 + "batch.csv"


def upload_batches(
    builder: TreeBuilder,
    count: int = 3,
    *,
    crashed: Callable[[int], bool] = lambda n: True,
    **upload: Any,
) -> str:
    """Scenario 2: ``upload-7`` and its batches ``batch-N`` sharing :data:`UPLOAD_PATH`, each
    with document ids ``N00`` to ``N03``; those ``crashed`` picks crashed, the rest succeeded.
    Returns the upload's id; ``upload`` are its columns."""
    root = builder.job("UploadJob", job_id="upload-7", **upload)
    for n in range(count):
        builder.job(
            "BatchJob",
            root,
            job_id=f"batch-{n}",
            state="crashed" if crashed(n) else "succeeded",
            args={"upload": UPLOAD_PATH, "document_ids": [n * 100 + i for i in range(4)]},
        )
    return root
