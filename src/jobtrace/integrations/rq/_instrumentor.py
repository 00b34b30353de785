"""The RQ instrumentor: patched enqueue and perform paths that turn RQ jobs into job runs.

The usage guide is the package's docstring (:mod:`jobtrace.integrations.rq`). This module imports
RQ at top level, so that a missing RQ raises ``ModuleNotFoundError`` when the ``jobtrace-rq`` entry
point is loaded and ``opentelemetry-instrument`` skips it quietly.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from rq import Retry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.worker import Worker

from jobtrace import Enqueue, JobRun, JobState
from jobtrace.instrumentation import (
    KEY_ATTEMPT,
    KEY_JOB_ID,
    KEY_PREVIOUS_SPAN,
    JobMetadata,
    Options,
    QueueInstrumentor,
    call_args,
    in_forked_child,
    read_job_metadata,
    redis_server,
)

__all__ = ["SYSTEM", "RQInstrumentor", "RetryLimitExceededError", "job_state"]

logger = logging.getLogger("jobtrace")

SYSTEM = "rq"

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

    __module__ = "jobtrace.integrations.rq"  # its public home, as ``error.type`` says


def job_state(status: JobStatus | str | None) -> JobState | None:
    """The jobtrace state for an RQ job status (``None`` for a status this RQ version added)."""
    if status is None:
        return None
    return _STATES.get(getattr(status, "value", status))


# The options of the last instrument(); the wrappers are only installed while instrumented.
_options = Options(system=SYSTEM)


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
        send = _options.send(
            _job_name(job),
            queue=queue.name,
            job_id=job.id,
            args=_job_args(job),
            delay=delay,
            carrier=job.meta,
            server=redis_server(queue.connection),
        )
    except Exception:
        logger.warning("jobtrace: tracing the enqueue of an RQ job failed", exc_info=True)
        return None
    send.start()
    return send


def _incoming(job: Job) -> JobMetadata:
    return read_job_metadata(job.meta, name=_job_name(job), job_id=job.id)


def _record_outcome(
    job: Job, state: JobState, reason: str, incoming: JobMetadata | None = None
) -> None:
    """Tell the lineage store how an attempt ended that no ``process`` span saw end.

    Args:
        incoming: The job's metadata as the attempt began, when the caller already read it.
    """
    _options.record_unrun(
        job.meta if incoming is None else incoming,
        name=_job_name(job),
        job_id=str(job.id),
        state=state,
        reason=reason,
        queue=job.origin,
    )


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


def _wrap_perform(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def perform(job: Job, *args: Any, **kwargs: Any) -> Any:
        run = _start_run(job)
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


def _start_run(job: Job) -> JobRun | None:
    try:
        flush = _options.flush_on_job_end
        if flush is None and (in_forked_child() or os.environ.get("RQ_JOB_ID") == job.id):
            flush = True  # a work horse: it leaves with os._exit
        run = _options.job_run(
            job.meta,
            name=_job_name(job),
            job_id=job.id,
            queue=job.origin,
            args=_job_args(job),
            flush=flush,
            server=redis_server(job.connection),
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


class RQInstrumentor(QueueInstrumentor):
    """Patches RQ's enqueue and perform paths; see the package's guide.

    A singleton, like every ``BaseInstrumentor``: instrumenting twice is a no-op with a warning, and
    ``uninstrument()`` restores every patched method.
    """

    system = SYSTEM
    dependencies = ("rq >= 1.15, < 4.0",)

    def _hook(self, options: Options) -> None:
        global _options
        _options = options
        self.patch(Queue, "enqueue_job", _wrap_enqueue_job)
        self.patch(Queue, "schedule_job", _wrap_schedule_job)
        self.patch(Queue, "enqueue_many", _wrap_enqueue_many)
        self.patch(Queue, "create_job", _wrap_create_job)
        self.patch(Job, "perform", _wrap_perform)
        self.patch(Job, "cancel", _wrap_cancel)
        self.patch(Worker, "handle_job_failure", _wrap_handle_job_failure)
