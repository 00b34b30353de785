"""Trace RQ jobs: a ``send`` span per job enqueued, a ``process`` span per run, lineage recorded.

Usage
-----
Instrument every process that enqueues or runs jobs, before it does. In the producer::

    from jobtrace.integrations.rq import instrument_rq

    instrument_rq()
    queue.enqueue(count_words, url)

In a worker, the ``rq`` CLI imports the worker class you name, so a small module of yours does it::

    # myapp/rq_worker.py        run: rq worker --worker-class myapp.rq_worker.Worker <queues>
    import jobtrace, rq
    from jobtrace.integrations.rq import instrument_rq

    jobtrace.configure(...)      # or your own OpenTelemetry SDK setup
    instrument_rq()

    class Worker(rq.Worker):     # or rq.SimpleWorker: no fork
        pass

or nothing at all under ``opentelemetry-instrument rq worker <queues>`` (entry point ``jobtrace-rq``;
turn it off with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=jobtrace-rq``). A job enqueued by a producer
without jobtrace still runs, as the root of its own trace and lineage tree. ``instrument()`` also
starts the lineage recorder (see Configuration); ``uninstrument()`` takes every patch out again.

Configuration
-------------
Keywords of ``instrument()`` / :func:`instrument_rq`:

- ``record``: record lineage in the store (default: on, unless ``JOBTRACE_RECORD=0``).
- ``database_url``: the lineage store (default: ``JOBTRACE_DATABASE_URL``).
- ``flush_on_job_end``: flush spans, metrics and records after each job (default: in work horses
  only, which exit with ``os._exit`` and run no ``atexit`` handler).

Spans and metrics go to the global OpenTelemetry providers; the relationship policy, redaction and
limits are jobtrace's settings (:func:`jobtrace.configure`).

Where the metadata travels
--------------------------
In ``job.meta``, saved with the job: the trace context under the global propagator's keys
(``traceparent`` by default) and the lineage keys of ``docs/metadata.md`` (``jobtrace-*``), all short
strings. The job id is RQ's ``job.id``; the job name is ``job.func_name``; the queue is
``job.origin``; ``messaging.system`` is ``rq``.

What is patched
---------------
Producer side, the public methods every enqueue goes through, in RQ 1.15 as in 3.x:
``Queue.enqueue_job`` (``enqueue``, ``enqueue_call``, the ``@job`` decorator, ``rq enqueue``),
``Queue.schedule_job`` (``enqueue_at``, ``enqueue_in``; the span gets ``jobtrace.job.delay_s``) and
``Queue.enqueue_many`` (with ``Queue.create_job``, only inside ``enqueue_many``). Each starts the
``send`` span and writes the metadata into ``job.meta`` before the job is saved, and ends the span
when the call returns (with a caller's ``pipeline``, before ``pipeline.execute()`` writes it). A job
that was sent before (its ``jobtrace-job-id`` is its own id, or it has run already) is a resend:
RQ retrying, repeating or moving it, or someone requeueing it; it keeps its metadata and gets no
new ``send`` span.

Worker side, ``Job.perform``: the ``process`` span covers the job function (and the
``JobTimeoutException`` RQ raises into it), so it works the same under ``Worker``, ``SimpleWorker``,
``SpawnWorker`` and a synchronous queue (``is_async=False``). ``BaseWorker.handle_job_failure`` and
``Job.cancel`` are patched to record outcomes no job function sees (below).

Outcomes
--------
=====================================================  =======================================
RQ                                                     jobtrace
=====================================================  =======================================
enqueued: ``queued``, ``deferred``, ``scheduled``      ``queued``
``started``                                            ``running``
``finished``                                           ``succeeded``
raised, ``job.retries_left > 0`` (``Retry(max=..)``)   ``retrying``
raised (a job timeout too), no retry left              ``failed``
returned ``Retry(...)`` (RQ 3.x)                       ``retrying``; ``failed`` past ``max``
``stopped`` (``send_stop_job_command``)                ``cancelled`` (reason ``stopped``)
``canceled`` (``job.cancel()``)                        ``cancelled`` (reason ``canceled``)
work horse killed (OOM, segfault, SIGKILL)             ``crashed``, by the reaper
=====================================================  =======================================

One span per attempt: a failed run writes :meth:`jobtrace.JobRun.retry_metadata` (the next attempt
number and its own span) into ``job.meta`` and saves it, so the retry's span links back to it, and
so does a run requeued by hand later. When the work horse dies instead, the worker process moves the
attempt number on before RQ retries the job, so the crashed attempt keeps its own lineage row.

Work horses
-----------
``Worker`` forks a work horse per job, which ends with ``os._exit``: the span and lineage records of
the job are flushed as the job ends (in forked processes, and in ``SpawnWorker``'s horses, which RQ
marks with ``RQ_JOB_ID``). A horse killed outright loses what it had not flushed; its job stops
heartbeating and the reaper (``jobtrace.lineage.reaper.reap``) declares it crashed.

Limits: a job whose ``on_success`` callback raises counts as succeeded (RQ then fails it); a job
repeated with ``Repeat`` (RQ 3.x) records every run under the same attempt number. Custom ``Queue``
or ``Job`` classes that override the patched methods without calling ``super()`` are not traced.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from rq import Retry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.worker import Worker

from jobtrace import Enqueue, JobRun, JobState, records, trace_job
from jobtrace._internal.metadata import (
    KEY_ATTEMPT,
    KEY_JOB_ID,
    KEY_PREVIOUS_SPAN,
    Incoming,
    read_metadata,
)
from jobtrace._internal.redaction import call_args
from jobtrace._internal.telemetry import in_forked_child
from jobtrace.integrations._common import start_recording

__all__ = ["RQInstrumentor", "RetryLimitExceededError", "instrument_rq", "job_state"]

logger = logging.getLogger("jobtrace")

_instruments = ("rq >= 1.15, < 4.0",)

SYSTEM = "rq"

_PATCHED = "__jobtrace_original__"
_PERFORMED = "_jobtrace_performed"
_UNKNOWN_NAME = "rq.job"
# RQ runs a job again when it returns Retry(...) only where the worker handles that result (3.x).
_RETRY_RESULTS = hasattr(Worker, "handle_job_retry")

_STATES: Mapping[str, JobState] = {
    "created": JobState.QUEUED,
    "queued": JobState.QUEUED,
    "deferred": JobState.QUEUED,
    "scheduled": JobState.QUEUED,
    "rate_limited": JobState.QUEUED,
    "ready_to_enqueue": JobState.QUEUED,
    "started": JobState.RUNNING,
    "finished": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "stopped": JobState.CANCELLED,
    "canceled": JobState.CANCELLED,
}

# Jobs created by ``Queue.create_job`` while ``Queue.enqueue_many`` runs in this context.
_batch_sends: contextvars.ContextVar[list[Enqueue] | None] = contextvars.ContextVar(
    "jobtrace_rq_batch_sends", default=None
)


class RetryLimitExceededError(Exception):
    """Recorded on the span of a job that returned ``Retry`` once too often: RQ fails it."""


def job_state(status: JobStatus | str | None) -> JobState | None:
    """The jobtrace state for an RQ job status (``None`` for a status this RQ version added)."""
    if status is None:
        return None
    return _STATES.get(getattr(status, "value", status))


@dataclass(frozen=True)
class _Options:
    flush_on_job_end: bool | None = None


# -- helpers ------------------------------------------------------------------------------------


def _job_name(job: Job) -> str:
    try:
        name = job.func_name
    except Exception:  # the job's data does not deserialize here
        name = None
    return str(name) if name else _UNKNOWN_NAME


def _job_args(job: Job) -> Any:
    try:
        return call_args(job.args, job.kwargs)
    except Exception:
        return None


def _is_resend(job: Job) -> bool:
    """Whether ``job`` was sent before: its metadata stays, and it gets no new ``send`` span."""
    meta = job.meta
    if isinstance(meta, Mapping) and meta.get(KEY_JOB_ID) == job.id:
        return True
    return job.started_at is not None or job.ended_at is not None


def _delay(when: object) -> float | None:
    """Seconds from now until ``when``; RQ reads a naive datetime as local time."""
    if not isinstance(when, datetime):
        return None
    aware = when if when.tzinfo is not None else when.astimezone()
    return max(0.0, (aware - datetime.now(timezone.utc)).total_seconds())


def _start_send(queue: Queue, job: Job, delay: float | None = None) -> Enqueue | None:
    """Start the ``send`` span of a new job and write its metadata into ``job.meta``."""
    try:
        if _is_resend(job):
            return None
        send = Enqueue(
            _job_name(job),
            queue=queue.name,
            job_id=job.id,
            args=_job_args(job),
            delay=delay,
            system=SYSTEM,
            carrier=job.meta,
        )
    except Exception:
        logger.warning("jobtrace: tracing the enqueue of an RQ job failed", exc_info=True)
        return None
    send.start()
    return send


def _incoming(job: Job) -> Incoming:
    return read_metadata(job.meta, job_description=f"job {_job_name(job)} {job.id}")


def _record_outcome(
    job: Job, state: JobState, reason: str, incoming: Incoming | None = None
) -> None:
    """Tell the lineage store how an attempt ended that no ``process`` span saw end.

    Args:
        incoming: The job's metadata as the attempt began, when the caller already read it.
    """
    if not records.has_sinks():
        return
    if incoming is None:
        incoming = _incoming(job)
    job_id = str(job.id)
    root_job_id, depth = records.lineage(
        job_id, incoming.parent_job_id, incoming.root_job_id, incoming.depth
    )
    info = records.JobInfo(
        job_id=job_id,
        name=_job_name(job),
        root_job_id=root_job_id,
        depth=depth,
        queue=job.origin,
        attempt=incoming.attempt or 1,
        parent_job_id=incoming.parent_job_id,
        system=SYSTEM,
    )
    records.emit(records.unrun(info, state, at=time.time(), reason=reason))


def _save_retry_metadata(job: Job, run: JobRun) -> None:
    """Carry the next attempt's number and this attempt's span in ``job.meta``, saved.

    RQ saves the meta again when it retries the job; saving it here as well lets a job that failed
    for good and is requeued by hand later link back too.
    """
    try:
        job.meta.update(run.retry_metadata())
        job.save_meta()  # type: ignore[no-untyped-call]
    except Exception:
        logger.warning(
            "jobtrace: saving the retry metadata of job %s failed", job.id, exc_info=True
        )


# -- producer side --------------------------------------------------------------------------------


def _sent(send: Enqueue | None, publish: Callable[[], Job]) -> Job:
    """Run RQ's own enqueue inside the ``send`` span, which ends as the publish did."""
    if send is None:
        return publish()
    try:
        result = publish()
    except BaseException as error:
        send.end(error)
        raise
    send.end()
    return result


