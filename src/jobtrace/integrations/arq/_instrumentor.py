"""The arq instrumentor: a patched enqueue, job (de)serialization and workers that trace arq jobs.

The usage guide is the package's docstring (:mod:`jobtrace.integrations.arq`). This module imports
arq at top level, so that a missing arq raises ``ModuleNotFoundError`` when the ``jobtrace-arq``
entry point is loaded and ``opentelemetry-instrument`` skips it quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import json
import logging
import pickle
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import arq.connections
import arq.worker
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.utils import timestamp_ms, to_ms, to_unix_ms
from arq.worker import Retry, RetryJob, Worker
from opentelemetry.instrumentation.utils import suppress_instrumentation

from jobtrace import Enqueue, JobRun, JobState
from jobtrace.instrumentation import (
    KEY_ATTEMPT,
    KEY_PREVIOUS_SPAN,
    Options,
    QueueInstrumentor,
    call_args,
    redis_server,
)

if TYPE_CHECKING:
    from arq.typing import WorkerCoroutine

__all__ = [
    "ATTEMPT_KEY_PREFIX",
    "JOB_KEY",
    "SYSTEM",
    "ArqInstrumentor",
    "DuplicateJobError",
    "instrument_worker",
]

logger = logging.getLogger("jobtrace")

SYSTEM = "arq"
JOB_KEY = "jobtrace"
"""The entry of arq's stored job dict that holds the job's metadata."""
ATTEMPT_KEY_PREFIX = "jobtrace:arq:attempt:"
"""Prefix of the Redis key holding the latest attempt's retry metadata, per job id."""
ATTEMPT_KEY_GRACE = 300  # seconds past arq's in-progress timeout: a dead worker's job is re-run
RETRY_KEY_TTL = 88_400  # seconds, as arq's own retry counter (``arq:retry:<job id>``)
# The attempt starts a loop step (on a loaded machine: much) after arq's timeout clock does, and
# nothing but a timeout, an abort or a shutdown cancels a job: be generous.
TIMEOUT_TOLERANCE = 0.5

# The arq keywords of ``enqueue_job``: everything else is the function's own keyword arguments.
_ARQ_KEYWORDS = frozenset(
    {"_job_id", "_queue_name", "_defer_until", "_defer_by", "_expires", "_job_try"}
)
_MARK = "__jobtrace_arq__"
_SIGNALLED = "_jobtrace_shutdown_signalled"  # set on a worker by its (wrapped) signal handler


class DuplicateJobError(RuntimeError):
    """arq refused the job: a job (or its result) with the same ``_job_id`` appeared meanwhile."""

    __module__ = "jobtrace.integrations.arq"  # its public home, as ``error.type`` says


# ``None`` while not instrumented: wrapped functions of existing workers then run untraced.
_options: Options | None = None
# The metadata of the job being enqueued in this task, for the wrapped serializer.
_outgoing: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "jobtrace_arq_outgoing", default=None
)
# The metadata of the job ``run_job`` deserialized in this task; its function's task inherits it.
_incoming: contextvars.ContextVar[object] = contextvars.ContextVar(
    "jobtrace_arq_incoming", default=None
)


# -- producer side ------------------------------------------------------------------------------


