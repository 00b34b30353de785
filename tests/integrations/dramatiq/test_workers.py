"""Dramatiq with real ``dramatiq`` CLI workers: traces across processes, lineage, retries, crashes."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from typing import Any

import pytest
import redis

from jobtrace.lineage.models import Attempt, Job
from tests.integrations.dramatiq.actors import REDIS_URL
from tests.integrations.dramatiq.conftest import Setup
from tests.integrations.harness import store_rows, wait_for

pytestmark = pytest.mark.timeout(60)


def wait_for_jobs(url: str, predicate: Any, what: str) -> list[Any]:
    """The store's jobs once ``predicate(jobs)`` holds."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (jobs := store_rows(url, Job)) and predicate(jobs) and jobs,
        timeout=20,
        what=what,
    )


def by_job_id(spans: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {s["attributes"]["jobtrace.job.id"]: s for s in spans if s["kind"] == kind}


def test_pipeline_is_one_trace_and_one_lineage_tree(rabbitmq_setup: Setup) -> None:
    """1 → 3 → 2 pipeline on RabbitMQ: one trace, process under send under the parent's process."""
    setup = rabbitmq_setup
    setup.start_worker()
    message = setup.actors.sync.send(3, 2)
    setup.wait_for_process_spans(10)
    wait_for(lambda: len([s for s in setup.spans() if s["kind"] == "PRODUCER"]) >= 10)

    spans = setup.spans()
    sends = by_job_id(spans, "PRODUCER")
    processes = by_job_id(spans, "CONSUMER")
    assert len(sends) == len(processes) == 10
    assert {s["trace_id"] for s in spans} == {processes[message.message_id]["trace_id"]}
    assert sends[message.message_id]["pid"] == os.getpid() != processes[message.message_id]["pid"]
    for job_id, process in processes.items():
        attributes = process["attributes"]
        send = sends[job_id]
        assert process["parent_span_id"] == send["span_id"]
        assert attributes["messaging.system"] == "dramatiq"
        assert attributes["messaging.destination.name"] == setup.queue
        assert attributes["messaging.message.id"] == job_id
        assert attributes["jobtrace.job.outcome"] == "succeeded"
        assert attributes["jobtrace.job.root_id"] == message.message_id
        parent_id = attributes.get("jobtrace.job.parent_id")
        if parent_id is None:
            assert job_id == message.message_id
            assert send["parent_span_id"] is None
        else:
            assert process["pid"] != os.getpid()
            assert send["parent_span_id"] == processes[parent_id]["span_id"]
    stages = Counter(
        (p["attributes"]["jobtrace.job.depth"], p["attributes"]["jobtrace.job.name"])
        for p in processes.values()
    )
    assert stages == {(0, "SyncJob"): 1, (1, "MoviePageJob"): 3, (2, "MovieDetailJob"): 6}

    jobs = wait_for_jobs(
        setup.database_url,
        lambda jobs: len(jobs) == 10 and all(j.state == "succeeded" for j in jobs),
        "10 succeeded jobs in the store",
    )
    by_id = {job.job_id: job for job in jobs}
    assert {job.root_job_id for job in jobs} == {message.message_id}
    assert Counter((job.depth, job.name, job.state) for job in jobs) == {
        (0, "SyncJob", "succeeded"): 1,
        (1, "MoviePageJob", "succeeded"): 3,
        (2, "MovieDetailJob", "succeeded"): 6,
    }
    for job in jobs:
        if job.depth > 0:
            assert by_id[job.parent_job_id].depth == job.depth - 1
        assert job.system == "dramatiq"
        assert job.queue == setup.queue
        assert job.trace_id == processes[job.job_id]["trace_id"]
    children = Counter(job.parent_job_id for job in jobs if job.depth == 2)
    assert sorted(children.values()) == [2, 2, 2]
    assert by_id[message.message_id].items_processed == 3


def test_failing_job_records_the_error(redis_setup: Setup) -> None:
    """A job that raises: ERROR span with error.type and the exception event, failed in the store."""
    setup = redis_setup
    setup.start_worker()
    message = setup.actors.failing.send("movie_not_ready")
    (span,) = setup.wait_for_process_spans(1, "FailingJob")

    assert span["status"] == "ERROR"
    assert span["attributes"]["error.type"] == "ValueError"
    assert span["attributes"]["jobtrace.job.outcome"] == "failed"
    assert span["attributes"]["jobtrace.job.will_retry"] is False
    (exception,) = [e for e in span["events"] if e["name"] == "exception"]
    assert exception["attributes"]["exception.message"] == "movie_not_ready"
    (job,) = wait_for_jobs(
        setup.database_url, lambda jobs: jobs[0].state == "failed", "the failed job"
    )
    assert job.job_id == message.message_id
    assert job.error_type == "ValueError"
    assert job.error_message == "movie_not_ready"


def test_retries_are_linked_attempts(redis_setup: Setup) -> None:
    """max_retries=2: three attempt spans linked in order; the first two retrying, the last failed."""
    setup = redis_setup
    setup.start_worker()
    message = setup.actors.flaky.send("crm")
    spans = setup.wait_for_process_spans(3, "FlakyJob")

    attempts = sorted(spans, key=lambda s: s["attributes"]["jobtrace.job.attempt"])
    assert [s["attributes"]["jobtrace.job.attempt"] for s in attempts] == [1, 2, 3]
    assert [s["attributes"]["jobtrace.job.outcome"] for s in attempts] == [
        "retrying",
        "retrying",
        "failed",
    ]
    assert [s["status"] for s in attempts] == ["UNSET", "UNSET", "ERROR"]
    assert attempts[0]["links"] == []
    for previous, current in itertools.pairwise(attempts):
        (link,) = current["links"]
        assert link["span_id"] == previous["span_id"]
        assert link["attributes"]["jobtrace.link.type"] == "previous_attempt"
    (send,) = [s for s in setup.spans() if s["kind"] == "PRODUCER"]
    assert {s["parent_span_id"] for s in attempts} == {send["span_id"]}
    assert {s["attributes"]["jobtrace.job.id"] for s in attempts} == {message.message_id}

    wait_for(
        lambda: (
            len(store_rows(setup.database_url, Attempt)) == 3
            and store_rows(setup.database_url, Job)[0].state == "failed"
        ),
        timeout=20,
        what="three attempts in the store",
    )
    rows = sorted(store_rows(setup.database_url, Attempt), key=lambda a: a.attempt)
    assert [(a.attempt, a.state) for a in rows] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "failed"),
    ]
    assert [a.span_id for a in rows] == [s["span_id"] for s in attempts]


