"""The Dramatiq actors of the conformance suite, and its worker app.

``dramatiq tests.integrations.conformance.dramatiq_app --queues <queue>`` imports the Dramatiq tests'
app (broker, instrumentation, telemetry, from its environment) and declares the suite's actors on
its queue; the test process declares the same actors with :func:`declare` to send them.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.broker import Broker

from tests.integrations.conformance import jobs


def declare(broker: Broker, queue: str) -> dict[str, Any]:
    """The suite's actors on ``queue`` of ``broker``, by job name."""
    actors: dict[str, Any] = {}

    def send(name: str, *args: Any) -> None:
        actors[name].send(*args)

    def actor(name: str, function: Any, **options: Any) -> None:
        options.setdefault("max_retries", 0)
        actors[name] = dramatiq.actor(
            function, actor_name=name, queue_name=queue, broker=broker, **options
        )

    def root(pages: int, leaves: int, held: int, barrier: str) -> int:
        return jobs.root(send, pages, leaves, held, barrier)

    def page(page_number: int, leaves: int, held: int, barrier: str) -> int:
        return jobs.page(send, page_number, leaves, held, barrier)

    def progress_parent(children: int, barrier: str) -> int:
        return jobs.progress_parent(send, children, barrier)

    actor(jobs.ROOT, root)
    actor(jobs.PAGE, page)
    actor(jobs.LEAF, jobs.leaf)
    actor(jobs.PROGRESS_PARENT, progress_parent)
    actor(jobs.PROGRESS_CHILD, jobs.progress_child)
    actor(jobs.FLAKY, jobs.flaky, max_retries=1, min_backoff=10, max_backoff=20)
    return actors


if os.environ.get("JOBTRACE_DRAMATIQ_QUEUE"):  # in the worker process
    from tests.integrations.dramatiq.app import broker

    declare(broker, os.environ["JOBTRACE_DRAMATIQ_QUEUE"])
