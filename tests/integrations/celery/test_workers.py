"""Celery with real ``celery worker`` processes: traces across processes, lineage, retries, outcomes."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from typing import Any

import pytest
from celery import Celery

from tests.integrations.celery.conftest import Cluster, Span
from tests.integrations.celery.tasks import BROKERS
from tests.integrations.harness import wait_for

pytestmark = pytest.mark.timeout(60)


def by_job_id(spans: list[Span]) -> dict[str, Span]:
    return {span["attributes"]["jobtrace.job.id"]: span for span in spans}


def test_pipeline_is_one_trace_and_one_lineage_tree(any_cluster: Cluster) -> None:
    """1 → 3 → 2 pipeline: one trace, process under send under the parent's process, stage counts."""
    cluster = any_cluster
    root = cluster.send("SyncJob", 3, 1)
    processes = by_job_id(cluster.wait_for_tree(root, 10))
    cluster.wait_for_spans(lambda _: len(cluster.tree_spans(root, "PRODUCER")) >= 10, "10 sends")
    sends = by_job_id(cluster.tree_spans(root, "PRODUCER"))

    assert len(processes) == len(sends) == 10
    assert {s["trace_id"] for s in [*processes.values(), *sends.values()]} == {
        processes[root]["trace_id"]
    }
    assert sends[root]["pid"] == os.getpid() != processes[root]["pid"]
    assert sends[root]["parent_span_id"] is None
    for job_id, process in processes.items():
        attributes = process["attributes"]
        assert process["name"] == f"process {attributes['jobtrace.job.name']}"
        assert process["parent_span_id"] == sends[job_id]["span_id"]
        assert attributes["messaging.system"] == sends[job_id]["attributes"]["messaging.system"]
        assert attributes["messaging.system"] == "celery"
        assert attributes["messaging.destination.name"] == cluster.queue
        assert attributes["messaging.message.id"] == job_id
        assert attributes["jobtrace.job.outcome"] == "succeeded"
        parent_id = attributes.get("jobtrace.job.parent_id")
        if job_id != root:
            assert sends[job_id]["parent_span_id"] == processes[parent_id]["span_id"]
            assert sends[job_id]["pid"] == processes[parent_id]["pid"]
    stages = Counter(
        (p["attributes"]["jobtrace.job.depth"], p["attributes"]["jobtrace.job.name"])
        for p in processes.values()
    )
    assert stages == {
        (0, "SyncJob"): 1,
        (1, "MoviePageJob"): 3,
        (2, "MovieDetailJob"): 3,
        (2, "ShowtimeProcessJob"): 3,
    }

    jobs = cluster.wait_for_jobs(
        lambda jobs: len(jobs) == 10 and all(j.state == "succeeded" for j in jobs),
        "10 succeeded jobs in the store",
        root=root,
    )
    by_id = {job.job_id: job for job in jobs}
    assert Counter((job.depth, job.name) for job in jobs) == stages
    for job in jobs:
        assert job.system == "celery"
        assert job.queue == cluster.queue
        assert job.trace_id == processes[job.job_id]["trace_id"]
        assert job.span_id == processes[job.job_id]["span_id"]
        if job.depth:
            assert by_id[job.parent_job_id].depth == job.depth - 1
    assert sorted(Counter(j.parent_job_id for j in jobs if j.depth == 2).values()) == [2, 2, 2]
    assert by_id[root].items_processed == 3


def test_failing_task_records_the_error(redis_cluster: Cluster) -> None:
    """A task that raises: ERROR span with error.type and the exception event, failed in the store."""
    cluster = redis_cluster
    job_id = cluster.send("FailingJob", "movie_not_ready")
    (span,) = cluster.wait_for_job_spans(job_id)

    assert span["status"] == "ERROR"
    assert span["attributes"]["error.type"] == "ValueError"
    assert span["attributes"]["jobtrace.job.outcome"] == "failed"
    assert span["attributes"]["jobtrace.job.will_retry"] is False
    (exception,) = [e for e in span["events"] if e["name"] == "exception"]
    assert exception["attributes"]["exception.message"] == "movie_not_ready"
    (job,) = cluster.wait_for_jobs(lambda jobs: jobs[0].state == "failed", "failed", root=job_id)
    assert (job.error_type, job.error_message) == ("ValueError", "movie_not_ready")


