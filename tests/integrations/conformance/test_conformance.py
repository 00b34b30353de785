"""One conformance suite run against every queue adapter: LocalQueue, Celery, RQ, arq, Dramatiq.

Each case runs on a real worker process per adapter (see ``drivers.py``), shared by the module's
cases; the counting cases also run on PostgreSQL. The killed-worker case comes last: it kills the
worker.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobtrace.cli import main
from jobtrace.lineage.models import Attempt
from jobtrace.lineage.queries import JobNotFoundError, JobRow
from jobtrace.lineage.reaper import reap
from tests.integrations.conformance import jobs
from tests.integrations.conformance.conftest import BOTH, SQLITE, on
from tests.integrations.conformance.drivers import Driver, PlainMessage, Span
from tests.integrations.harness import store_rows, wait_for

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")
Stages = dict[tuple[int, str], dict[str, int]]

PAGES, LEAVES, HELD = 3, 8, 1  # 28 jobs; the first leaf of each page waits on the barrier
CHILDREN = 4
HEARTBEAT_TIMEOUT = 1.5  # five heartbeat intervals


# -- reading what the workers recorded ------------------------------------------------------------


def settle(read: Callable[[], T], expected: object, *, timeout: float = 30.0) -> T:
    """``read()`` until it returns ``expected`` or ``timeout`` passes; the last value read.

    The store is written a moment after a job changes state; the caller asserts on what this
    returns, so a wrong count fails with the difference.
    """
    last: list[T] = []

    def matches() -> bool:
        try:
            last[:] = [read()]
        except JobNotFoundError:
            return False
        return last[0] == expected

    with contextlib.suppress(AssertionError):  # the caller's assertion says what was wrong
        wait_for(matches, timeout=timeout)
    if not last:
        raise AssertionError(f"nothing recorded within {timeout}s")
    return last[0]


def stages(driver: Driver, job_id: str) -> Stages:
    """The per-stage counts of the run ``job_id`` belongs to, by suite job name."""
    by_stage = driver.store.stage_stats(job_id).by_stage()
    return {(depth, driver.short_name(name)): states for (depth, name), states in by_stage.items()}


def run_spans(driver: Driver, root: str, kind: str) -> dict[str, Span]:
    """The spans of one kind of the run under ``root``, by job id."""
    return {
        span["attributes"]["jobtrace.job.id"]: span
        for span in driver.spans()
        if span["kind"] == kind and span["attributes"].get("jobtrace.job.root_id") == root
    }


def state_of(driver: Driver, job_id: str) -> str | None:
    """A job's state in the store, ``None`` while it has no row."""
    try:
        return driver.store.job(job_id).state
    except JobNotFoundError:
        return None


def running_jobs(driver: Driver) -> list[JobRow]:
    """Every job the store says runs, of any run."""
    return [row for run in driver.store.runs(limit=10_000) for row in _running(driver, run.root)]


def _running(driver: Driver, root: JobRow) -> list[JobRow]:
    return [job for job in driver.store.tree(root.job_id) if job.state == "running"]


