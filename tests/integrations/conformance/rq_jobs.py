"""The RQ jobs of the conformance suite, run by ``rq worker --worker-class
tests.integrations.rq.worker.Worker`` (which sets up telemetry and instruments RQ).

RQ names a job by its function's dotted path: :func:`path` gives it for a suite job name.
"""

from __future__ import annotations

from typing import Any

from rq import Queue, get_current_job

from tests.integrations.conformance import jobs


def path(name: str) -> str:
    """The dotted path RQ records as the name of the suite job called ``name``."""
    return f"{__name__}.{name}"


def enqueue(name: str, *args: Any) -> None:
    """Enqueue a child job from inside a job, on the job's own queue."""
    job = get_current_job()
    assert job is not None, "called outside an RQ job"
    Queue(job.origin, connection=job.connection).enqueue(path(name), *args)


def conformance_root(pages: int, leaves: int, held: int, barrier: str) -> int:
    return jobs.root(enqueue, pages, leaves, held, barrier)


def conformance_page(page_number: int, leaves: int, held: int, barrier: str) -> int:
    return jobs.page(enqueue, page_number, leaves, held, barrier)


conformance_leaf = jobs.leaf
conformance_progress_child = jobs.progress_child
conformance_flaky = jobs.flaky


def conformance_progress_parent(children: int, barrier: str) -> int:
    return jobs.progress_parent(enqueue, children, barrier)