def test_retries_are_linked_attempts(redis_cluster: Cluster) -> None:
    """self.retry() twice, then max_retries: three attempt spans linked in order under one send."""
    cluster = redis_cluster
    job_id = cluster.send("FlakyJob", "crm")
    attempts = cluster.wait_for_job_spans(job_id, 3)

    assert [s["attributes"]["jobtrace.job.attempt"] for s in attempts] == [1, 2, 3]
    assert [s["attributes"]["jobtrace.job.outcome"] for s in attempts] == [
        "retrying",
        "retrying",
        "failed",
    ]
    assert [s["status"] for s in attempts] == ["UNSET", "UNSET", "ERROR"]
    assert {s["attributes"]["error.type"] for s in attempts} == {"TimeoutError"}
    assert attempts[0]["links"] == []
    for previous, current in itertools.pairwise(attempts):
        (link,) = current["links"]
        assert (link["trace_id"], link["span_id"]) == (previous["trace_id"], previous["span_id"])
        assert link["attributes"]["jobtrace.link.type"] == "previous_attempt"
    (send,) = cluster.tree_spans(job_id, "PRODUCER")
    assert {s["parent_span_id"] for s in attempts} == {send["span_id"]}

    cluster.wait_for_jobs(lambda jobs: jobs[0].state == "failed", "failed", root=job_id)
    # Each attempt ran in whichever pool child took it, and a child hands its records over on its
    # writer's interval, not per task: attempt 3's may land before attempt 2's.
    expected = [(1, "retrying"), (2, "retrying"), (3, "failed")]
    wait_for(
        lambda: [(a.attempt, a.state) for a in cluster.attempts(job_id)] == expected,
        timeout=20,
        what="the three attempts in the store",
    )


def test_canvas_lineage_follows_the_enqueuer(redis_cluster: Cluster) -> None:
    """A chain's links nest (each the child of the one before); a chord's body, of its last header."""
    cluster = redis_cluster
    root = cluster.send("CanvasJob")
    processes = cluster.wait_for_tree(root, 7)
    names = {s["attributes"]["jobtrace.job.id"]: s["attributes"] for s in processes}

    adds = sorted(
        (a for a in names.values() if a["jobtrace.job.name"] == "AddJob"),
        key=lambda a: a["jobtrace.job.depth"],
    )
    assert [a["jobtrace.job.depth"] for a in adds] == [1, 2, 3]
    assert adds[0]["jobtrace.job.parent_id"] == root
    for previous, current in itertools.pairwise(adds):
        assert current["jobtrace.job.parent_id"] == previous["jobtrace.job.id"]
    quick = [a for a in names.values() if a["jobtrace.job.name"] == "QuickJob"]
    assert [(a["jobtrace.job.depth"], a["jobtrace.job.parent_id"]) for a in quick] == [
        (1, root),
        (1, root),
    ]
    (total,) = [a for a in names.values() if a["jobtrace.job.name"] == "SumJob"]
    assert total["jobtrace.job.parent_id"] in {a["jobtrace.job.id"] for a in quick}
    assert total["jobtrace.job.depth"] == 2
    assert len({s["trace_id"] for s in processes}) == 1


def test_send_task_by_a_name_the_producer_does_not_know(redis_cluster: Cluster) -> None:
    """send_task from an app with no task code: the send span and metadata still go with it."""
    cluster = redis_cluster
    bare = Celery("bare", broker=BROKERS["redis"], set_as_current=False)
    try:
        job_id = str(bare.send_task("QuickJob", args=[3], queue=cluster.queue).id)
    finally:
        bare.close()
    (process,) = cluster.wait_for_job_spans(job_id)
    (send,) = cluster.tree_spans(job_id, "PRODUCER")

    assert send["name"] == "send QuickJob"
    assert send["attributes"]["messaging.destination.name"] == cluster.queue
    assert process["parent_span_id"] == send["span_id"]
    assert process["trace_id"] == send["trace_id"]


def test_tasks_that_do_not_complete_get_their_outcome(redis_cluster: Cluster) -> None:
    """Ignore → skipped, Reject → discarded, unknown name → discarded, expired → discarded."""
    cluster = redis_cluster
    ignored = cluster.send("IgnoredJob")
    rejected = cluster.send("RejectedJob")
    unknown = cluster.send("NoSuchJob")
    expired = cluster.send("QuickJob", 1, expires=0.001)
    outcomes: dict[str, Any] = {}
    for job_id in (ignored, rejected, unknown, expired):
        (span,) = cluster.wait_for_job_spans(job_id)
        outcomes[job_id] = (
            span["attributes"]["jobtrace.job.outcome"],
            span["attributes"].get("jobtrace.job.outcome_reason"),
        )

    assert outcomes == {
        ignored: ("skipped", "ignored"),
        rejected: ("discarded", "bad_payload"),
        unknown: ("discarded", "unknown_task"),
        expired: ("discarded", "expired"),
    }
    cluster.wait_for_jobs(
        lambda jobs: (
            {j.job_id: j.state for j in jobs if j.job_id in outcomes}
            == {job_id: outcome for job_id, (outcome, _) in outcomes.items()}
        ),
        "the four outcomes in the store",
    )


def test_revoked_task_is_cancelled(redis_cluster: Cluster) -> None:
    """A task revoked before its countdown ends never runs and is cancelled."""
    cluster = redis_cluster
    job_id = cluster.send("QuickJob", 2, countdown=1)
    cluster.app.control.revoke(job_id)
    (span,) = cluster.wait_for_job_spans(job_id)

    assert span["attributes"]["jobtrace.job.outcome"] == "cancelled"
    assert span["attributes"]["jobtrace.job.outcome_reason"] == "revoked"
    (send,) = cluster.tree_spans(job_id, "PRODUCER")
    assert span["parent_span_id"] == send["span_id"]
    wait_for(
        lambda: [j.state for j in cluster.jobs(job_id)] == ["cancelled"],
        timeout=20,
        what="the cancelled job in the store",
    )
