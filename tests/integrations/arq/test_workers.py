"""arq with real ``arq`` worker processes: traces across processes, lineage, retries, crashes."""

from __future__ import annotations

import itertools
import pickle
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import JobStatus

from jobtrace.integrations.arq import JOB_KEY
from tests.integrations.arq.conftest import ArqSetup
from tests.integrations.harness import wait_for


def _by_job_id(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["attributes"]["jobtrace.job.id"]: span for span in spans}


async def test_failing_job_span_has_the_error(arq_setup: ArqSetup) -> None:
    """A job that raises: ERROR status, ``error.type``, the exception event, ``failed`` stored."""
    arq_setup.start_worker()
    job = await arq_setup.pool.enqueue_job("failing_job", "m-42")
    assert job is not None
    with pytest.raises(ValueError, match="movie_not_ready"):
        await job.result(timeout=10)

    (span,) = arq_setup.wait_for_process_spans(1, "failing_job")
    assert span["status"] == "ERROR"
    assert span["attributes"]["error.type"] == "ValueError"
    assert span["attributes"]["jobtrace.job.outcome"] == "failed"
    (exception,) = [event for event in span["events"] if event["name"] == "exception"]
    assert exception["attributes"]["exception.type"] == "ValueError"
    assert "movie_not_ready: m-42" in exception["attributes"]["exception.message"]
    stored = arq_setup.wait_for_jobs(1)[job.job_id]
    assert (stored.state, stored.error_type) == ("failed", "ValueError")


async def test_retries_are_linked_attempts(arq_setup: ArqSetup) -> None:
    """``Retry(defer=0.1)``: one span per attempt, each linked to the one before, in one trace."""
    arq_setup.start_worker()
    flaky = await arq_setup.pool.enqueue_job("flaky_job", 3)
    stubborn = await arq_setup.pool.enqueue_job("stubborn_job")  # max_tries=2
    assert flaky is not None
    assert stubborn is not None
    assert await flaky.result(timeout=15) == 3
    with pytest.raises(Exception, match="max 2 retries exceeded"):
        await stubborn.result(timeout=15)

    spans = sorted(
        arq_setup.wait_for_process_spans(3, "flaky_job"),
        key=lambda span: span["attributes"]["jobtrace.job.attempt"],
    )
    (send,) = arq_setup.send_spans("flaky_job")
    assert [span["attributes"]["jobtrace.job.attempt"] for span in spans] == [1, 2, 3]
    assert [span["attributes"]["jobtrace.job.outcome"] for span in spans] == [
        "retrying",
        "retrying",
        "succeeded",
    ]
    assert {span["parent_span_id"] for span in spans} == {send["span_id"]}
    assert {span["trace_id"] for span in spans} == {send["trace_id"]}
    assert spans[0]["links"] == []
    for previous, span in itertools.pairwise(spans):
        (link,) = span["links"]
        assert link["span_id"] == previous["span_id"]
        assert link["attributes"]["jobtrace.link.type"] == "previous_attempt"

    first, last = sorted(
        arq_setup.wait_for_process_spans(2, "stubborn_job"),
        key=lambda span: span["attributes"]["jobtrace.job.attempt"],
    )
    assert first["attributes"]["jobtrace.job.outcome"] == "retrying"
    assert last["attributes"]["jobtrace.job.outcome"] == "failed"
    assert last["attributes"]["jobtrace.job.outcome_reason"] == "max_tries_reached"
    assert last["links"][0]["span_id"] == first["span_id"]

    arq_setup.wait_for_jobs(2)
    attempts = arq_setup.attempts(flaky.job_id)
    assert [(a.attempt, a.state) for a in attempts] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "succeeded"),
    ]
    assert [a.span_id for a in attempts] == [span["span_id"] for span in spans]
    assert arq_setup.jobs()[stubborn.job_id].state == "failed"


