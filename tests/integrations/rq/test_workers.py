"""RQ with real ``rq worker`` processes: traces across processes, lineage, failures, retries, crashes."""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter
from typing import Any

from rq import Retry
from rq.command import send_stop_job_command

from tests.integrations.harness import wait_for
from tests.integrations.rq import jobs
from tests.integrations.rq.conftest import RQSetup


def _by_job(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["attributes"]["jobtrace.job.id"]: span for span in spans}


def test_simple_worker_traces_without_forking(rq_setup: RQSetup) -> None:
    """``SimpleWorker`` runs jobs in its own process and traces them the same way."""
    root = rq_setup.queue.enqueue(jobs.sync_cinema, 2, 1)
    worker = rq_setup.run_burst(worker_class="SimpleWorker")

    runs = _by_job(rq_setup.process_spans())
    sends = _by_job(rq_setup.send_spans())
    assert len(runs) == 5, rq_setup.logs()
    assert {run["pid"] for run in runs.values()} == {worker.process.pid}
    for job_id, run in runs.items():
        assert run["parent_span_id"] == sends[job_id]["span_id"]
        assert run["trace_id"] == sends[root.id]["trace_id"]
    stored = rq_setup.wait_for_jobs(5)
    assert Counter(job.depth for job in stored.values()) == {0: 1, 1: 2, 2: 2}


def test_failing_job_span_has_the_error(rq_setup: RQSetup) -> None:
    """A job that raises: ERROR status, ``error.type``, the exception event, ``failed`` in the store."""
    job = rq_setup.queue.enqueue(jobs.fail, "no such movie")
    rq_setup.run_burst()

    (run,) = rq_setup.process_spans("fail")
    assert run["status"] == "ERROR"
    assert run["attributes"]["error.type"] == "ValueError"
    assert run["attributes"]["jobtrace.job.outcome"] == "failed"
    (exception,) = [event for event in run["events"] if event["name"] == "exception"]
    assert exception["attributes"]["exception.message"] == "no such movie"
    stored = rq_setup.wait_for_jobs(1)[job.id]
    assert (stored.state, stored.error_type) == ("failed", "ValueError")


def test_retries_are_linked_attempts(rq_setup: RQSetup) -> None:
    """``Retry(max=3)`` and two failures: three spans, attempts 1–3, each linked to the one before."""
    job = rq_setup.queue.enqueue(jobs.flaky, 2, retry=Retry(max=3))
    rq_setup.run_burst()

    runs = sorted(
        rq_setup.process_spans("flaky"), key=lambda s: s["attributes"]["jobtrace.job.attempt"]
    )
    assert [run["attributes"]["jobtrace.job.attempt"] for run in runs] == [1, 2, 3], rq_setup.logs()
    assert [run["attributes"]["jobtrace.job.outcome"] for run in runs] == [
        "retrying",
        "retrying",
        "succeeded",
    ]
    assert runs[0]["links"] == []
    for previous, run in itertools.pairwise(runs):
        (link,) = run["links"]
        assert link["span_id"] == previous["span_id"]
        assert link["attributes"]["jobtrace.link.type"] == "previous_attempt"
    (send,) = rq_setup.send_spans("flaky")
    assert {run["parent_span_id"] for run in runs} == {send["span_id"]}

    rq_setup.wait_for_jobs(1)
    attempts = rq_setup.attempts(job.id)
    assert [(a.attempt, a.state) for a in attempts] == [
        (1, "retrying"),
        (2, "retrying"),
        (3, "succeeded"),
    ]
    assert [a.span_id for a in attempts] == [run["span_id"] for run in runs]


def test_killed_work_horse_is_reaped_as_crashed(rq_setup: RQSetup) -> None:
    """SIGKILL of a work horse mid-job: the reaper marks it crashed, the jobs behind it finish."""
    from jobtrace.lineage.reaper import reap

    hung = rq_setup.queue.enqueue(jobs.hang, 60)
    others = [rq_setup.queue.enqueue(jobs.quick, n) for n in range(2)]
    worker = rq_setup.start_worker()
    pid_key = f"jobtrace-test:pid:{hung.id}"
    pid = wait_for(lambda: rq_setup.connection.get(pid_key), timeout=20, what="the hung job")
    os.kill(int(pid), signal.SIGKILL)
    rq_setup.wait_until_exits(worker)

    def states_after_reaping() -> dict[str, str]:
        reap(rq_setup.database_url, heartbeat_timeout=1)
        return {job_id: job.state for job_id, job in rq_setup.jobs().items()}

    states = wait_for(
        lambda: (states := states_after_reaping()).get(hung.id) == "crashed" and states,
        timeout=15,
        what="the killed job to be marked crashed",
    )
    assert [states[job.id] for job in others] == ["succeeded", "succeeded"]
    assert len(rq_setup.process_spans("quick")) == 2
    assert rq_setup.process_spans("hang") == []  # its span died with the horse


def test_crashed_attempt_keeps_its_number_when_retried(rq_setup: RQSetup) -> None:
    """A horse that dies on attempt 1 of a retried job: the retry runs as attempt 2, not 1 again."""
    job = rq_setup.queue.enqueue(jobs.crash_once, retry=Retry(max=1))
    rq_setup.run_burst()

    (run,) = rq_setup.process_spans("crash_once")
    assert run["attributes"]["jobtrace.job.attempt"] == 2, rq_setup.logs()
    assert run["attributes"]["jobtrace.job.outcome"] == "succeeded"
    stored = rq_setup.wait_for_jobs(1)[job.id]
    assert (stored.attempt, stored.state) == (2, "succeeded")
    assert [a.attempt for a in rq_setup.attempts(job.id)] == [1, 2]


def test_stopped_job_is_cancelled(rq_setup: RQSetup) -> None:
    """``send_stop_job_command`` kills the horse; the worker records the attempt as cancelled."""
    job = rq_setup.queue.enqueue(jobs.hang, 60)
    worker = rq_setup.start_worker()
    wait_for(lambda: rq_setup.connection.get(f"jobtrace-test:pid:{job.id}"), timeout=20)
    send_stop_job_command(rq_setup.connection, job.id)
    rq_setup.wait_until_exits(worker)

    stored = rq_setup.wait_for_jobs(1)[job.id]
    assert (stored.state, stored.reason) == ("cancelled", "stopped")


def test_work_horses_hand_their_records_to_the_worker(rq_setup: RQSetup) -> None:
    """200 jobs, each in its own work horse: every record arrives, through the worker's writer."""
    queued = [rq_setup.queue.enqueue(jobs.quick, n) for n in range(200)]
    rq_setup.run_burst(timeout=120)
    stored = rq_setup.wait_for_jobs(200)
    assert {stored[job.id].state for job in queued} == {"succeeded"}
    assert len(rq_setup.process_spans("quick")) == 200
    horses = {stored[job.id].pid for job in queued}
    assert len(horses) > 1  # each job ran in a work horse of its own
