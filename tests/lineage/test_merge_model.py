"""The merge checked against a reference model: random lifecycles, writers, batches and losses.

Many jobs of one run live through random lifecycles (enqueue, start, progress, heartbeat, retry,
finish, a crash by the reaper, a late finish), and their records reach the store the way they do
in production: the producer's, each worker's and the reaper's records through writers of their
own, each writer keeping its own order, split into random batches (one transaction each) that
interleave at random; some records are dropped, some dropped and re-delivered as ``lost``. Whatever
the split, the rows must say what a small model of the rules says, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine

from jobtrace.lineage import _merge
from jobtrace.lineage.models import Attempt, Job
from jobtrace.lineage.store import create_store_engine, upgrade
from jobtrace.records import JobRecord, JobState

T = 1_700_000_000.0
OUTCOMES = (JobState.SUCCEEDED, JobState.FAILED, JobState.DISCARDED, JobState.SKIPPED)


@dataclass(frozen=True)
class Sent:
    """One record and the writer that emits it, in that writer's order."""

    writer: str
    record: JobRecord
    fate: str  # "delivered", "dropped" or "lost" (dropped, then re-delivered as kind "lost")


@st.composite
def lifecycles(draw: st.DrawFn) -> list[Sent]:
    """Records of a random run, each with its writer and its fate."""
    count = draw(st.integers(1, 7))
    parents: dict[str, str | None] = {"j0": None}
    depth = {"j0": 0}
    for n in range(1, count):
        parent = f"j{draw(st.integers(0, n - 1))}"
        parents[f"j{n}"] = parent
        depth[f"j{n}"] = depth[parent] + 1
    fate = st.sampled_from(["delivered"] * 6 + ["dropped", "lost"])
    sent: list[Sent] = []
    for job_id, parent in parents.items():
        fields: dict[str, Any] = {
            "job_id": job_id,
            "name": f"Stage{depth[job_id]}",
            "queue": "q",
            "system": "test",
            "parent_job_id": parent,
            "root_job_id": "j0",
            "depth": depth[job_id],
        }
        sent.append(
            Sent(
                "producer",
                JobRecord(
                    kind="enqueued",
                    attempt=1,
                    state=JobState.QUEUED,
                    trace_id="a" * 32,
                    args=f'{{"job": "{job_id}"}}',
                    enqueued_at=T,
                    **fields,
                ),
                draw(fate),
            )
        )
        attempts = draw(st.integers(0, 2))
        for attempt in range(1, attempts + 1):
            worker = f"worker{draw(st.integers(0, 1))}"
            at = T + 10 * attempt
            span = f"{attempt:016x}"
            common = dict(fields, attempt=attempt, trace_id="a" * 32, span_id=span)
            sent.append(
                Sent(
                    worker,
                    JobRecord(
                        kind="started",
                        state=JobState.RUNNING,
                        host=worker,
                        started_at=at,
                        heartbeat_at=at,
                        **common,
                    ),
                    draw(fate),
                )
            )
            beats = draw(st.integers(0, 2))
            for beat in range(beats):
                beat_fields = dict(common)
                if draw(st.booleans()):  # a record that does not say where the job stands
                    beat_fields.update(root_job_id=None, depth=None)
                sent.append(
                    Sent(
                        worker,
                        JobRecord(
                            kind="heartbeat",
                            state=JobState.RUNNING,
                            progress=(beat + 1) / 4,
                            heartbeat_at=at + beat + 1,
                            **beat_fields,
                        ),
                        draw(fate),
                    )
                )
            ending = draw(st.sampled_from(["finish", "crash", "crash+late finish", "none"]))
            if "crash" in ending:
                sent.append(
                    Sent(
                        "reaper",
                        JobRecord(  # what the reaper's update sets, and nothing else
                            kind="finished",
                            state=JobState.CRASHED,
                            reason="no heartbeat",
                            **dict(fields, attempt=attempt),
                        ),
                        "delivered",
                    )
                )
            if "finish" in ending:
                last = attempt == attempts
                state = draw(st.sampled_from(OUTCOMES)) if last else JobState.RETRYING
                sent.append(
                    Sent(
                        worker,
                        JobRecord(
                            kind="finished",
                            state=state,
                            error_type="ValueError" if state is JobState.FAILED else None,
                            progress=beats / 4 if beats else None,  # the job's last progress
                            finished_at=at + 5,
                            heartbeat_at=at + 5,
                            host=worker,
                            **common,
                        ),
                        draw(fate),
                    )
                )
    return sent