def _wrap_enqueue_job(original: Callable[..., Job]) -> Callable[..., Job]:
    @functools.wraps(original)
    def enqueue_job(queue: Queue, job: Job, *args: Any, **kwargs: Any) -> Job:
        send = _start_send(queue, job)
        return _sent(send, lambda: original(queue, job, *args, **kwargs))

    return enqueue_job


def _wrap_schedule_job(original: Callable[..., Job]) -> Callable[..., Job]:
    @functools.wraps(original)
    def schedule_job(queue: Queue, job: Job, *args: Any, **kwargs: Any) -> Job:
        when = args[0] if args else kwargs.get("datetime")
        send = _start_send(queue, job, _delay(when))
        return _sent(send, lambda: original(queue, job, *args, **kwargs))

    return schedule_job


def _wrap_enqueue_many(original: Callable[..., list[Job]]) -> Callable[..., list[Job]]:
    @functools.wraps(original)
    def enqueue_many(queue: Queue, *args: Any, **kwargs: Any) -> list[Job]:
        sends: list[Enqueue] = []
        token = _batch_sends.set(sends)
        try:
            result = original(queue, *args, **kwargs)
        except BaseException as error:
            for send in sends:
                send.end(error)
            raise
        finally:
            _batch_sends.reset(token)
        for send in sends:
            send.end()
        return result

    return enqueue_many


