"""Worker process life and death: pool children that exit, a worker killed in the middle of a task."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobtrace.lineage.reaper import reap
from tests.integrations.celery.conftest import Cluster, flush_redis, make_cluster
from tests.integrations.harness import export_test_spans, wait_for

pytestmark = pytest.mark.timeout(60)

HEARTBEAT_INTERVAL = "0.2"
HEARTBEAT_TIMEOUT = 1.5


@pytest.fixture
def cluster(instrumented_producer: object, tmp_path: Path) -> Iterator[Cluster]:
    """A fresh queue and store on Redis database 1; the test starts its own workers."""
    cluster = make_cluster("redis", tmp_path / "cluster")
    export_test_spans(cluster.spans_path)
    try:
        yield cluster
    finally:
        export_test_spans(None)
        cluster.close()
        flush_redis()


def test_max_tasks_per_child_loses_no_span(cluster: Cluster) -> None:
    """Children exiting after each task flush on the way out: every span and record gets out."""
    cluster.start_worker(
        "--max-tasks-per-child=1",
        concurrency=1,
        JOBTRACE_CELERY_BATCH_SPANS="1",  # spans wait a minute in a batch: only a flush sends them
        JOBTRACE_CELERY_FLUSH="0",  # and not after each task
    )
    job_ids = [cluster.send("QuickJob", number) for number in range(3)]
    spans = [cluster.wait_for_job_spans(job_id)[0] for job_id in job_ids]

    assert len({span["pid"] for span in spans}) == 3  # one pool child per task
    assert {span["attributes"]["jobtrace.job.outcome"] for span in spans} == {"succeeded"}
    cluster.wait_for_jobs(
        lambda jobs: sorted(j.job_id for j in jobs if j.state == "succeeded") == sorted(job_ids),
        "three succeeded jobs in the store",
    )


def test_killed_worker_is_reaped_as_crashed(cluster: Cluster) -> None:
    """SIGKILL mid-task: the job stops heartbeating and reap() marks it crashed; others still run."""
    doomed = cluster.start_worker(concurrency=1, JOBTRACE_CELERY_HEARTBEAT=HEARTBEAT_INTERVAL)
    marker = cluster.directory / "slow.started"
    slow = cluster.send("SlowJob", 30, str(marker))
    wait_for(marker.exists, timeout=20, what="the slow task to start")
    cluster.wait_for_jobs(lambda jobs: jobs[0].state == "running", "the running job", root=slow)
    os.killpg(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait(10)

    cluster.start_worker(concurrency=1, JOBTRACE_CELERY_HEARTBEAT=HEARTBEAT_INTERVAL)
    others = [cluster.send("QuickJob", number) for number in range(2)]
    for job_id in others:
        cluster.wait_for_job_spans(job_id)

    def reaped() -> bool:
        reap(cluster.database_url, heartbeat_timeout=HEARTBEAT_TIMEOUT)
        return [j.state for j in cluster.jobs(slow)] == ["crashed"]

    wait_for(reaped, timeout=20, what="the killed job to be reaped as crashed")

    # A pool child hands its records over in its own time (no flush after each task).
    cluster.wait_for_jobs(
        lambda jobs: sum(j.state == "succeeded" for j in jobs) == 2, "the other two succeeded"
    )
    states = {job.job_id: job.state for job in cluster.jobs()}
    assert states == {slow: "crashed", others[0]: "succeeded", others[1]: "succeeded"}
    assert cluster.wait_for_job_spans(others[0])[0]["pid"] != doomed.process.pid