def deliveries(sent: list[Sent], rng: random.Random) -> list[tuple[str, list[JobRecord]]]:
    """Each writer's records in its own order, lost ones re-delivered later, cut into batches."""
    queues: dict[str, list[JobRecord]] = {}
    # Like the recorder: of a job's dropped records, the most advanced one is re-delivered.
    redelivered: dict[str, dict[str, JobRecord]] = {}
    for item in sent:
        if item.fate == "delivered":
            queues.setdefault(item.writer, []).append(item.record)
        elif item.fate == "lost":
            kept = redelivered.setdefault(item.writer, {})
            old = kept.get(item.record.job_id)
            if old is None or advance(old) <= advance(item.record):
                kept[item.record.job_id] = item.record
    for writer, kept in redelivered.items():
        queues.setdefault(writer, []).extend(r._replace(kind="lost") for r in kept.values())
    batches: list[tuple[str, list[JobRecord]]] = []
    for writer, records in queues.items():
        start = 0
        while start < len(records):
            size = rng.randint(1, 4)
            batches.append((writer, records[start : start + size]))
            start += size
    # Interleave writers at random while each keeps its own order.
    ordered: list[tuple[str, list[JobRecord]]] = []
    pending = {writer: [b for b in batches if b[0] == writer] for writer in queues}
    while pending:
        writer = rng.choice(sorted(pending))
        ordered.append(pending[writer].pop(0))
        if not pending[writer]:
            del pending[writer]
    return ordered


def advance(record: JobRecord) -> tuple[int, int]:
    return record.attempt, _merge.rank(record.state.value)


def model(batches: list[tuple[str, list[JobRecord]]]) -> dict[str, dict[str, Any]]:
    """What each job's row must say: the rules of ``_merge`` written the simplest way."""
    delivered: list[tuple[int, JobRecord]] = [
        (seq, record) for seq, (_, batch) in enumerate(batches) for record in batch
    ]
    by_job: dict[str, list[tuple[int, int, JobRecord]]] = {}
    for order, (_, record) in enumerate(delivered):
        by_job.setdefault(record.job_id, []).append(
            (order, _merge.rank(record.state.value), record)
        )
    frames = placeholder_frames(batches)
    rows: dict[str, dict[str, Any]] = {}
    for job_id, entries in by_job.items():
        attempt = max(record.attempt for _, _, record in entries)
        mine = sorted(
            ((rank, order, record) for order, rank, record in entries if record.attempt == attempt),
            key=lambda item: (item[0], item[1]),
        )

        def latest(field: str, among: list[JobRecord]) -> Any:
            values = [
                getattr(record, field) for record in among if getattr(record, field) is not None
            ]
            return values[-1] if values else None

        attempt_records = [record for _, _, record in mine]
        all_records = [record for _, _, record in sorted(entries, key=lambda e: e[0])]
        # A placeholder that came first says where the job stands until a record of its own does.
        root, depth = frames.get(job_id, (None, None))
        own_root, own_depth = latest("root_job_id", all_records), latest("depth", all_records)
        rows[job_id] = {
            "state": attempt_records[-1].state.value,
            "attempt": attempt,
            "name": latest("name", all_records),
            "parent_job_id": latest("parent_job_id", all_records),
            "root_job_id": root if own_root is None else own_root,
            "depth": depth if own_depth is None else own_depth,
            "args": latest("args", all_records),
            "span_id": latest("span_id", attempt_records),
            "error_type": latest("error_type", attempt_records),
            "progress": latest("progress", attempt_records),
            "host": latest("host", attempt_records),
            "lost": any(record.kind == "lost" for record in all_records),
            "attempts": {
                n: max(
                    (rank, order, record.state.value)
                    for order, rank, record in entries
                    if record.attempt == n
                )[2]
                for n in {record.attempt for record in all_records}
            },
        }
    for job_id in set(frames) - set(rows):
        root, depth = frames[job_id]
        rows[job_id] = {
            "state": "unknown",
            "attempt": 0,
            "name": _merge.PLACEHOLDER_NAME,
            "root_job_id": root,
            "depth": depth,
        }
    return rows