async def test_deferred_jobs_are_queued_until_due(arq_setup: ArqSetup) -> None:
    """``_defer_by`` / ``_defer_until``: ``queued`` with a delay, then run in the same trace."""
    arq_setup.start_worker()
    by = await arq_setup.pool.enqueue_job("deferred_job", _defer_by=timedelta(seconds=1.5))
    until = await arq_setup.pool.enqueue_job(
        "deferred_job", _defer_until=datetime.now(timezone.utc) + timedelta(seconds=1.5)
    )
    assert by is not None
    assert until is not None
    assert await by.status() == JobStatus.deferred
    for job in (by, until):
        assert arq_setup.wait_for_state(job.job_id, "queued").attempt == 1
    stored = pickle.loads(arq_setup.connection.get(job_key_prefix + by.job_id))
    assert stored[JOB_KEY]["jobtrace-job-id"] == by.job_id
    due_in = float(stored[JOB_KEY]["jobtrace-due-at"]) - float(
        stored[JOB_KEY]["jobtrace-enqueued-at"]
    )
    assert due_in == pytest.approx(1.5, abs=0.1)  # queue wait counts from then, not from enqueue

    for job in (by, until):
        await job.result(timeout=10)
    sends = _by_job_id(arq_setup.send_spans("deferred_job"))
    processes = _by_job_id(arq_setup.wait_for_process_spans(2, "deferred_job"))
    for job in (by, until):
        assert sends[job.job_id]["attributes"]["jobtrace.job.delay_s"] == pytest.approx(
            1.5, abs=0.1
        )
        process = processes[job.job_id]
        assert process["parent_span_id"] == sends[job.job_id]["span_id"]
        assert process["attributes"]["jobtrace.job.queue_wait_s"] >= 0
    assert {job.state for job in arq_setup.wait_for_jobs(2).values()} == {"succeeded"}


async def test_shutdown_mid_job_retries_it_linked(arq_setup: ArqSetup) -> None:
    """SIGTERM mid-job: the attempt is ``retrying`` (worker_shutdown); the next worker runs try 2."""
    first_worker = arq_setup.start_worker()
    job = await arq_setup.pool.enqueue_job("hanging_job")
    assert job is not None
    arq_setup.wait_running(job.job_id)
    first_worker.stop()

    (interrupted,) = arq_setup.wait_for_process_spans(1, "hanging_job")
    assert interrupted["attributes"]["jobtrace.job.outcome"] == "retrying"
    assert interrupted["attributes"]["jobtrace.job.outcome_reason"] == "worker_shutdown"
    arq_setup.start_worker()
    assert await job.result(timeout=10) == 2
    spans = arq_setup.wait_for_process_spans(2, "hanging_job")
    (second,) = [span for span in spans if span["attributes"]["jobtrace.job.attempt"] == 2]
    assert second["attributes"]["jobtrace.job.outcome"] == "succeeded"
    assert [link["span_id"] for link in second["links"]] == [interrupted["span_id"]]
    assert second["trace_id"] == interrupted["trace_id"]


async def test_killed_worker_is_reaped_as_crashed(arq_setup: ArqSetup) -> None:
    """SIGKILL mid-job: the reaper marks it crashed, other jobs finish, the re-run links back."""
    from jobtrace.lineage.reaper import reap

    doomed = arq_setup.start_worker(JOBTRACE_HEARTBEAT_INTERVAL="0.3")
    hanging = await arq_setup.pool.enqueue_job("hanging_job")
    before = await arq_setup.pool.enqueue_job("quick_job", 1)
    assert hanging is not None
    assert before is not None
    assert await before.result(timeout=10) == 2
    arq_setup.wait_running(hanging.job_id)
    arq_setup.wait_for_state(hanging.job_id, "running")
    arq_setup.kill(doomed)

    def states_after_reaping() -> dict[str, str]:
        reap(arq_setup.database_url, heartbeat_timeout=1)
        return {job_id: job.state for job_id, job in arq_setup.jobs().items()}

    wait_for(
        lambda: states_after_reaping().get(hanging.job_id) == "crashed",
        timeout=20,
        what="the reaper to mark the killed job crashed",
    )
    after = await arq_setup.pool.enqueue_job("quick_job", 2)
    assert after is not None
    arq_setup.start_worker()
    assert await after.result(timeout=10) == 4
    assert arq_setup.wait_for_state(before.job_id, "succeeded")
    assert arq_setup.wait_for_state(after.job_id, "succeeded")
    assert not [s for s in arq_setup.process_spans("hanging_job")]  # it died with its worker

    # arq re-runs the job once its in-progress key expires (the job timeout + 10 s): skip the wait.
    crashed_span = arq_setup.attempts(hanging.job_id)[0].span_id
    arq_setup.connection.delete(in_progress_key_prefix + hanging.job_id)
    assert await hanging.result(timeout=10) == 2
    (rerun,) = arq_setup.wait_for_process_spans(1, "hanging_job")
    assert rerun["attributes"]["jobtrace.job.attempt"] == 2
    assert [link["span_id"] for link in rerun["links"]] == [crashed_span]
    assert [a.state for a in arq_setup.attempts(hanging.job_id)] == ["crashed", "succeeded"]
