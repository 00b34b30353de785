"""Trace arq jobs: a ``send`` span per job enqueued, a ``process`` span per attempt, and lineage.

Usage
-----
Instrument every process that enqueues or runs jobs, before it does. In the module named on the
``arq`` command line (``arq myapp.worker.WorkerSettings``)::

    from arq.connections import RedisSettings
    from jobtrace.integrations.arq import instrument_arq

    instrument_arq()             # after your OpenTelemetry setup (or jobtrace.configure(...))

    class WorkerSettings:
        functions = [fetch_page, parse_page]
        redis_settings = RedisSettings()

and in the web application (or script) that enqueues, once at start-up::

    instrument_arq()
    redis = await create_pool(RedisSettings())
    await redis.enqueue_job("fetch_page", url)

or nothing at all under ``opentelemetry-instrument arq myapp.worker.WorkerSettings`` (entry point
``jobtrace-arq``; turn it off with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=jobtrace-arq``). A job
enqueued by a producer without jobtrace still runs, as the root of its own trace and lineage tree;
a job enqueued with jobtrace runs unchanged on a worker without it. ``instrument()`` also starts the
lineage recorder (see Configuration); ``uninstrument()`` takes every patch out again.

Configuration
-------------
Keywords of ``instrument()`` / :func:`instrument_arq`:

- ``worker``: an ``arq.worker.Worker`` created before instrumenting, to instrument as well (workers
  created afterwards, by ``arq`` or ``run_worker``, are instrumented when they are created).
- ``record``: record lineage in the store (default: on, unless ``JOBTRACE_RECORD=0``).
- ``database_url``: the lineage store (default: ``JOBTRACE_DATABASE_URL``).
- ``flush_on_job_end``: flush spans, metrics and records after each attempt (default: off; an arq
  worker is one process that exits normally, flushing at exit).

Spans and metrics go to the global OpenTelemetry providers; the relationship policy, redaction and
limits are jobtrace's settings (:func:`jobtrace.configure`).

Where the metadata travels
--------------------------
arq has no per-job metadata field, so jobtrace adds one: a ``"jobtrace"`` entry beside arq's own
entries (``f``, ``a``, ``k``, ``t``, ``et``) of the job dict that arq serializes and stores under
``arq:job:<job id>``. It holds the trace context (the global propagator's keys, ``traceparent`` by
default) and the lineage keys of ``docs/metadata.md``, all short strings. It is written by wrapping
the serializer that ``ArqRedis.enqueue_job`` passes to ``serialize_job`` (your ``job_serializer``
or pickle, which then sees one more dict entry), and read by wrapping the deserializer of the
worker's ``deserialize_job_raw``. The job id is arq's (the ``_job_id`` given, or one made for it and
passed on as ``_job_id``); the job name is the function name; the queue is the worker's
``queue_name``; ``messaging.system`` is ``arq``.

Why there, and not elsewhere:

- The stored job is written in arq's own transaction and expires with it; arq re-runs that same
  stored value on every retry (``Retry``, ``RetryJob``, a cancelled job) and after any deferral
  (``_defer_by``, ``_defer_until``, ``Retry(defer=...)``), so each attempt reads the same metadata.
- arq reads only its own entries (``deserialize_job_raw``, ``Job.info()``, ``queued_jobs()``), so a
  worker without jobtrace runs the job unchanged, and the job's arguments, arq's log lines and its
  stored results stay exactly what the caller passed.
- A reserved keyword argument (``_jobtrace=...``) would have been simpler, but a worker without
  jobtrace would pass it to the function, and every job would fail with a ``TypeError``; it also
  shows in arq's logs and results. A side key per job in Redis would cost a second write outside
  arq's transaction, racing the worker that picks the job up, and going stale when arq refuses a
  duplicate ``_job_id``.
- The price: the wrapped functions, ``serialize_job`` in ``arq.connections`` and
  ``deserialize_job_raw`` in ``arq.worker``, are module-level names of arq rather than documented
  API (unchanged from arq 0.25 to 0.28); a custom ``job_serializer`` must accept a dict of strings
  in the job dict (msgpack, JSON and pickle all do).

Attempts and retries
--------------------
arq never rewrites the stored job between attempts, so the link from one attempt's span to the
previous one goes through one small key per job, ``jobtrace:arq:attempt:<job id>``. When an attempt
starts, its :meth:`jobtrace.JobRun.retry_metadata` (the next attempt's number and this attempt's
span) is stored there as JSON. The next attempt (arq's ``job_try`` >= 2) reads it and links its span
to the previous attempt's span, whether that attempt retried, was cancelled by a worker shutdown, or
died with its worker. The key is only trusted when its attempt number is the ``job_try`` arq hands
out, so a stale key of an older job with the same id links nothing.

The key lives for arq's in-progress timeout (the job's timeout + 10 s) plus five minutes, long
enough for a running worker to pick up the job of a dead one; an attempt that ends ``retrying``
extends it to 88,400 s (arq's own retry counter's lifetime), so a long ``Retry(defer=...)`` keeps
its link. Each attempt costs one ``SET`` (and a ``GET`` on a retry); no key outlives its job by more
than a few minutes unless it waits for a retry. Losing the key costs the link, never the job. The
attempt number is arq's ``job_try``; every attempt shares the job's trace (its parent is the
``send`` span).

What is patched
---------------
Producer side: ``ArqRedis.enqueue_job``, which every enqueue goes through (``ctx["redis"]`` inside
a job, ``create_pool(...)`` elsewhere, the worker's cron jobs, which become roots). It starts the
``send`` span, writes the metadata into the stored job, and ends the span when arq has stored the
job (an error if it raised).
A deferred job's span carries ``jobtrace.job.delay_s``. A ``_job_id`` that arq already holds (a
job or its result) is refused by arq; jobtrace checks that first (one ``EXISTS``, only when a
``_job_id`` is given) and then sends nothing, so the existing job's lineage is left alone.

Worker side: every ``arq.worker.Worker`` created while instrumented (its ``__init__`` is wrapped)
gets its functions map copied with each coroutine wrapped, cron jobs included; the functions the
settings declare are left untouched. The ``process`` span covers the function call, inside arq's
timeout; ``on_job_start``/``on_job_end`` hooks run outside it. After ``uninstrument()`` the wrapped
functions of existing workers run untraced.

Outcomes
--------
=========================================  ====================================================
arq                                        jobtrace
=========================================  ====================================================
enqueued: ``queued``, or ``deferred``      ``queued`` (``send`` span: ``jobtrace.job.delay_s``)
``in_progress``                            ``running``
returned                                   ``succeeded``
raised                                     ``failed``
``Retry``/``RetryJob``, not the last try   ``retrying``
``Retry``/``RetryJob`` on the last try     ``failed`` (reason ``max_tries_reached``)
timed out (job or function ``timeout``)    ``failed``, ``TimeoutError`` (reason ``timeout``)
aborted (``Job.abort()``)                  ``cancelled`` (reason ``aborted``)
worker shut down mid-job, to be run again  ``retrying`` (reason ``worker_shutdown``)
worker shut down mid-job, no try left      ``cancelled`` (reason ``worker_shutdown``)
worker killed (OOM, SIGKILL)               ``crashed``, by the reaper
=========================================  ====================================================

``retry_jobs=False`` makes every exception, ``Retry`` included, a failure, as in arq. A ``Retry`` on
the last try is requeued by arq, which fails it without running it when it comes due; jobtrace
marks the attempt ``failed`` at once. arq's cancellations reach the function as a bare
``CancelledError``: an abort is told by the worker's ``aborting_tasks``, a shutdown by the worker's
signal handler (wrapped for a worker created while instrumented), else by the worker no longer
picking jobs or both the job's ``run_job`` task and the worker's main task being cancelled
(``Task.cancelling()``, Python 3.11+), and a timeout by the attempt having run for the function's
timeout.

Limits: a job arq fails without running it (expired, function not found, ``max_tries`` exceeded
after a crash) gets no span; its last attempt's row says what happened to it. A worker process
killed outright loses the spans it had not exported; its running jobs stop heartbeating and the
reaper (``jobtrace.lineage.reaper.reap``) declares them crashed.
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
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import arq.connections
import arq.worker
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.utils import timestamp_ms, to_ms, to_unix_ms
from arq.worker import Retry, RetryJob, Worker
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,  # (the module's __all__ is empty)
)
from opentelemetry.instrumentation.utils import suppress_instrumentation

from jobtrace import Enqueue, JobRun, JobState
from jobtrace._internal.metadata import KEY_ATTEMPT, KEY_PREVIOUS_SPAN
from jobtrace._internal.redaction import call_args
from jobtrace.integrations._common import start_recording

if TYPE_CHECKING:
    from arq.typing import WorkerCoroutine

__all__ = [
    "ATTEMPT_KEY_PREFIX",
    "JOB_KEY",
    "ArqInstrumentor",
    "DuplicateJobError",
    "instrument_arq",
    "instrument_worker",
]

logger = logging.getLogger("jobtrace")

_instruments = ("arq >= 0.25, < 1.0",)

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


@dataclass(frozen=True)
class _Config:
    flush_on_job_end: bool | None


# ``None`` while not instrumented: wrapped functions of existing workers then run untraced.
_config: _Config | None = None
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
        if _config is None:
            return await original(self, function, *args, **kwargs)
        try:
            enqueue = await _prepare_send(self, function, args, kwargs)
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
    redis: ArqRedis, function: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Enqueue | None:
    """The send to trace, or ``None`` when arq is going to refuse the job as a duplicate."""
    given_id = kwargs.get("_job_id")
    if given_id:
        with suppress_instrumentation():
            exists = await redis.exists(job_key_prefix + given_id, result_key_prefix + given_id)
        if exists:
            return None  # arq returns None; the existing job's metadata and lineage stay
    return Enqueue(
        function,
        queue=kwargs.get("_queue_name") or redis.default_queue_name,
        job_id=given_id or uuid.uuid4().hex,
        args=call_args(args, {k: v for k, v in kwargs.items() if k not in _ARQ_KEYWORDS}),
        delay=_delay(kwargs.get("_defer_by"), kwargs.get("_defer_until")),
        system=SYSTEM,
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
        if _config is None:
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
        config = _config
        if config is None:
            return await coroutine(ctx, *args, **kwargs)
        started = time.monotonic()  # arq's timeout runs from (just before) here
        job_id = ctx.get("job_id")
        job_try = ctx.get("job_try")
        job = await _start_run(worker, function, config, ctx, args, kwargs)
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
    config: _Config,
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
        job = JobRun(
            metadata,
            name=function.name,
            job_id=job_id if isinstance(job_id, str) else None,
            queue=worker.queue_name,
            attempt=job_try if isinstance(job_try, int) and job_try > 0 else None,
            system=SYSTEM,
            args=call_args(args, kwargs),
            flush=config.flush_on_job_end,
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


class ArqInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Patches arq's enqueue, job serialization and workers (see the module's guide).

    A singleton, like every ``BaseInstrumentor``: instrumenting twice is a no-op with a warning, and
    ``uninstrument()`` undoes it.
    """

    _patches: list[tuple[object, str, object]]

    def instrumentation_dependencies(self) -> Collection[str]:
        """The arq versions this instrumentation supports."""
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        global _config
        _config = _Config(flush_on_job_end=kwargs.get("flush_on_job_end"))
        start_recording(kwargs.get("record"), kwargs.get("database_url"))
        self._patches = []
        self._patch(ArqRedis, "enqueue_job", _wrap_enqueue_job)
        self._patch(arq.connections, "serialize_job", _wrap_serialize_job)
        self._patch(arq.worker, "deserialize_job_raw", _wrap_deserialize_job_raw)
        self._patch(Worker, "__init__", _wrap_worker_init)
        # Before __init__ binds them as the worker's signal handlers.
        self._patch(Worker, "handle_sig", _wrap_signal_handler)
        self._patch(Worker, "handle_sig_wait_for_completion", _wrap_signal_handler)
        worker = kwargs.get("worker")
        if worker is not None:
            instrument_worker(worker)

    def _uninstrument(self, **kwargs: Any) -> None:
        global _config
        _config = None
        for owner, name, original in reversed(getattr(self, "_patches", [])):
            setattr(owner, name, original)
        self._patches = []

    def _patch(self, owner: object, name: str, wrap: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        self._patches.append((owner, name, original))
        setattr(owner, name, wrap(original))


def instrument_arq(worker: Worker | None = None, **kwargs: Any) -> ArqInstrumentor:
    """Instrument arq (once per process) and ``worker``, if given; returns the instrumentor.

    Args:
        worker: A worker created before now, to instrument as well.
        **kwargs: ``record``, ``database_url``, ``flush_on_job_end`` (see the module's guide).
    """
    instrumentor = ArqInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(worker=worker, **kwargs)
    elif worker is not None:
        instrument_worker(worker)
    return instrumentor