def _wrap_enqueue_job(original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def enqueue_job(self: ArqRedis, function: str, *args: Any, **kwargs: Any) -> Any:
        options = _options
        if options is None:
            return await original(self, function, *args, **kwargs)
        try:
            enqueue = await _prepare_send(options, self, function, args, kwargs)
        except Exception:
            logger.warning("jobtrace: tracing the enqueue of %s failed", function, exc_info=True)
            enqueue = None
        if enqueue is None:
            return await original(self, function, *args, **kwargs)
        metadata = enqueue.start()
        token = _outgoing.set({str(k): v for k, v in metadata.items() if isinstance(v, str)})
        try:
            job = await original(self, function, *args, **{**kwargs, "_job_id": enqueue.job_id})
        except BaseException as error:
            enqueue.end(error)
            raise
        finally:
            _outgoing.reset(token)
        if job is None:
            enqueue.end(DuplicateJobError(f"arq already holds a job {enqueue.job_id}"))
        else:
            enqueue.end()
        return job

    return enqueue_job


async def _prepare_send(
    options: Options,
    redis: ArqRedis,
    function: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Enqueue | None:
    """The send to trace, or ``None`` when arq is going to refuse the job as a duplicate."""
    given_id = kwargs.get("_job_id")
    if given_id:
        with suppress_instrumentation():
            exists = await redis.exists(job_key_prefix + given_id, result_key_prefix + given_id)
        if exists:
            return None  # arq returns None; the existing job's metadata and lineage stay
    return options.send(
        function,
        queue=kwargs.get("_queue_name") or redis.default_queue_name,
        job_id=given_id or uuid.uuid4().hex,
        args=call_args(args, {k: v for k, v in kwargs.items() if k not in _ARQ_KEYWORDS}),
        delay=_delay(kwargs.get("_defer_by"), kwargs.get("_defer_until")),
        server=redis_server(redis),
    )


def _delay(defer_by: Any, defer_until: Any) -> float | None:
    """Seconds until a deferred job may run, the way arq computes its score."""
    if isinstance(defer_until, datetime):
        return max(0.0, (to_unix_ms(defer_until) - timestamp_ms()) / 1000)
    if defer_by:
        milliseconds = to_ms(defer_by)
        return milliseconds / 1000 if milliseconds else None
    return None


def _wrap_serialize_job(original: Callable[..., bytes | None]) -> Callable[..., bytes | None]:
    @functools.wraps(original)
    def serialize_job(*args: Any, serializer: Any = None, **kwargs: Any) -> bytes | None:
        metadata = _outgoing.get()
        if metadata is None:
            return original(*args, serializer=serializer, **kwargs)
        inner: Callable[[dict[str, Any]], bytes] = serializer or pickle.dumps

        def with_metadata(data: dict[str, Any]) -> bytes:
            return inner({**data, JOB_KEY: metadata})

        return original(*args, serializer=with_metadata, **kwargs)

    return serialize_job


# -- worker side --------------------------------------------------------------------------------


def _wrap_deserialize_job_raw(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def deserialize_job_raw(raw: bytes, *, deserializer: Any = None, **kwargs: Any) -> Any:
        if _options is None:
            return original(raw, deserializer=deserializer, **kwargs)
        inner: Callable[[bytes], Any] = deserializer or pickle.loads

        def capture(value: bytes) -> Any:
            data = inner(value)
            _incoming.set(data.get(JOB_KEY) if isinstance(data, Mapping) else None)
            return data

        return original(raw, deserializer=capture, **kwargs)

    return deserialize_job_raw


def _wrap_worker_init(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(worker: Worker, *args: Any, **kwargs: Any) -> None:
        original(worker, *args, **kwargs)
        try:
            instrument_worker(worker)
        except Exception:
            logger.warning("jobtrace: instrumenting arq worker %r failed", worker, exc_info=True)

    return __init__


def _wrap_signal_handler(original: Callable[..., None]) -> Callable[..., None]:
    """Note on the worker that a signal is shutting it down, then let arq handle it."""

    @functools.wraps(original)
    def handle(worker: Worker, signum: Any) -> None:
        with contextlib.suppress(Exception):
            setattr(worker, _SIGNALLED, True)
        original(worker, signum)

    return handle


def instrument_worker(worker: Worker) -> None:
    """Trace the jobs of ``worker``: wrap each coroutine of its own copy of the functions map.

    The ``Function`` and ``CronJob`` objects the settings declare are copied, never changed, so
    several workers (or a second call) never wrap a coroutine twice.
    """
    for name, function in list(worker.functions.items()):
        if getattr(function.coroutine, _MARK, False):
            continue
        traced = copy.copy(function)
        traced.coroutine = _traced(worker, function, function.coroutine)
        worker.functions[name] = traced


def _traced(worker: Worker, function: Any, coroutine: WorkerCoroutine) -> WorkerCoroutine:
    @functools.wraps(coroutine)
    async def run(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        options = _options
        if options is None:
            return await coroutine(ctx, *args, **kwargs)
        started = time.monotonic()  # arq's timeout runs from (just before) here
        job_id = ctx.get("job_id")
        job_try = ctx.get("job_try")
        job = await _start_run(worker, function, options, ctx, args, kwargs)
        try:
            if job is not None and isinstance(job_id, str):
                await _remember_attempt(worker, job_id, job.retry_metadata())
            result = await coroutine(ctx, *args, **kwargs)
        except BaseException as error:
            if job is not None:
                outcome = _finish_failed(job, worker, function, job_id, job_try, error, started)
                if outcome.will_retry and isinstance(job_id, str):
                    await _keep_for_retry(worker, job_id)
            raise
        if job is not None:
            job.finish()
        return result

    setattr(run, _MARK, True)
    return run


async def _start_run(
    worker: Worker,
    function: Any,
    options: Options,
    ctx: Mapping[Any, Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> JobRun | None:
    """Start the attempt's span, linked to the previous attempt's; ``None`` if that failed."""
    try:
        job_id = ctx.get("job_id")
        job_try = ctx.get("job_try")
        metadata = _incoming.get()
        if isinstance(job_id, str) and isinstance(job_try, int) and job_try > 1:
            previous = await _previous_attempt(worker, job_id, job_try)
            if previous is not None:
                base = dict(metadata) if isinstance(metadata, Mapping) else {}
                metadata = {**base, KEY_PREVIOUS_SPAN: previous}
        job = options.job_run(
            metadata,
            name=function.name,
            job_id=job_id if isinstance(job_id, str) else None,
            queue=worker.queue_name,
            attempt=job_try if isinstance(job_try, int) and job_try > 0 else None,
            args=call_args(args, kwargs),
            server=redis_server(worker.pool),
        )
    except Exception:
        logger.warning("jobtrace: tracing arq job %s failed", function.name, exc_info=True)
        return None
    return job.start()


async def _previous_attempt(worker: Worker, job_id: str, job_try: int) -> str | None:
    """The span reference of this job's previous attempt, if one was stored for this attempt."""
    try:
        with suppress_instrumentation():
            raw = await worker.pool.get(ATTEMPT_KEY_PREFIX + job_id)
        if raw is None:
            return None
        stored = json.loads(raw)
        if not isinstance(stored, dict) or stored.get(KEY_ATTEMPT) != str(job_try):
            return None  # an older job with the same id, or a lost write: no link
        previous = stored.get(KEY_PREVIOUS_SPAN)
        return previous if isinstance(previous, str) else None
    except Exception:
        logger.warning("jobtrace: reading the previous attempt of %s failed", job_id, exc_info=True)
        return None


async def _remember_attempt(worker: Worker, job_id: str, retry_metadata: dict[str, str]) -> None:
    """Store what the next attempt needs to link back to this one (it may never come)."""
    if not retry_metadata:
        return
    ttl = int(getattr(worker, "in_progress_timeout_s", 310)) + ATTEMPT_KEY_GRACE
    try:
        with suppress_instrumentation():
            await worker.pool.set(ATTEMPT_KEY_PREFIX + job_id, json.dumps(retry_metadata), ex=ttl)
    except Exception:
        logger.warning("jobtrace: storing the attempt of %s failed", job_id, exc_info=True)


async def _keep_for_retry(worker: Worker, job_id: str) -> None:
    """Keep the attempt's key until arq retries the job, however long it is deferred."""
    try:
        with suppress_instrumentation():
            await worker.pool.expire(ATTEMPT_KEY_PREFIX + job_id, RETRY_KEY_TTL)
    except Exception:
        logger.warning("jobtrace: keeping the attempt of %s failed", job_id, exc_info=True)


@dataclass(frozen=True)
class _Outcome:
    """How an attempt that raised ends, as arq will treat it."""

    error: BaseException
    will_retry: bool
    state: JobState | None = None
    reason: str | None = None


def _finish_failed(
    job: JobRun,
    worker: Worker,
    function: Any,
    job_id: object,
    job_try: object,
    error: BaseException,
    started: float,
) -> _Outcome:
    try:
        outcome = _decide_outcome(
            worker, function, job_id, job_try, error, time.monotonic() - started
        )
    except Exception:
        logger.warning("jobtrace: deciding the outcome of %s failed", job.name, exc_info=True)
        outcome = _Outcome(error, will_retry=False)
    job.finish(
        outcome.error, will_retry=outcome.will_retry, state=outcome.state, reason=outcome.reason
    )
    return outcome


def _decide_outcome(
    worker: Worker,
    function: Any,
    job_id: object,
    job_try: object,
    error: BaseException,
    elapsed: float,
) -> _Outcome:
    """What ``Worker.run_job`` does with an exception, decided before it does (same rules).

    Args:
        worker: The worker running the job.
        function: The job's ``Function`` or ``CronJob``.
        job_id: arq's job id.
        job_try: arq's ``job_try`` for this attempt.
        error: What the function raised (arq delivers timeouts and aborts as cancellations).
        elapsed: Seconds the attempt ran.
    """
    max_tries = worker.max_tries if function.max_tries is None else function.max_tries
    more_tries = isinstance(job_try, int) and job_try < max_tries
    retry_jobs = bool(worker.retry_jobs)
    if isinstance(error, asyncio.CancelledError):
        if job_id in getattr(worker, "aborting_tasks", ()):
            return _Outcome(error, False, JobState.CANCELLED, "aborted")
        stopping = _stopping(worker, job_id)
        timeout = worker.job_timeout_s if function.timeout_s is None else function.timeout_s
        tolerance = max(TIMEOUT_TOLERANCE, timeout / 2) if timeout else 0.0
        if not stopping and timeout and elapsed + tolerance >= timeout:
            timed_out = asyncio.TimeoutError(f"job timed out after {timeout:g}s")
            return _Outcome(timed_out, False, JobState.FAILED, "timeout")
        reason = "worker_shutdown" if stopping else "cancelled"
        if retry_jobs and more_tries:
            return _Outcome(error, True, JobState.RETRYING, reason)
        return _Outcome(error, False, JobState.CANCELLED, reason)
    if retry_jobs and isinstance(error, (Retry, RetryJob)):
        if more_tries:
            return _Outcome(error, True)
        return _Outcome(error, False, JobState.FAILED, "max_tries_reached")
    return _Outcome(error, False)


def _stopping(worker: Worker, job_id: object) -> bool:
    """Whether the worker is shutting down and cancelled this job for it.

    A worker created while instrumented says so itself: its signal handlers are wrapped. For
    another, arq's signal handlers either stop picking jobs, or cancel each job's ``run_job`` task
    and then the main task. Both tasks are asked: a Redis call timing out inside the main task
    cancels the main task alone, for a moment, and from Python 3.12 a job's timeout
    (``asyncio.wait_for``) cancels its ``run_job`` task alone.
    """
    if getattr(worker, _SIGNALLED, False) or not getattr(worker, "allow_pick_jobs", True):
        return True
    tasks = getattr(worker, "tasks", None)
    task = tasks.get(job_id) if isinstance(tasks, Mapping) else None
    if not _cancelling(task):
        return False
    main = getattr(worker, "main_task", None)
    return main is not None and (main.done() or _cancelling(main))


def _cancelling(task: object) -> bool:
    """Whether ``task`` is being cancelled (Python 3.11+; always ``False`` before)."""
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling is not None and cancelling())


# -- the instrumentor ---------------------------------------------------------------------------


class ArqInstrumentor(QueueInstrumentor):
    """Patches arq's enqueue, job serialization and workers (see the package's guide).

    A singleton, like every ``BaseInstrumentor``: instrumenting twice is a no-op with a warning, and
    ``uninstrument()`` undoes it. Its own keyword: ``worker``, a worker to instrument as well.
    """

    system = SYSTEM
    dependencies = ("arq >= 0.25, < 1.0",)
    library_options = frozenset({"worker"})

    def _hook(self, options: Options) -> None:
        global _options
        _options = options
        self.patch(ArqRedis, "enqueue_job", _wrap_enqueue_job)
        self.patch(arq.connections, "serialize_job", _wrap_serialize_job)
        self.patch(arq.worker, "deserialize_job_raw", _wrap_deserialize_job_raw)
        self.patch(Worker, "__init__", _wrap_worker_init)
        # Before __init__ binds them as the worker's signal handlers.
        self.patch(Worker, "handle_sig", _wrap_signal_handler)
        self.patch(Worker, "handle_sig_wait_for_completion", _wrap_signal_handler)
        worker = options.extra.get("worker")
        if worker is not None:
            instrument_worker(worker)

    def _unhook(self) -> None:
        global _options
        _options = None
