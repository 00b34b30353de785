"""The jobs every adapter runs, written once: a 3-level fan-out, jobs held on a barrier, a flaky job.

Each adapter's job module (``local_worker``, ``celery_app``, ``rq_jobs``, ``arq_app``,
``dramatiq_app``) registers these under the same names, passing the queue's own way to enqueue a
child. A held job waits until its barrier file exists, so a test can look at the store while it runs
and let it go by creating the file; it gives up after :data:`HOLD_LIMIT` seconds so a test that failed
never leaves a job behind for long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import jobtrace

ROOT = "conformance_root"
PAGE = "conformance_page"
LEAF = "conformance_leaf"
PROGRESS_PARENT = "conformance_progress_parent"
PROGRESS_CHILD = "conformance_progress_child"
FLAKY = "conformance_flaky"
NAMES = (ROOT, PAGE, LEAF, PROGRESS_PARENT, PROGRESS_CHILD, FLAKY)

HOLD_LIMIT = 60.0
_POLL = 0.02

Enqueue = Callable[..., object]


def released(barrier: str) -> bool:
    """Whether the test let the jobs held on ``barrier`` go."""
    return Path(barrier).exists()


def hold(barrier: str) -> None:
    """Block until ``barrier`` is released (or :data:`HOLD_LIMIT` passed)."""
    deadline = time.monotonic() + HOLD_LIMIT
    while not released(barrier) and time.monotonic() < deadline:
        time.sleep(_POLL)


async def hold_async(barrier: str) -> None:
    """:func:`hold` for an event loop: the loop runs other jobs meanwhile."""
    deadline = time.monotonic() + HOLD_LIMIT
    while not released(barrier) and time.monotonic() < deadline:  # noqa: ASYNC110 - a file
        await asyncio.sleep(_POLL)


def is_held(leaf: int, held_per_page: int) -> bool:
    """The first ``held_per_page`` leaves of every page wait on the barrier."""
    return leaf < held_per_page


def fail_first_run(marker: str) -> None:
    """Raise ``ConnectionError`` on the first run (the marker file is created), return afterwards."""
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return
    raise ConnectionError("the first attempt fails")


# The jobs, for adapters whose jobs are plain functions running on threads.


def root(enqueue: Enqueue, pages: int, leaves: int, held: int, barrier: str) -> int:
    """Level 0: one page job per page, counted as the items it processed."""
    for page_number in range(pages):
        enqueue(PAGE, page_number, leaves, held, barrier)
    jobtrace.count(processed=pages, total=pages)
    return pages


def page(enqueue: Enqueue, page_number: int, leaves: int, held: int, barrier: str) -> int:
    """Level 1: one leaf job per leaf."""
    for leaf_number in range(leaves):
        enqueue(LEAF, page_number, leaf_number, held, barrier)
    return leaves


def leaf(page_number: int, leaf_number: int, held: int, barrier: str) -> int:
    """Level 2: returns at once, or once released when it is one of the held leaves."""
    if is_held(leaf_number, held):
        hold(barrier)
    return page_number * 100 + leaf_number


def progress_parent(enqueue: Enqueue, children: int, barrier: str) -> int:
    """A parent watching its batches: enqueues ``children`` jobs that report progress."""
    for index in range(children):
        enqueue(PROGRESS_CHILD, index, barrier)
    return children


def progress_child(index: int, barrier: str) -> int:
    """Reports half its progress, waits on the barrier, then reports the rest."""
    jobtrace.progress(1, 2)
    hold(barrier)
    jobtrace.progress(2, 2)
    return index


def flaky(marker: str) -> str:
    """Fails on its first attempt, succeeds on the next."""
    fail_first_run(marker)
    return marker