def _wrap_create_job(original: Callable[..., Job]) -> Callable[..., Job]:
    @functools.wraps(original)
    def create_job(queue: Queue, *args: Any, **kwargs: Any) -> Job:
        job = original(queue, *args, **kwargs)
        sends = _batch_sends.get()
        if sends is not None:  # enqueue_many saves it without going through enqueue_job
            send = _start_send(queue, job)
            if send is not None:
                sends.append(send)
        return job

    return create_job


# -- worker side --------------------------------------------------------------------------------


def _wrap_perform(options: _Options) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def perform(job: Job, *args: Any, **kwargs: Any) -> Any:
            run = _start_run(job, options)
            if run is None:
                return original(job, *args, **kwargs)
            try:
                result = original(job, *args, **kwargs)
            except BaseException as error:
                _end_failed(job, run, error)
                raise
            _end_returned(job, run, result)
            return result

        return perform

    return wrap


def _start_run(job: Job, options: _Options) -> JobRun | None:
    try:
        flush = options.flush_on_job_end
        if flush is None and (in_forked_child() or os.environ.get("RQ_JOB_ID") == job.id):
            flush = True  # a work horse: it leaves with os._exit
        run = trace_job(
            job.meta,
            name=_job_name(job),
            job_id=job.id,
            queue=job.origin,
            system=SYSTEM,
            args=_job_args(job),
            flush=flush,
        )
        setattr(job, _PERFORMED, True)
    except Exception:
        logger.warning("jobtrace: tracing an RQ job failed", exc_info=True)
        return None
    return run.start()


def _end_failed(job: Job, run: JobRun, error: BaseException) -> None:
    retries_left = getattr(job, "retries_left", None)
    # RQ's own rule (BaseWorker.handle_job_failure); a stopped job never gets here: its horse died.
    will_retry = isinstance(retries_left, int) and retries_left > 0
    _save_retry_metadata(job, run)
    run.finish(error, will_retry=will_retry)


