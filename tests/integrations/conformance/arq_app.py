"""The arq worker app of the conformance suite: the arq tests' settings with the suite's jobs.

``arq tests.integrations.conformance.arq_app.WorkerSettings``, with the environment of
``tests.integrations.arq.worker_app`` (queue, spans file, store); ``JOBTRACE_ARQ_MAX_JOBS`` sets how
many jobs run at once on the worker's event loop, ``JOBTRACE_ARQ_REDIS_URL`` its Redis.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq import Retry
from arq.connections import RedisSettings
from arq.worker import func

import jobtrace
from tests.integrations.arq import worker_app
from tests.integrations.arq.keys import REDIS_URL
from tests.integrations.conformance import jobs

Ctx = dict[str, Any]


async def conformance_root(ctx: Ctx, pages: int, leaves: int, held: int, barrier: str) -> int:
    for page_number in range(pages):
        await ctx["redis"].enqueue_job(jobs.PAGE, page_number, leaves, held, barrier)
    jobtrace.count(processed=pages, total=pages)
    return pages


async def conformance_page(ctx: Ctx, page_number: int, leaves: int, held: int, barrier: str) -> int:
    for leaf_number in range(leaves):
        await ctx["redis"].enqueue_job(jobs.LEAF, page_number, leaf_number, held, barrier)
    return leaves


async def conformance_leaf(
    ctx: Ctx, page_number: int, leaf_number: int, held: int, barrier: str
) -> int:
    if jobs.is_held(leaf_number, held):
        await jobs.hold_async(barrier)
    return page_number * 100 + leaf_number


async def conformance_progress_parent(ctx: Ctx, children: int, barrier: str) -> int:
    for index in range(children):
        await ctx["redis"].enqueue_job(jobs.PROGRESS_CHILD, index, barrier)
    return children


async def conformance_progress_child(ctx: Ctx, index: int, barrier: str) -> int:
    jobtrace.progress(1, 2)
    await jobs.hold_async(barrier)
    jobtrace.progress(2, 2)
    return index


async def conformance_flaky(ctx: Ctx, marker: str) -> str:
    try:
        return jobs.flaky(marker)
    except ConnectionError:
        raise Retry(defer=0.05) from None


class WorkerSettings:
    """The arq tests' settings (arq reads a settings class's own ``__dict__``: no inheriting)."""

    queue_name = worker_app.WorkerSettings.queue_name
    on_startup = worker_app.mark_ready
    poll_delay = worker_app.WorkerSettings.poll_delay
    keep_result = worker_app.WorkerSettings.keep_result
    functions: ClassVar[list[Any]] = [
        func(conformance_root, name=jobs.ROOT),
        func(conformance_page, name=jobs.PAGE),
        func(conformance_leaf, name=jobs.LEAF),
        func(conformance_progress_parent, name=jobs.PROGRESS_PARENT),
        func(conformance_progress_child, name=jobs.PROGRESS_CHILD),
        func(conformance_flaky, name=jobs.FLAKY),
    ]
    redis_settings = RedisSettings.from_dsn(os.environ.get("JOBTRACE_ARQ_REDIS_URL", REDIS_URL))
    max_jobs = int(os.environ.get("JOBTRACE_ARQ_MAX_JOBS", "10"))
