"""The Celery instrumentor: signal receivers that turn Celery's task life cycle into job runs.

The usage guide is the package's docstring (:mod:`jobtrace.integrations.celery`). This module imports
Celery at top level, so that a missing Celery raises ``ModuleNotFoundError`` when the
``jobtrace-celery`` entry point is loaded and ``opentelemetry-instrument`` skips it quietly.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import celery
from celery import signals, states
from celery.exceptions import Reject, Retry
from celery.utils.dispatch.signal import Signal
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span

from jobtrace import JobRun, JobState, get_settings
from jobtrace.instrumentation import (
    KEY_ATTEMPT,
    KEY_JOB_ID,
    KEY_PREFIX,
    Options,
    QueueInstrumentor,
    SendIncompleteError,
    SendTracker,
    Server,
    call_args,
    metadata_entries,
)

__all__ = ["SYSTEM", "CeleryInstrumentor"]

logger = logging.getLogger("jobtrace")

SYSTEM = "celery"
_CONTRIB_MODULE = "opentelemetry.instrumentation.celery"

# Celery signals whose receivers open something (a span, an attached context) and the ones that
# close it. With python-contrib's instrumentation active, jobtrace's receivers must run after
# contrib's on the first (to find its span) and before them on the second (to finish on an open
# span and detach its context first).
_OPENING = (signals.before_task_publish, signals.task_prerun)
_CLOSING = (signals.after_task_publish, signals.task_postrun)


@dataclass
class _Running:
    """A task running in this thread: its job run and the metadata it came with."""

    run: JobRun
    carrier: dict[str, Any]


class _ThreadState(threading.local):
    """Per-thread bookkeeping: Celery sends a task's signals from the thread that runs it."""

    def __init__(self) -> None:
        self.running: dict[str, list[_Running]] = {}  # a stack per task id, for eager re-entry
        self.eager_retries: dict[str, dict[str, Any]] = {}


