"""The Celery worker app of the conformance suite: the Celery tests' app plus the suite's tasks.

``celery -A tests.integrations.conformance.celery_app worker -Q <queue>``, with the environment of
``tests.integrations.celery.app`` (broker, queue, spans file, store).
"""

from __future__ import annotations

from typing import Any

from tests.integrations.celery.app import app
from tests.integrations.conformance import jobs


def enqueue(name: str, *args: Any) -> None:
    """Send a child task from inside a task, to the app's queue."""
    app.send_task(name, args=args)


@app.task(name=jobs.ROOT)
def root(pages: int, leaves: int, held: int, barrier: str) -> int:
    return jobs.root(enqueue, pages, leaves, held, barrier)


@app.task(name=jobs.PAGE)
def page(page_number: int, leaves: int, held: int, barrier: str) -> int:
    return jobs.page(enqueue, page_number, leaves, held, barrier)


@app.task(name=jobs.LEAF)
def leaf(page_number: int, leaf_number: int, held: int, barrier: str) -> int:
    return jobs.leaf(page_number, leaf_number, held, barrier)


@app.task(name=jobs.PROGRESS_PARENT)
def progress_parent(children: int, barrier: str) -> int:
    return jobs.progress_parent(enqueue, children, barrier)


@app.task(name=jobs.PROGRESS_CHILD)
def progress_child(index: int, barrier: str) -> int:
    return jobs.progress_child(index, barrier)


@app.task(name=jobs.FLAKY, bind=True, max_retries=1)
def flaky(self: Any, marker: str) -> str:
    try:
        return jobs.flaky(marker)
    except ConnectionError as error:
        raise self.retry(exc=error, countdown=0) from error