def placeholder_frames(
    batches: list[tuple[str, list[JobRecord]]],
) -> dict[str, tuple[str | None, int | None]]:
    """Root and depth of the placeholder each named job got, if one came before its own records.

    A batch that names a job without a record of it inserts a placeholder where the job has no
    row yet; of the batch's records that name it, one that says where it stands gives its root
    and depth (a parent sits a level above its child, a root at 0), otherwise it says nothing.
    """
    has_row: set[str] = set()
    frames: dict[str, tuple[str | None, int | None]] = {}
    for _, batch in batches:
        own = {record.job_id for record in batch}
        for record in batch:
            for job_id in (record.parent_job_id, record.root_job_id):
                if job_id is None or job_id in own or job_id in has_row:
                    continue
                if record.root_job_id is None or record.depth is None:
                    frames.setdefault(job_id, (None, None))
                elif job_id == record.root_job_id:
                    frames[job_id] = (job_id, 0)
                else:
                    frames[job_id] = (record.root_job_id, record.depth - 1)
        has_row.update(own, frames)
    return frames


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """One migrated store per backend for the whole module; each example empties it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('model') / 'lineage.db'}"
        upgrade(url)
        engine = create_store_engine(url)
        yield engine
        engine.dispose()
        return
    from tests.conftest import fresh_postgres_database

    with fresh_postgres_database() as url:
        upgrade(url)
        engine = create_store_engine(url)
        yield engine
        engine.dispose()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sent=lifecycles(), seed=st.integers(0, 2**32 - 1))
def test_rows_match_the_model_whatever_the_batches_order_writers_and_losses(
    engine: Engine, sent: list[Sent], seed: int
) -> None:
    """Every job's row and attempts say what the reference model says, placeholders included."""
    batches = deliveries(sent, random.Random(seed))
    with engine.begin() as conn:
        conn.execute(delete(Attempt.__table__))
        conn.execute(delete(Job.__table__))
    known: dict[str, set[str]] = {}
    for writer, batch in batches:
        seen = known.setdefault(writer, set())
        with engine.begin() as conn:
            seen.update(_merge.write(conn, batch, T + 100, 1.0, seen.__contains__))
    expected = model(batches)
    with engine.connect() as conn:
        stored = {row.job_id: row for row in conn.execute(select(Job.__table__))}
        stored_attempts: dict[str, dict[int, str]] = {}
        for job_id, attempt, state in conn.execute(
            select(Attempt.job_id, Attempt.attempt, Attempt.state)
        ):
            stored_attempts.setdefault(job_id, {})[attempt] = state
    assert set(stored) == set(expected)
    for job_id, want in expected.items():
        row = stored[job_id]._mapping
        got = {key: row[key] for key in want if key in row}
        if want["state"] == "unknown":
            assert got == want, job_id
            assert job_id not in stored_attempts
            continue
        got["lost"] = row["lost_at"] is not None
        got["attempts"] = stored_attempts.get(job_id, {})
        assert got == want, (job_id, batches)