class CeleryInstrumentor(QueueInstrumentor):
    """Connects jobtrace to Celery's signals; ``uninstrument()`` disconnects every receiver.

    A singleton, like every ``BaseInstrumentor``: instrumenting twice is a no-op with a warning.
    """

    system = SYSTEM
    dependencies = ("celery >= 5.3, < 6.0",)
    _state: _ThreadState
    _sends: SendTracker
    _receivers: tuple[tuple[Signal, Callable[..., None]], ...] = ()
    _order_key: tuple[object, ...] | None = None
    _deferring = False
    _order_lock = threading.Lock()
    _in_worker = False  # a worker's process: it flushes as it exits, not after each task

    def _hook(self, options: Options) -> None:
        self._state = _ThreadState()
        self._sends = SendTracker(
            PublishIncompleteError, "the publish raised before it was confirmed"
        )
        self._order_key = None
        self._receivers = (
            (signals.before_task_publish, self._before_publish),
            (signals.after_task_publish, self._after_publish),
            (signals.task_prerun, self._prerun),
            (signals.task_postrun, self._postrun),
            (signals.task_revoked, self._revoked),
            (signals.task_unknown, self._unknown),
            (signals.task_rejected, self._rejected),
            (signals.worker_init, self._worker_init),
            (signals.worker_process_init, self._process_init),
            (signals.worker_process_shutdown, self._shutdown),
            (signals.worker_shutdown, self._shutdown),
        )
        for signal, receiver in self._receivers:
            signal.connect(receiver, weak=False)
        self.order_after_contrib()

    def _unhook(self) -> None:
        receivers, self._receivers = self._receivers, ()
        for signal, receiver in receivers:
            signal.disconnect(receiver)
        self._sends.end_all()
        self._state = _ThreadState()
        self._deferring = False
        self._order_key = None
        self._in_worker = False

    def check_app(self, app: celery.Celery) -> None:
        """Warn about an app whose messages cannot carry jobtrace's metadata."""
        if app.conf.task_protocol == 1:
            logger.warning(
                "jobtrace: Celery app %s sends task protocol 1; jobtrace reads and writes the "
                "metadata in protocol 2's message headers: traces and lineage will not join",
                app.main,
            )

    # -- living beside opentelemetry-instrumentation-celery --------------------------------------

    def order_after_contrib(self) -> bool:
        """Put jobtrace's receivers after contrib's where they open, before them where they close.

        Cheap when nothing changed; called at ``instrument()``, when a worker process starts and,
        once contrib's module is imported, before each message. Returns whether jobtrace's opening
        receivers had to move, that is whether the signal being sent right now still calls them
        before contrib's.
        """
        contrib = _active_contrib()
        key = (contrib, *(len(signal.receivers) for signal in (*_OPENING, *_CLOSING)))
        if key == self._order_key:
            return False
        moved = False
        with self._order_lock:
            if contrib:
                ours = {id(receiver) for _, receiver in self._receivers}
                for signal in _OPENING:
                    if _move_last(signal, lambda r: id(r) in ours, after=_is_contrib):
                        moved = True
                for signal in _CLOSING:
                    _move_last(signal, _is_contrib, after=lambda r: id(r) in ours)
            self._deferring = contrib
            self._order_key = key
        return moved

    def _adopt(self) -> Span | None:
        """The span contrib just started for this message, when jobtrace defers to contrib.

        ``None`` when contrib is not active (jobtrace makes its own span). When contrib's receiver
        comes after jobtrace's this one time (contrib was instrumented since the last check),
        jobtrace records the lineage without a span rather than make a second one.
        """
        if not self._deferring and _CONTRIB_MODULE not in sys.modules:
            return None  # contrib is not even imported: nothing to order, no span to adopt
        moved = self.order_after_contrib()
        if not self._deferring:
            return None
        return INVALID_SPAN if moved else trace.get_current_span()

    # -- producer side ----------------------------------------------------------------------------

    def _before_publish(
        self,
        sender: object = None,
        body: Any = None,
        headers: Any = None,
        routing_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Start the ``send`` span and write the metadata into the message headers."""
        try:
            self._start_send(sender, body, headers, routing_key)
        except Exception:
            logger.warning("jobtrace: tracing the publish of %s failed", sender, exc_info=True)

    def _start_send(self, sender: object, body: Any, headers: Any, routing_key: str | None) -> None:
        if not isinstance(headers, MutableMapping):
            return
        task_id = headers.get("id")
        name = headers.get("task") or sender
        if not isinstance(task_id, str) or not isinstance(name, str):
            return  # task protocol 1: the metadata has nowhere to go (see check_app)
        self._sends.fail_unfinished()
        running = self._state.running.get(task_id)
        if running:
            # task.retry() or task.replace() re-sends the running task under its own id.
            _carry_to_next_attempt(headers, running[-1])
            return
        if headers.get(KEY_JOB_ID) == task_id:
            return  # sent before (a broker-level resend): its metadata stays
        _drop_our_keys(headers)  # another job's keys, copied along with its headers
        enqueue = self.options.send(
            name,
            queue=routing_key or None,
            job_id=task_id,
            args=_body_args(body),
            delay=_delay(headers.get("eta")),
            carrier=headers,
            span=self._adopt(),
            server=_broker_server(celery.current_app._get_current_object()),
        )
        enqueue.start()
        self._sends.track(task_id, enqueue)

    def _after_publish(self, sender: object = None, headers: Any = None, **kwargs: Any) -> None:
        """End the ``send`` span: the broker accepted the message."""
        task_id = headers.get("id") if isinstance(headers, Mapping) else None
        if isinstance(task_id, str):
            self._sends.complete(task_id)

    # -- worker side: a task run ------------------------------------------------------------------

    def _prerun(
        self,
        sender: object = None,
        task_id: str | None = None,
        task: celery.Task[Any, Any] | None = None,
        args: Any = None,
        kwargs: Any = None,
        **extra: Any,
    ) -> None:
        """Start the job's run and make it the current job while the task runs."""
        if task is None or not isinstance(task_id, str):
            return
        try:
            request = task.request
            carrier = _carrier(request)
            queue = _queue(request.delivery_info)
            call = call_args(args or (), kwargs or {})
            adopted = self._adopt()
            if request.is_eager:
                carrier = self._eager_metadata(carrier, task_id, task.name, queue, call, adopted)
            run = self.options.job_run(
                carrier,
                name=task.name,
                job_id=task_id,
                queue=queue,
                attempt=_attempt(request.retries, carrier),
                args=call,
                flush=self._flush_on_task_end(),
                span=adopted,
                server=None if request.is_eager else _broker_server(task.app),
            )
            run.start()
        except Exception:
            logger.warning("jobtrace: tracing task %s failed", task_id, exc_info=True)
            return
        self._state.running.setdefault(task_id, []).append(_Running(run, carrier))

    def _eager_metadata(
        self,
        carrier: dict[str, Any],
        task_id: str,
        name: str,
        queue: str | None,
        args: Any,
        adopted: Span | None,
    ) -> dict[str, Any]:
        """An eager task is never published: it is sent in process, as the caller's child.

        Its retry (run in place too) carries the first attempt's metadata instead. Under contrib's
        span the run is always its caller's child (contrib nests it so), whatever the policy.
        """
        retry = self._state.eager_retries.pop(task_id, None)
        if retry is not None:
            return {**carrier, **retry}
        carrier = dict(carrier)
        _drop_our_keys(carrier)
        self.options.send_in_process(
            name,
            job_id=task_id,
            carrier=carrier,
            queue=queue,
            args=args,
            relationship="child" if adopted is not None else None,
        )
        return carrier

    def _postrun(
        self,
        sender: object = None,
        task_id: str | None = None,
        task: celery.Task[Any, Any] | None = None,
        retval: Any = None,
        state: str | None = None,
        **kwargs: Any,
    ) -> None:
        """End the job's run with the outcome Celery reached."""
        stack = self._state.running.get(task_id) if isinstance(task_id, str) else None
        if not stack:
            return
        running = stack.pop()
        if not stack:
            del self._state.running[task_id]  # type: ignore[arg-type]
        try:
            self._finish(running, task, retval, state)
        except Exception:
            logger.warning("jobtrace: ending task %s failed", task_id, exc_info=True)
            running.run.finish()
        self._sends.fail_unfinished()

    def _finish(self, running: _Running, task: object, retval: Any, state: str | None) -> None:
        run = running.run
        if state == states.SUCCESS:
            run.finish()
        elif state == states.FAILURE:
            run.finish(retval if isinstance(retval, BaseException) else None, will_retry=False)
        elif state == states.RETRY:
            error = retval.exc if isinstance(retval, Retry) else retval
            if getattr(getattr(task, "request", None), "is_eager", False) and run.info:
                next_attempt: dict[str, Any] = {}
                _carry_to_next_attempt(next_attempt, running)
                self._state.eager_retries[run.info.job_id] = next_attempt
            run.finish(
                error if isinstance(error, BaseException) else None,
                will_retry=True,
                state=JobState.RETRYING,
                reason=None if error else "retry_requested",
            )
        elif state == states.IGNORED:
            run.finish(state=JobState.SKIPPED, reason="ignored")
        elif state == states.REJECTED:
            requeue = bool(getattr(retval, "requeue", False))
            reason = getattr(retval, "reason", None) if isinstance(retval, Reject) else None
            run.finish(
                state=JobState.RETRYING if requeue else JobState.DISCARDED,
                reason=str(reason) if reason else "rejected",
            )
        else:
            # No state: an exception escaped the task (an eager task that propagates errors).
            error = sys.exc_info()[1]
            if isinstance(error, Retry):
                run.finish(error.exc, will_retry=True, state=JobState.RETRYING)
            else:
                run.finish(error, will_retry=False)

    # -- worker side: messages that never run -----------------------------------------------------

    def _revoked(
        self,
        sender: object = None,
        request: Any = None,
        terminated: bool = False,
        expired: bool = False,
        **kwargs: Any,
    ) -> None:
        """A revoked task is ``cancelled``; an expired one ``discarded``."""
        task_id = getattr(request, "id", None)
        name = getattr(sender, "name", None)
        if not isinstance(task_id, str) or not isinstance(name, str):
            return
        if expired:
            state, reason = JobState.DISCARDED, "expired"
        else:
            state, reason = JobState.CANCELLED, "terminated" if terminated else "revoked"
        self._record_outcome(
            _carrier(request),
            name=name,
            task_id=task_id,
            queue=_queue(getattr(request, "delivery_info", None)),
            attempt=_attempt(getattr(request, "retries", 0), {}),
            state=state,
            reason=reason,
        )

    def _unknown(
        self,
        sender: object = None,
        message: Any = None,
        exc: BaseException | None = None,
        name: str | None = None,
        id: str | None = None,
        **kwargs: Any,
    ) -> None:
        """A message for a task this worker does not know is ``discarded``."""
        if not isinstance(id, str) or not isinstance(name, str):
            return
        self._record_outcome(
            _message_headers(message),
            name=name,
            task_id=id,
            queue=_queue(getattr(message, "delivery_info", None)),
            state=JobState.DISCARDED,
            reason="unknown_task",
            error=exc,
        )

    def _rejected(
        self, sender: object = None, message: Any = None, exc: Any = None, **kwargs: Any
    ) -> None:
        """A message the worker could not read as a task is ``discarded``, when it names one."""
        headers = _message_headers(message)
        task_id, name = headers.get("id"), headers.get("task")
        if not isinstance(task_id, str) or not isinstance(name, str):
            return
        self._record_outcome(
            headers,
            name=name,
            task_id=task_id,
            queue=_queue(getattr(message, "delivery_info", None)),
            state=JobState.DISCARDED,
            reason="rejected",
            error=exc if isinstance(exc, BaseException) else None,
        )

    def _record_outcome(
        self,
        carrier: Mapping[str, Any],
        *,
        name: str,
        task_id: str,
        queue: str | None,
        state: JobState,
        reason: str,
        attempt: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        """A job that ends without running: a short span with the outcome, and its record."""
        try:
            run = self.options.job_run(
                dict(carrier),
                name=name,
                job_id=task_id,
                queue=queue,
                attempt=attempt,
                flush=self._flush_on_task_end(),
            )
            run.start()
            run.finish(error, will_retry=False, state=state, reason=reason)
        except Exception:
            logger.warning(
                "jobtrace: recording task %s as %s failed", task_id, state, exc_info=True
            )

    # -- worker processes ---------------------------------------------------------------------

    def _flush_on_task_end(self) -> bool | None:
        """``False`` in a worker's process unless a flush per task was asked for; else ``None``.

        A prefork child is long-lived (it is forked once, or once per ``max_tasks_per_child``
        tasks) and flushes in ``worker_process_shutdown``, the main process at exit: a flush per
        task would only cost each task an export. ``None`` leaves the choice to jobtrace (an
        eager task in a forked process still flushes).
        """
        if not self._in_worker or self.options.flush_on_job_end is not None:
            return None
        return None if get_settings().flush_on_job_end is not None else False

    def _worker_init(self, **kwargs: Any) -> None:
        """In the worker's main process, before the pool forks: check last in each child.

        The usual way to instrument contrib is a ``worker_process_init`` receiver of one's own:
        jobtrace's, moved after it, then sees contrib active before the child's first task.
        """
        self._in_worker = True
        ours = {id(receiver) for _, receiver in self._receivers}
        _move_last(
            signals.worker_process_init, lambda r: id(r) in ours, after=lambda r: id(r) not in ours
        )

    def _process_init(self, **kwargs: Any) -> None:
        """In each prefork child: the recorder runs here, and the receivers are in order."""
        self._in_worker = True
        self.options.start_recording()
        self.order_after_contrib()

    def _shutdown(self, **kwargs: Any) -> None:
        """Flush spans, metrics and records before a worker (or a prefork child) exits.

        A prefork child leaves with ``os._exit`` (after ``max_tasks_per_child`` tasks, too: billiard
        sends ``worker_process_shutdown`` in the child as its loop ends): no ``atexit`` handler runs
        there, so nothing buffered would get out otherwise. Within ``shutdown_flush_timeout``
        (default: the ``flush_timeout`` budget); a signal backing off is skipped.
        """
        self.options.flush()


class PublishIncompleteError(SendIncompleteError):
    """Kombu raised between ``before_task_publish`` and ``after_task_publish``."""


# -- helpers ----------------------------------------------------------------------------------


def _active_contrib() -> bool:
    """Whether python-contrib's Celery instrumentation is installed and instrumenting."""
    module = sys.modules.get(_CONTRIB_MODULE)
    if module is None:
        return False  # not imported, so not instrumenting
    # BaseInstrumentor keeps its singleton on the class and the flag on the instance; looking
    # them up is cheaper than constructing it (its __init__ runs on every construction).
    instance = getattr(getattr(module, "CeleryInstrumentor", None), "_instance", None)
    return bool(getattr(instance, "is_instrumented_by_opentelemetry", False))


def _is_contrib(receiver: object) -> bool:
    module = getattr(receiver, "__module__", None) or ""
    return module == _CONTRIB_MODULE or module.startswith(_CONTRIB_MODULE + ".")


def _move_last(
    signal: Signal, which: Callable[[object], bool], *, after: Callable[[object], bool]
) -> bool:
    """Reconnect ``which`` receivers at the end if any comes before an ``after`` receiver."""
    receivers = [_resolve(entry[1]) for entry in signal.receivers]
    first = next((i for i, r in enumerate(receivers) if which(r)), None)
    last_after = max((i for i, r in enumerate(receivers) if after(r)), default=None)
    if first is None or last_after is None or first > last_after:
        return False
    for receiver in [r for r in receivers if r is not None and which(r)]:
        signal.disconnect(receiver)
        signal.connect(receiver, weak=False)
    return True


def _resolve(receiver: object) -> object:
    """A receiver as called: weak references dereferenced (``None`` once dead)."""
    return receiver() if isinstance(receiver, weakref.ReferenceType) else receiver


def _carrier(request: Any) -> dict[str, Any]:
    """A task's metadata: its custom message headers, which Celery keeps on ``request.headers``."""
    headers = getattr(request, "headers", None)
    carrier = dict(headers) if isinstance(headers, Mapping) else {}
    if KEY_JOB_ID not in carrier and request is not None:
        # Celery also copies every message header onto the request as an attribute: a request
        # built without ``headers`` (a custom Request class, an old Celery) still has them there.
        for key, value in metadata_entries(getattr(request, "__dict__", {})).items():
            carrier.setdefault(key, value)
    return carrier


def _message_headers(message: Any) -> dict[str, Any]:
    headers = getattr(message, "headers", None)
    return dict(headers) if isinstance(headers, Mapping) else {}


def _carry_to_next_attempt(headers: MutableMapping[str, Any], running: _Running) -> None:
    """The running task is sent again: keep its lineage and trace context, link the attempts."""
    for key, value in metadata_entries(running.carrier).items():
        headers.setdefault(key, value)  # task.replace() sends none of the request's headers
    headers.update(running.run.retry_metadata())


def _drop_our_keys(headers: MutableMapping[str, Any]) -> None:
    for key in [k for k in headers if isinstance(k, str) and k.startswith(KEY_PREFIX)]:
        del headers[key]


def _queue(delivery_info: object) -> str | None:
    if isinstance(delivery_info, Mapping):
        routing_key = delivery_info.get("routing_key")
        if isinstance(routing_key, str) and routing_key:
            return routing_key
    return None


def _attempt(retries: object, carrier: Mapping[str, Any]) -> int:
    """Celery counts retries from 0; jobtrace counts attempts from 1 (a replace counts too)."""
    attempt = retries + 1 if isinstance(retries, int) and retries >= 0 else 1
    carried = carrier.get(KEY_ATTEMPT)
    if isinstance(carried, str) and carried.isdigit() and len(carried) < 8:
        attempt = max(attempt, int(carried))
    return attempt


def _body_args(body: object) -> Any:
    """The task's arguments from a protocol 2 body ``(args, kwargs, embed)``."""
    if isinstance(body, (tuple, list)) and len(body) >= 2:
        args, kwargs = body[0], body[1]
        if isinstance(args, (list, tuple)) and isinstance(kwargs, Mapping):
            return call_args(args, kwargs)
    return None


# The broker of each app: (the URLs it was read from, server, when they were read).
_servers: weakref.WeakKeyDictionary[Any, tuple[object, Server | None, float]] = (
    weakref.WeakKeyDictionary()
)
_IN_PROCESS_TRANSPORTS = frozenset({"memory", "filesystem", "cache"})
#: Seconds a broker server is used before the app's broker settings are read again: reading
#: them (``conf.broker_write_url``, environment and every configuration map) cost 12 us, twice
#: per task (publish and run), for settings that change once in an app's life if ever.
_SERVER_RECHECK = 1.0


def _broker_server(app: Any) -> Server | None:
    """The broker host and port of ``app``'s connection for publishing; ``None`` if in-process.

    Read without connecting (kombu parses the URL and fills in the transport's default port);
    the first URL of a failover list. Cached per app; its broker settings are read again at most
    every ``_SERVER_RECHECK`` seconds, and parsed again when they changed.
    """
    try:
        now = time.monotonic()
        cached = _servers.get(app)
        if cached is not None and now - cached[2] < _SERVER_RECHECK:
            return cached[1]
        conf = app.conf
        urls = (conf.broker_write_url, conf.broker_url)
        if cached is not None and cached[0] == urls:
            _servers[app] = (urls, cached[1], now)
            return cached[1]
        server: Server | None = None
        with app.connection_for_write() as connection:
            info = connection.info()
        host, port = info.get("hostname"), info.get("port")
        if info.get("transport") not in _IN_PROCESS_TRANSPORTS and isinstance(host, str) and host:
            if "://" in host:  # a socket URL (redis+socket:///path): the path is the address
                host, port = host.split("://", 1)[1] or None, None
            if host:
                valid_port = isinstance(port, int) and 0 < port < 65536
                server = (host, port if valid_port else None)
        _servers[app] = (urls, server, now)
        return server
    except Exception:
        return None


def _delay(eta: object) -> float | None:
    """Seconds until an ``eta`` (ISO 8601) comes, for a task sent with a countdown."""
    if not isinstance(eta, str) or not eta:
        return None
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())