def cli_json(capsys: pytest.CaptureFixture[str], driver: Driver, *args: str) -> Any:
    """Run one ``jobtrace ... --json`` command on the driver's store; its parsed output."""
    capsys.readouterr()
    code = main(["--database-url", driver.database_url, *args, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def require_plain_producer(driver: Driver) -> None:
    """Skip on a queue no producer without jobtrace can reach."""
    if not driver.plain_producer:
        pytest.skip(f"{driver.adapter}: jobs are enqueued in-process, always through jobtrace")


# -- the cases ------------------------------------------------------------------------------------


@on(*BOTH)
def test_pipeline_counts_exact_mid_run_and_at_the_end(
    driver: Driver, barrier: Callable[[], str]
) -> None:
    """A 3-level fan-out: held leaves count as running under their root mid-run; exact at the end."""
    gate = barrier()
    root = driver.enqueue(jobs.ROOT, PAGES, LEAVES, HELD, gate)
    mid = {
        (0, jobs.ROOT): {"succeeded": 1},
        (1, jobs.PAGE): {"succeeded": PAGES},
        (2, jobs.LEAF): {"running": PAGES * HELD, "succeeded": PAGES * (LEAVES - HELD)},
    }
    assert settle(lambda: stages(driver, root), mid) == mid, driver.logs()
    pages = driver.store.children(root)
    for page in pages:
        running = driver.store.children(page.job_id, state="running")
        assert [(job.root_job_id, job.depth) for job in running] == [(root, 2)] * HELD

    Path(gate).touch()
    end = {**mid, (2, jobs.LEAF): {"succeeded": PAGES * LEAVES}}
    assert settle(lambda: stages(driver, root), end) == end, driver.logs()
    assert driver.store.count_tree(root) == 1 + PAGES + PAGES * LEAVES


@on(*SQLITE)
def test_pipeline_is_one_trace_and_one_lineage_tree(driver: Driver) -> None:
    """Every span of a pipeline run in one trace: process under send under the parent's process."""
    root = driver.enqueue(jobs.ROOT, 2, 2, 0, "")
    total = 1 + 2 + 4
    done = {
        (0, jobs.ROOT): {"succeeded": 1},
        (1, jobs.PAGE): {"succeeded": 2},
        (2, jobs.LEAF): {"succeeded": 4},
    }
    assert settle(lambda: stages(driver, root), done) == done, driver.logs()
    wait_for(
        lambda: (
            len(run_spans(driver, root, "CONSUMER"))
            == total
            == len(run_spans(driver, root, "PRODUCER"))
        ),
        what=f"{total} process and send spans",
    )
    processes = run_spans(driver, root, "CONSUMER")
    sends = run_spans(driver, root, "PRODUCER")

    assert {s["trace_id"] for s in [*processes.values(), *sends.values()]} == {
        processes[root]["trace_id"]
    }
    assert sends[root]["parent_span_id"] is None
    for job_id, process in processes.items():
        attributes = process["attributes"]
        assert process["parent_span_id"] == sends[job_id]["span_id"]
        assert attributes["messaging.system"] == driver.system
        assert attributes["messaging.destination.name"] == driver.queue
        assert attributes["jobtrace.job.outcome"] == "succeeded"
        parent = attributes.get("jobtrace.job.parent_id")
        if job_id == root:
            assert parent is None
        else:
            assert sends[job_id]["parent_span_id"] == processes[parent]["span_id"]
    stored = {job.job_id: job for job in driver.store.tree(root)}
    assert stored.keys() == processes.keys()
    for job_id, job in stored.items():
        attributes = processes[job_id]["attributes"]
        assert (job.root_job_id, job.system, job.queue) == (root, driver.system, driver.queue)
        assert job.parent_job_id == attributes.get("jobtrace.job.parent_id")
        assert job.depth == attributes["jobtrace.job.depth"]
        assert (job.trace_id, job.span_id) == (
            processes[job_id]["trace_id"],
            processes[job_id]["span_id"],
        )
    assert stored[root].items_processed == stored[root].items_total == 2
    assert processes[root]["attributes"]["jobtrace.items.processed"] == 2


@on(*BOTH)
def test_progress_keeps_a_running_child_in_its_parents_run(
    driver: Driver, barrier: Callable[[], str]
) -> None:
    """A running child that called progress() is counted in its parent's run, not a run of its own."""
    gate = barrier()
    parent = driver.enqueue(jobs.PROGRESS_PARENT, CHILDREN, gate)

    def reported() -> list[JobRow] | None:
        try:
            children = driver.store.children(parent)
        except JobNotFoundError:
            return None
        ready = len(children) == CHILDREN and all(
            child.state == "running" and child.progress is not None for child in children
        )
        return children if ready else None

    children = wait_for(reported, timeout=30, what="every child running, its progress reported")
    mid = {
        (0, jobs.PROGRESS_PARENT): {"succeeded": 1},
        (1, jobs.PROGRESS_CHILD): {"running": CHILDREN},
    }
    assert stages(driver, parent) == mid
    assert [(child.root_job_id, child.depth) for child in children] == [(parent, 1)] * CHILDREN
    runs = {run.root.job_id: run for run in driver.store.runs(limit=10_000)}
    assert not runs.keys() & {child.job_id for child in children}
    assert (runs[parent].total, runs[parent].states) == (
        CHILDREN + 1,
        {"running": CHILDREN, "succeeded": 1},
    )

    Path(gate).touch()
    end = {**mid, (1, jobs.PROGRESS_CHILD): {"succeeded": CHILDREN}}
    assert settle(lambda: stages(driver, parent), end) == end, driver.logs()


@on(*SQLITE)
def test_a_retried_attempt_links_the_one_before(driver: Driver, tmp_path: Path) -> None:
    """A job that fails once and is retried by its queue: attempt 2 links attempt 1, one send span."""
    job_id = driver.enqueue(jobs.FLAKY, str(tmp_path / "flaky"))
    spans = wait_for(
        lambda: len(found := driver.process_spans(job_id)) >= 2 and found,
        what="two attempts",
    )
    first, second = sorted(spans, key=lambda span: span["attributes"]["jobtrace.job.attempt"])

    assert [span["attributes"]["jobtrace.job.attempt"] for span in (first, second)] == [1, 2]
    assert [span["attributes"]["jobtrace.job.outcome"] for span in (first, second)] == [
        "retrying",
        "succeeded",
    ]
    assert first["links"] == []
    (link,) = second["links"]
    assert (link["trace_id"], link["span_id"]) == (first["trace_id"], first["span_id"])
    assert link["attributes"]["jobtrace.link.type"] == "previous_attempt"
    (send,) = [
        span
        for span in driver.spans()
        if span["kind"] == "PRODUCER" and span["attributes"].get("jobtrace.job.id") == job_id
    ]
    assert first["parent_span_id"] == second["parent_span_id"] == send["span_id"]
    assert settle(lambda: state_of(driver, job_id), "succeeded") == "succeeded"

    def attempts() -> list[tuple[int, str, str | None]]:
        rows = (row for row in store_rows(driver.database_url, Attempt) if row.job_id == job_id)
        return sorted((row.attempt, row.state, row.span_id) for row in rows)

    # Each attempt may run on another worker, whose writer has its own batches: attempt 1's
    # outcome can reach the store a moment after attempt 2's.
    expected = [(1, "retrying", first["span_id"]), (2, "succeeded", second["span_id"])]
    assert settle(attempts, expected) == expected


@on(*SQLITE)
def test_a_job_from_a_producer_without_jobtrace_roots_its_own_run(driver: Driver) -> None:
    """Enqueued through the queue's own API by a process without jobtrace: the root of a whole run."""
    require_plain_producer(driver)
    (root,) = driver.enqueue_plain(PlainMessage(jobs.ROOT, (1, 1, 0, "")))
    expected = {
        (0, jobs.ROOT): {"succeeded": 1},
        (1, jobs.PAGE): {"succeeded": 1},
        (2, jobs.LEAF): {"succeeded": 1},
    }
    assert settle(lambda: stages(driver, root), expected) == expected, driver.logs()

    job = driver.store.job(root)
    assert (job.root_job_id, job.parent_job_id, job.depth) == (root, None, 0)
    assert root in {run.root.job_id for run in driver.store.runs(limit=10_000)}
    processes = wait_for(
        lambda: len(found := run_spans(driver, root, "CONSUMER")) == 3 and found,
        what="three process spans",
    )
    assert processes[root]["parent_span_id"] is None
    assert root not in run_spans(driver, root, "PRODUCER")
    assert {span["trace_id"] for span in processes.values()} == {processes[root]["trace_id"]}


@on(*SQLITE)
def test_a_run_whose_root_and_parent_were_never_seen_answers_every_query(
    driver: Driver, capsys: pytest.CaptureFixture[str]
) -> None:
    """Metadata written by hand names a parent and root jobtrace never saw: stats, runs, children."""
    require_plain_producer(driver)
    suffix = uuid.uuid4().hex[:10]
    child, parent, root = (f"foreign-{role}-{suffix}" for role in ("child", "parent", "root"))
    metadata = {
        "jobtrace-version": "1",
        "jobtrace-job-id": child,
        "jobtrace-parent-job-id": parent,
        "jobtrace-root-job-id": root,
        "jobtrace-depth": "2",
        "jobtrace-enqueued-at": f"{time.time():.6f}",
        "jobtrace-relationship": "child",
    }
    (sent,) = driver.enqueue_plain(
        PlainMessage(jobs.PAGE, (0, 1, 0, ""), job_id=child, metadata=metadata)
    )
    assert sent == child
    wait_for(
        lambda: [(job.depth, job.state) for job in _of_parent(driver, child)] == [(3, "succeeded")],
        what="the child's own child to succeed",
    )
    # Records of different worker processes land in any order (an RQ horse hands its own to its
    # worker, which writes them on its interval): until the child's arrive, it is a placeholder.
    wait_for(lambda: driver.store.job(child).state == "succeeded", what="the child's own record")
    job = driver.store.job(child)
    assert (job.state, job.parent_job_id, job.root_job_id, job.depth) == (
        "succeeded",
        parent,
        root,
        2,
    )

    stats = cli_json(capsys, driver, "stats", child)
    assert stats["root_job_id"] == root
    counts = {
        (r["depth"], driver.short_name(r["name"]), r["state"]): r["count"] for r in stats["rows"]
    }
    assert counts[(2, jobs.PAGE, "succeeded")] == counts[(3, jobs.LEAF, "succeeded")] == 1
    runs = cli_json(capsys, driver, "runs", "--limit", "10000")
    assert root in [run["root"]["job_id"] for run in runs]
    children = cli_json(capsys, driver, "children", parent)
    assert [row["job_id"] for row in children["children"]] == [child]


def _of_parent(driver: Driver, parent: str) -> list[JobRow]:
    try:
        return driver.store.children(parent)
    except JobNotFoundError:
        return []


BAD_METADATA: dict[str, Any] = {
    "non_mapping": ["jobtrace-version", "1", "jobtrace-job-id", "x"],
    "huge": {
        "jobtrace-version": "1",
        "jobtrace-job-id": "j" * 100_000,
        "jobtrace-parent-job-id": "p" * 100_000,
        "jobtrace-root-job-id": "r" * 100_000,
        "jobtrace-depth": "9" * 5_000,
        "jobtrace-enqueued-at": "1" * 5_000,
        "jobtrace-relationship": "child" * 20_000,
        "traceparent": "0" * 100_000,
        "x-not-ours": "u" * 1_000_000,
    },
    "wrong_types": {
        "jobtrace-version": 1,
        "jobtrace-job-id": 42,
        "jobtrace-parent-job-id": ["a", "b"],
        "jobtrace-root-job-id": {"id": "r"},
        "jobtrace-depth": None,
        "jobtrace-enqueued-at": "yesterday",
        "jobtrace-relationship": True,
        "jobtrace-attempt": "zero",
        "jobtrace-previous-span": 12.5,
        "traceparent": 7,
        "baggage": [1, 2],
    },
}


@on(*SQLITE)
def test_bad_metadata_never_costs_the_job_nor_its_record(driver: Driver) -> None:
    """Metadata that is not a mapping, huge, or of the wrong types: every job runs and is recorded."""
    require_plain_producer(driver)
    variants = [v for v in BAD_METADATA if v != "non_mapping" or driver.non_mapping_metadata]
    suffix = uuid.uuid4().hex[:10]
    messages = [
        PlainMessage(
            jobs.LEAF,
            (0, 0, 0, ""),
            job_id=f"bad-{variant}-{suffix}",
            metadata=BAD_METADATA[variant],
        )
        for variant in variants
    ]
    ids = driver.enqueue_plain(*messages)

    for variant, job_id in zip(variants, ids, strict=True):
        read = functools.partial(state_of, driver, job_id)
        assert settle(read, "succeeded") == "succeeded", (
            variant,
            driver.logs(),
        )
        (span,) = driver.process_spans(job_id)
        assert span["attributes"]["jobtrace.job.outcome"] == "succeeded", variant
        counted = stages(driver, job_id)
        assert counted.get((driver.store.job(job_id).depth or 0, jobs.LEAF), {}).get("succeeded"), (
            variant,
            counted,
        )


@on(*SQLITE)
def test_a_killed_worker_leaves_exactly_its_running_jobs_crashed(
    driver: Driver, barrier: Callable[[], str]
) -> None:
    """N >= 4 jobs at once in one worker: none reaped while they heartbeat; after SIGKILL, those."""
    assert settle(lambda: running_jobs(driver), []) == []  # the cases before have ended
    gate = barrier()
    root = driver.enqueue(jobs.ROOT, 2, 3, 2, gate)  # 4 of the 6 leaves held
    mid = {
        (0, jobs.ROOT): {"succeeded": 1},
        (1, jobs.PAGE): {"succeeded": 2},
        (2, jobs.LEAF): {"running": 4, "succeeded": 2},
    }
    assert settle(lambda: stages(driver, root), mid) == mid, driver.logs()
    held = [job for job in driver.store.tree(root) if job.state == "running"]
    if driver.one_process:
        assert len({job.pid for job in held}) == 1, [job.pid for job in held]

    deadline = time.monotonic() + 2 * HEARTBEAT_TIMEOUT
    while time.monotonic() < deadline:  # several timeouts long: heartbeats must keep them alive
        assert reap(driver.database_url, heartbeat_timeout=HEARTBEAT_TIMEOUT).crashed == ()
        time.sleep(0.3)
    for job in driver.store.tree(root):
        if job.state == "running":
            assert job.heartbeat_at is not None
            assert job.started_at is not None
            assert job.heartbeat_at > job.started_at

    driver.kill_worker()
    crashed: set[str] = set()

    def all_reaped() -> bool:
        crashed.update(reap(driver.database_url, heartbeat_timeout=HEARTBEAT_TIMEOUT).crashed)
        return crashed >= {job.job_id for job in held}

    wait_for(all_reaped, timeout=20, interval=0.3, what="the reaper to mark the held jobs crashed")
    assert crashed == {job.job_id for job in held}
    end = {**mid, (2, jobs.LEAF): {"crashed": 4, "succeeded": 2}}
    assert stages(driver, root) == end