def _end_returned(job: Job, run: JobRun, result: Any) -> None:
    if not (_RETRY_RESULTS and isinstance(result, Retry)):
        run.finish()
        return
    # RQ 3.x: a job that returns Retry(...) asks to run again, up to ``max`` times.
    retries = getattr(job, "number_of_retries", None) or 0
    exhausted = isinstance(retries, int) and retries >= result.max
    _save_retry_metadata(job, run)
    if exhausted:
        error = RetryLimitExceededError(
            f"returned Retry after {retries} retries (max {result.max})"
        )
        run.finish(error, will_retry=False, reason="max_retries_exceeded")
    else:
        run.finish(state=JobState.RETRYING, reason="retry_requested")


def _wrap_handle_job_failure(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def handle_job_failure(worker: Any, job: Job, *args: Any, **kwargs: Any) -> Any:
        if getattr(job, _PERFORMED, False):
            return original(worker, job, *args, **kwargs)
        # The attempt ended without the job function returning: its horse died or was stopped.
        incoming = None
        try:
            incoming = _incoming(job)  # read once, before the next attempt's number goes in
            retries_left = job.retries_left
            if isinstance(retries_left, int) and retries_left > 0:
                job.meta[KEY_ATTEMPT] = str((incoming.attempt or 1) + 1)  # saved by RQ's retry
                job.meta.pop(KEY_PREVIOUS_SPAN, None)  # the dead attempt's span is unknown
        except Exception:
            logger.warning(
                "jobtrace: recording the failure of job %s failed", job.id, exc_info=True
            )
        result = original(worker, job, *args, **kwargs)
        try:
            if job_state(job.get_status(refresh=False)) is JobState.CANCELLED:
                _record_outcome(job, JobState.CANCELLED, "stopped", incoming)
            else:
                # The worker saw its horse die: no need to wait for the reaper.
                _record_outcome(job, JobState.CRASHED, "work horse died", incoming)
        except Exception:
            logger.warning("jobtrace: recording the end of job %s failed", job.id, exc_info=True)
        return result

    return handle_job_failure


def _wrap_cancel(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def cancel(job: Job, *args: Any, **kwargs: Any) -> Any:
        result = original(job, *args, **kwargs)
        try:
            _record_outcome(job, JobState.CANCELLED, "canceled")
        except Exception:
            logger.warning("jobtrace: recording the cancel of job %s failed", job.id, exc_info=True)
        return result

    return cancel


# -- the instrumentor -----------------------------------------------------------------------------


@dataclass
class _Patch:
    owner: type
    name: str
    original: Any


def _owner(cls: type, name: str) -> type:
    """The class in ``cls``'s MRO that defines ``name`` (``BaseWorker`` in RQ 2+, ``Worker`` before)."""
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def _patch(
    cls: type, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> _Patch:
    owner = _owner(cls, name)
    original = vars(owner)[name]
    wrapper = wrap(original)
    setattr(wrapper, _PATCHED, original)
    setattr(owner, name, wrapper)
    return _Patch(owner, name, original)


class RQInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Patches RQ's enqueue and perform paths; see the module's guide.

    A singleton, like every ``BaseInstrumentor``: instrumenting twice is a no-op with a warning, and
    ``uninstrument()`` restores every patched method.
    """

    _patches: list[_Patch]

    def instrumentation_dependencies(self) -> Collection[str]:
        """The RQ versions this instrumentation supports."""
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        options = _Options(flush_on_job_end=kwargs.get("flush_on_job_end"))
        start_recording(kwargs.get("record"), kwargs.get("database_url"))
        targets: list[tuple[type, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
            (Queue, "enqueue_job", _wrap_enqueue_job),
            (Queue, "schedule_job", _wrap_schedule_job),
            (Queue, "enqueue_many", _wrap_enqueue_many),
            (Queue, "create_job", _wrap_create_job),
            (Job, "perform", _wrap_perform(options)),
            (Job, "cancel", _wrap_cancel),
            (Worker, "handle_job_failure", _wrap_handle_job_failure),
        ]
        self._patches = []
        for cls, name, wrap in targets:
            if hasattr(getattr(cls, name, None), _PATCHED):
                continue  # patched by an instance of this class that was not uninstrumented
            try:
                self._patches.append(_patch(cls, name, wrap))
            except Exception:
                logger.warning(
                    "jobtrace: patching RQ's %s.%s failed", cls.__name__, name, exc_info=True
                )

    def _uninstrument(self, **kwargs: Any) -> None:
        patches, self._patches = getattr(self, "_patches", []), []
        for patch in reversed(patches):
            setattr(patch.owner, patch.name, patch.original)


def instrument_rq(**kwargs: Any) -> RQInstrumentor:
    """Instrument RQ in this process, once; returns the instrumentor.

    Args:
        **kwargs: ``record``, ``database_url``, ``flush_on_job_end`` (see the module's guide).
    """
    instrumentor = RQInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(**kwargs)
    return instrumentor
