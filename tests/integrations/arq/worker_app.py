"""The worker app: ``arq tests.integrations.arq.worker_app.WorkerSettings``.

Reads ``JOBTRACE_ARQ_QUEUE``; spans go to ``JOBTRACE_TEST_SPANS``, lineage to
``JOBTRACE_DATABASE_URL``. ``JOBTRACE_ARQ_INSTRUMENT=0`` leaves the instrumenting to someone else
(``opentelemetry-instrument``), or out.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar

from arq import Retry
from arq.connections import RedisSettings
from arq.worker import func

import jobtrace
from jobtrace.integrations.arq import instrument_arq
from tests.integrations.arq.keys import READY_KEY, REDIS_URL, RUNNING_KEY
from tests.integrations.harness import setup_worker_telemetry

setup_worker_telemetry()
if os.environ.get("JOBTRACE_ARQ_INSTRUMENT", "1") == "1":
    instrument_arq()

Ctx = dict[str, Any]


# The pipeline of scenario 1, small: SyncJob → MoviePageJob × pages → MovieDetailJob and
# ShowtimeProcessJob under each page.
async def sync_job(ctx: Ctx, source: str, pages: int) -> int:
    for page in range(pages):
        await ctx["redis"].enqueue_job("MoviePageJob", source, page)
    jobtrace.count(total=pages)
    return pages


async def movie_page_job(ctx: Ctx, source: str, page: int) -> None:
    await ctx["redis"].enqueue_job("MovieDetailJob", source, page)
    await ctx["redis"].enqueue_job("ShowtimeProcessJob", source, page, _defer_by=0.1)


async def movie_detail_job(ctx: Ctx, source: str, page: int) -> str:
    return f"{source}/{page}"


async def showtime_process_job(ctx: Ctx, source: str, page: int) -> str:
    return f"{source}/{page}/showtimes"


async def failing_job(ctx: Ctx, movie: str) -> None:
    raise ValueError(f"movie_not_ready: {movie}")


async def flaky_job(ctx: Ctx, succeed_on: int) -> int:
    """Asks arq to retry it (``Retry(defer=0.1)``) until try ``succeed_on``."""
    if ctx["job_try"] < succeed_on:
        raise Retry(defer=0.1)
    return int(ctx["job_try"])


async def stubborn_job(ctx: Ctx) -> None:
    """Always asks for a retry; declared with ``max_tries=2``."""
    raise Retry(defer=0.1)


async def deferred_job(ctx: Ctx) -> float:
    return float(ctx["score"])


async def hanging_job(ctx: Ctx) -> int:
    """On its first try: says it runs (a Redis key), then sleeps until its worker goes away."""
    if ctx["job_try"] == 1:
        await ctx["redis"].set(RUNNING_KEY + ctx["job_id"], b"1", ex=60)
        await asyncio.sleep(60)
    return int(ctx["job_try"])


async def quick_job(ctx: Ctx, number: int) -> int:
    return number * 2


async def mark_ready(ctx: Ctx) -> None:
    """On start-up: tell the test this worker polls its queue."""
    await ctx["redis"].set(READY_KEY + WorkerSettings.queue_name, b"1", ex=60)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [
        func(sync_job, name="SyncJob"),
        func(movie_page_job, name="MoviePageJob"),
        func(movie_detail_job, name="MovieDetailJob"),
        func(showtime_process_job, name="ShowtimeProcessJob"),
        func(failing_job, name="failing_job"),
        func(flaky_job, name="flaky_job"),
        func(stubborn_job, name="stubborn_job", max_tries=2),
        func(deferred_job, name="deferred_job"),
        func(hanging_job, name="hanging_job"),
        func(quick_job, name="quick_job"),
    ]
    queue_name = os.environ.get("JOBTRACE_ARQ_QUEUE", "arq:queue")
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    on_startup = mark_ready
    poll_delay = 0.05
    keep_result = 60
    max_jobs = 10