def test_expired_message_is_discarded_without_running(redis_setup: Setup) -> None:
    """AgeLimit skips and dead-letters a message: its span says discarded, the actor never ran."""
    setup = redis_setup
    setup.start_worker()
    setup.actors.expired.send()
    (span,) = setup.wait_for_process_spans(1, "ExpiredJob")

    assert span["attributes"]["jobtrace.job.outcome"] == "discarded"
    assert span["status"] == "ERROR"
    assert not any(
        e["attributes"].get("exception.type") == "AssertionError" for e in span["events"]
    )


def test_worker_flushes_batched_spans_at_shutdown(redis_setup: Setup) -> None:
    """Spans held by a batch processor reach the exporter when the worker process shuts down."""
    setup = redis_setup
    worker = setup.start_worker(JOBTRACE_DRAMATIQ_BATCH_SPANS="1")
    setup.actors.quick.send(1)
    client = redis.Redis.from_url(REDIS_URL)
    wait_for(  # the message was acked, after its span ended
        lambda: (
            client.llen(f"dramatiq:{setup.queue}") == 0
            and client.hlen(f"dramatiq:{setup.queue}.msgs") == 0
        ),
        what="the message to be acked",
    )
    client.close()
    assert setup.process_spans("QuickJob") == []  # still in the batch processor's queue

    setup.stop_worker(worker)
    (span,) = setup.process_spans("QuickJob")
    assert span["attributes"]["jobtrace.job.outcome"] == "succeeded"
