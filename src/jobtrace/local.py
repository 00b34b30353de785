"""An in-process job queue on worker threads that honours jobtrace's metadata contract.

It is a real executor, small on purpose: named queues each with their own worker threads, delayed
jobs, retries with per-attempt spans, and ``join()`` for "wait until the pipeline has drained". A
queue given zero workers keeps its jobs queued forever, which is how the demo shows a stuck stage.

    queue = LocalQueue({"default": 4})
    queue.enqueue(sync_movies, source="example")
    queue.join()
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import logging
import queue as queue_module
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from jobtrace import Enqueue, Relationship, trace_job
from jobtrace.instrumentation import call_args

logger = logging.getLogger("jobtrace")

SYSTEM = "jobtrace.local"


@dataclass
class _Job:
    func: Callable[..., Any]
    name: str
    queue: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    job_id: str
    attempt: int = 1
    max_attempts: int = 1
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    retry_delay: float = 0.0


@dataclass(order=True)
class _Scheduled:
    due: float
    order: int
    job: _Job = field(compare=False)


class LocalQueue:
    """Run jobs on threads in this process, each traced and recorded like on any real queue.

    Args:
        workers: Worker threads per queue name; an int gives the queue ``"default"`` that many.
            Queues not named here get ``default_workers`` threads when first used.
        default_workers: Threads for a queue first seen at enqueue; ``0`` leaves its jobs queued.
    """

    def __init__(self, workers: int | Mapping[str, int] = 4, *, default_workers: int = 1) -> None:
        self._spec = {"default": workers} if isinstance(workers, int) else dict(workers)
        self._default_workers = default_workers
        self._queues: dict[str, queue_module.SimpleQueue[_Job | None]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._outstanding = 0  # jobs ready or running on queues that have workers
        self._scheduled: list[_Scheduled] = []
        self._order = itertools.count()
        self._wake = threading.Event()
        self._closed = False
        self.completed = 0
        self.failed = 0
        self._scheduler = threading.Thread(target=self._schedule, name="jobtrace-local-scheduler")
        self._scheduler.daemon = True
        self._scheduler.start()

    # -- enqueueing -----------------------------------------------------------------------------

    def enqueue(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        name: str | None = None,
        queue: str = "default",
        delay: float | None = None,
        max_attempts: int = 1,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        retry_delay: float = 0.0,
        relationship: Relationship | None = None,
        **kwargs: Any,
    ) -> str:
        """Enqueue ``func(*args, **kwargs)`` and return the job id.

        Args:
            func: The job function, sync or async.
            name: The job's name; by default the function's name.
            queue: Which queue (and so which worker threads) runs it.
            delay: Seconds before it may run.
            max_attempts: Runs allowed in all; failures before the last are retried.
            retry_on: Exception types that are retried.
            retry_delay: Seconds between attempts.
            relationship: Trace relationship to the enqueuing job, over the configured policy.
        """
        if self._closed:
            raise RuntimeError("this LocalQueue is shut down")
        job_name = name or str(getattr(func, "__name__", repr(func)))
        recorded = call_args(args, kwargs)
        metadata: dict[str, Any] = {}
        with Enqueue(
            job_name,
            queue=queue,
            args=recorded,
            relationship=relationship,
            delay=delay,
            system=SYSTEM,
            carrier=metadata,
        ) as sending:
            job = _Job(
                func=func,
                name=job_name,
                queue=queue,
                args=args,
                kwargs=kwargs,
                metadata=metadata,
                job_id=sending.job_id,
                max_attempts=max(1, max_attempts),
                retry_on=retry_on,
                retry_delay=retry_delay,
            )
            self._submit(job, delay)
        return job.job_id

    def _submit(self, job: _Job, delay: float | None) -> None:
        if delay and delay > 0:
            with self._lock:
                heapq.heappush(
                    self._scheduled, _Scheduled(time.monotonic() + delay, next(self._order), job)
                )
            self._wake.set()
            return
        target = self._queue(job.queue)
        if target is None:
            return  # a queue nobody serves: the job stays queued, as on a real broker
        with self._lock:
            self._outstanding += 1
        target.put(job)

    def _queue(self, name: str) -> queue_module.SimpleQueue[_Job | None] | None:
        with self._lock:
            existing = self._queues.get(name)
            if existing is not None:
                return existing
            count = self._spec.get(name, self._default_workers)
            if count <= 0:
                return None
            created: queue_module.SimpleQueue[_Job | None] = queue_module.SimpleQueue()
            self._queues[name] = created
            for index in range(count):
                thread = threading.Thread(
                    target=self._work, args=(created,), name=f"jobtrace-local-{name}-{index}"
                )
                thread.daemon = True
                thread.start()
                self._threads.append(thread)
            return created

    # -- running --------------------------------------------------------------------------------

    def _work(self, source: queue_module.SimpleQueue[_Job | None]) -> None:
        while True:
            job = source.get()
            if job is None:
                return
            try:
                if not self._closed:  # after shutdown, jobs not started stay queued
                    self._run(job)
            finally:
                with self._lock:
                    self._outstanding -= 1
                    if self._outstanding == 0:
                        self._drained.notify_all()

    def _run(self, job: _Job) -> None:
        def will_retry(error: BaseException) -> bool:
            return job.attempt < job.max_attempts and isinstance(error, job.retry_on)

        run = trace_job(
            job.metadata,
            name=job.name,
            job_id=job.job_id,
            queue=job.queue,
            attempt=job.attempt,
            system=SYSTEM,
            args=call_args(job.args, job.kwargs),
            will_retry=will_retry,
        )
        try:
            with run:
                result = job.func(*job.args, **job.kwargs)
                if inspect.isawaitable(result):
                    asyncio.run(_await(result))
        except Exception as error:
            if will_retry(error) and not self._closed:
                job.metadata = {**job.metadata, **run.retry_metadata()}
                job.attempt += 1
                self._submit(job, job.retry_delay)
                return
            with self._lock:
                self.failed += 1
            logger.info("jobtrace: local job %s %s failed: %r", job.name, job.job_id, error)
            return
        with self._lock:
            self.completed += 1

    def _schedule(self) -> None:
        while not self._closed:
            with self._lock:
                now = time.monotonic()
                due = []
                while self._scheduled and self._scheduled[0].due <= now:
                    due.append(heapq.heappop(self._scheduled).job)
                wait = self._scheduled[0].due - now if self._scheduled else None
            for job in due:
                self._submit(job, None)
            self._wake.wait(wait)
            self._wake.clear()

    # -- waiting and stopping -------------------------------------------------------------------

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no job is ready or running (delayed jobs not yet due are not waited for).

        Returns:
            Whether the queue drained before ``timeout``.
        """
        with self._lock:
            return self._drained.wait_for(lambda: self._outstanding == 0, timeout)

    @property
    def scheduled(self) -> int:
        """Delayed jobs not yet due."""
        with self._lock:
            return len(self._scheduled)

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers; jobs not started stay queued (and are recorded as such)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            queues = list(self._queues.values())
            threads = list(self._threads)
            self._scheduled.clear()
        self._wake.set()
        for target in queues:
            for _ in range(len(threads)):
                target.put(None)
        if wait:
            for thread in threads:
                thread.join()

    def __enter__(self) -> LocalQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


async def _await(awaitable: Any) -> Any:
    return await awaitable
