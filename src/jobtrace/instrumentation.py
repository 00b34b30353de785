"""What queue integrations build on, as contrib's build on ``opentelemetry.instrumentation.utils``.

An integration is its hook mechanism (signals, middleware, patched methods), where the metadata
travels (message headers, ``job.meta``, an entry of the stored job) and its outcome rules (which
library state is which :class:`~jobtrace.JobState`). The rest is here, so none needs a private
name: :class:`QueueInstrumentor` (options, patch and restore, instrument once), :class:`Options`
(the job runs and sends of one instrumentor, on its providers), :class:`SendTracker` (sends whose
after-hook never came), :func:`read_job_metadata` and :meth:`Options.record_unrun` (a job that
never ran), :meth:`Options.send_in_process` (a job run without being published) and the metadata
key names. See "Writing an integration" in ``docs/integrations/writing.md``.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,  # (the module's __all__ is empty)
)
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import NonRecordingSpan, Span

from jobtrace import records
from jobtrace._internal.config import Relationship, get_settings
from jobtrace._internal.consumer import JobRun, RetryDecision
from jobtrace._internal.metadata import (
    KEY_ATTEMPT,
    KEY_JOB_ID,
    KEY_PREVIOUS_SPAN,
    _propagation_fields,
    read_metadata,
)
from jobtrace._internal.producer import Enqueue
from jobtrace._internal.redaction import call_args
from jobtrace._internal.semconv import Server, redis_server
from jobtrace._internal.telemetry import flush, in_forked_child
from jobtrace.records import JobInfo, JobState

__all__ = [
    "KEY_ATTEMPT",
    "KEY_JOB_ID",
    "KEY_PREFIX",
    "KEY_PREVIOUS_SPAN",
    "PATCHED",
    "JobMetadata",
    "Options",
    "QueueInstrumentor",
    "SendIncompleteError",
    "SendTracker",
    "Server",
    "call_args",
    "import_integration",
    "in_forked_child",
    "metadata_entries",
    "read_job_metadata",
    "redis_server",
]

logger = logging.getLogger("jobtrace")

KEY_PREFIX = "jobtrace-"
"""Every key jobtrace writes into a job's metadata starts so (``docs/metadata.md``)."""
PATCHED = "__jobtrace_original__"
"""Set on each wrapper :meth:`QueueInstrumentor.patch` installs: the attribute it replaced."""

_COMMON = frozenset(
    {
        "record",
        "database_url",
        "tracer_provider",
        "meter_provider",
        "flush_on_job_end",
        "shutdown_flush_timeout",
    }
)
_I = TypeVar("_I", bound="QueueInstrumentor")


# -- a job's metadata ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobMetadata:
    """What a job's metadata says about it; ``None`` where it said nothing valid."""

    job_id: str | None = None
    parent_job_id: str | None = None
    root_job_id: str | None = None
    depth: int | None = None
    attempt: int | None = None
    enqueued_at: float | None = None

    def info(
        self,
        *,
        job_id: str,
        name: str,
        system: str,
        queue: str | None = None,
        attempt: int | None = None,
    ) -> JobInfo:
        """The job's :class:`~jobtrace.JobInfo`, its root and depth by :func:`jobtrace.records.lineage`.

        Args:
            job_id: The queue's id for the job.
            name: The job's name.
            system: The queue system's name.
            queue: The queue it is in.
            attempt: Which attempt; else the metadata's, else 1.
        """
        root_job_id, depth = records.lineage(
            job_id, self.parent_job_id, self.root_job_id, self.depth
        )
        return JobInfo(
            job_id=job_id,
            name=name,
            root_job_id=root_job_id,
            depth=depth,
            queue=queue,
            attempt=attempt or self.attempt or 1,
            parent_job_id=self.parent_job_id,
            system=system,
        )


def read_job_metadata(metadata: object, *, name: str, job_id: str | None = None) -> JobMetadata:
    """Read a job's metadata as it came (anything at all); malformed parts cost one warning.

    Args:
        metadata: The job's metadata.
        name: Names the job in the warning.
        job_id: The queue's id for the job, for the warning too.
    """
    incoming = read_metadata(metadata, job_description=f"job {name} {job_id or ''}".rstrip())
    return JobMetadata(
        job_id=incoming.job_id,
        parent_job_id=incoming.parent_job_id,
        root_job_id=incoming.root_job_id,
        depth=incoming.depth,
        attempt=incoming.attempt,
        enqueued_at=incoming.enqueued_at,
    )


def metadata_entries(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    """The entries of ``mapping`` that are job metadata: jobtrace's keys and the propagator's.

    For a carrier shared with other things (message headers, a request's attributes), when the
    metadata has to be picked out of it or carried on to the next attempt.
    """
    fields = _propagation_fields()
    return {
        key: value
        for key, value in mapping.items()
        if isinstance(key, str) and (key.startswith(KEY_PREFIX) or key.lower() in fields)
    }


# -- options, runs and sends ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Options:
    """The keywords every jobtrace instrumentor takes, and the runs and sends they start.

    Attributes:
        system: The queue system's name, for ``messaging.system`` and the records.
        record: Record lineage in the store; ``None`` follows ``JOBTRACE_RECORD``.
        database_url: The lineage store; ``None`` follows ``JOBTRACE_DATABASE_URL``.
        tracer_provider: For the job and send spans; ``None``: the global one at each job.
        meter_provider: For the job metrics; ``None``: the global one at each job.
        flush_on_job_end: Flush telemetry after each job; ``None`` lets jobtrace decide.
        shutdown_flush_timeout: Longest flush when a worker exits, in seconds; ``None`` uses the
            ``flush_timeout`` setting.
        extra: The instrumentor's own keywords (a broker, a worker).
    """

    system: str = "jobtrace"
    record: bool | None = None
    database_url: str | None = None
    tracer_provider: trace.TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    flush_on_job_end: bool | None = None
    shutdown_flush_timeout: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, kwargs: Mapping[str, Any], *, system: str, extra: Collection[str] = ()
    ) -> Options:
        """The options of ``instrument(**kwargs)``; an unknown keyword costs a warning.

        Args:
            kwargs: What ``instrument()`` was given.
            system: The queue system's name.
            extra: The instrumentor's own keywords, kept in :attr:`extra`.
        """
        unknown = sorted(set(kwargs) - _COMMON - set(extra))
        if unknown:
            logger.warning("jobtrace: %s instrumentation ignores %s", system, ", ".join(unknown))
        return cls(
            system=system,
            record=kwargs.get("record"),
            database_url=kwargs.get("database_url"),
            tracer_provider=kwargs.get("tracer_provider"),
            meter_provider=kwargs.get("meter_provider"),
            flush_on_job_end=kwargs.get("flush_on_job_end"),
            shutdown_flush_timeout=kwargs.get("shutdown_flush_timeout"),
            extra={key: kwargs[key] for key in extra if key in kwargs},
        )

    def job_run(
        self,
        metadata: object,
        *,
        name: str,
        job_id: str | None = None,
        queue: str | None = None,
        attempt: int | None = None,
        args: Any = None,
        will_retry: RetryDecision = False,
        flush: bool | None = None,
        span: Span | None = None,
        server: Server | None = None,
    ) -> JobRun:
        """A :class:`~jobtrace.JobRun` of this instrumentor (see :func:`jobtrace.trace_job`).

        ``flush`` overrides :attr:`flush_on_job_end`; ``span`` adopts another instrumentation's;
        ``server`` is the broker's address and port (``server.address``, ``server.port``).
        """
        return JobRun(
            metadata,
            name=name,
            job_id=job_id,
            queue=queue,
            attempt=attempt,
            system=self.system,
            args=args,
            will_retry=will_retry,
            flush=self.flush_on_job_end if flush is None else flush,
            span=span,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            server_address=None if server is None else server[0],
            server_port=None if server is None else server[1],
        )

    def send(
        self,
        name: str,
        *,
        queue: str | None = None,
        job_id: str | None = None,
        args: Any = None,
        relationship: Relationship | None = None,
        delay: float | None = None,
        carrier: MutableMapping[str, Any] | None = None,
        span: Span | None = None,
        server: Server | None = None,
    ) -> Enqueue:
        """An :class:`~jobtrace.Enqueue` of this instrumentor, not started yet.

        ``server`` is the broker's address and port (``server.address``, ``server.port``).
        """
        return Enqueue(
            name,
            queue=queue,
            job_id=job_id,
            args=args,
            relationship=relationship,
            delay=delay,
            system=self.system,
            carrier=carrier,
            span=span,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            server_address=None if server is None else server[0],
            server_port=None if server is None else server[1],
        )

    def send_in_process(
        self,
        name: str,
        *,
        job_id: str,
        carrier: MutableMapping[str, Any],
        queue: str | None = None,
        args: Any = None,
        relationship: Relationship | None = None,
    ) -> Enqueue:
        """Write the metadata of a job run here and now without being published (an eager mode).

        The same code as a real send decides its place: a child of the running job (fan-out and
        delay rules included), recorded ``queued``. No ``send`` span is made: the trace context
        written is the current span's, so the run starts under its caller, or for a ``link`` in
        a new trace linked to it.
        """
        caller = NonRecordingSpan(trace.get_current_span().get_span_context())
        enqueue = self.send(
            name,
            queue=queue,
            job_id=job_id,
            args=args,
            relationship=relationship,
            carrier=carrier,
            span=caller,
        )
        enqueue.published = False  # no broker saw it: not a message sent
        enqueue.start()
        enqueue.end()  # an adopted span: nothing to end
        return enqueue

    def record_unrun(
        self,
        metadata: object,
        *,
        name: str,
        job_id: str,
        state: JobState,
        reason: str,
        queue: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """Record how an attempt ended that no job span saw end (its worker died, it was cancelled).

        Nothing ran here: no span, and the record names no host. Never raises.

        Args:
            metadata: The job's metadata as it came, or what :func:`read_job_metadata` made of it.
            name: The job's name.
            job_id: The queue's id for the job.
            state: The attempt's outcome.
            reason: Why, in a word or two.
            queue: The queue it was in.
            attempt: Which attempt; else the metadata's, else 1.
        """
        if not records.has_sinks():
            return
        try:
            read = (
                metadata
                if isinstance(metadata, JobMetadata)
                else read_job_metadata(metadata, name=name, job_id=job_id)
            )
            info = read.info(
                job_id=job_id, name=name, system=self.system, queue=queue, attempt=attempt
            )
            records.emit(records.unrun(info, state, at=time.time(), reason=reason))
        except Exception:
            logger.warning("jobtrace: recording job %s as %s failed", job_id, state, exc_info=True)

    def start_recording(self) -> None:
        """Start the lineage recorder in this process (once), unless recording is off.

        A store that fails costs a warning. Call it again in each worker process a pool starts.
        """
        record = self.record
        if record is None:
            record = os.environ.get("JOBTRACE_RECORD", "1") != "0"
        if not record:
            return
        try:
            from jobtrace.lineage.recorder import start_recorder

            start_recorder(self.database_url)
        except Exception as error:
            logger.warning("jobtrace: lineage recording is off: %s", error)

    def flush(self) -> None:
        """Flush spans, metrics and records before a worker process exits (within the timeout)."""
        timeout = self.shutdown_flush_timeout
        flush(
            get_settings().flush_timeout if timeout is None else timeout,
            (self.tracer_provider, self.meter_provider),
        )


# -- the instrumentor -----------------------------------------------------------------------------


class QueueInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Base of an integration's instrumentor: parses the options, patches, restores.

    ``instrument()`` parses its keywords into :attr:`options`, starts the lineage recorder and
    calls :meth:`_hook`; ``uninstrument()`` calls :meth:`_unhook` and restores every attribute
    :meth:`patch` replaced. A singleton, like every ``BaseInstrumentor``: a second
    ``instrument()`` is a no-op with a warning, :meth:`instrument_once` a quiet one.

    Subclasses set :attr:`system`, :attr:`dependencies` (the library's supported versions, also
    in the pyproject's ``instruments-any`` extra) and :attr:`library_options`, and implement
    :meth:`_hook`.
    """

    system: ClassVar[str] = "jobtrace"
    dependencies: ClassVar[tuple[str, ...]] = ()
    library_options: ClassVar[frozenset[str]] = frozenset()
    options: Options = Options()
    _patches: list[tuple[object, str, object]]

    def instrumentation_dependencies(self) -> Collection[str]:
        """The library versions this instrumentation supports."""
        return self.dependencies

    @classmethod
    def instrument_once(cls: type[_I], **kwargs: Any) -> _I:
        """Instrument unless already instrumented; the (singleton) instrumentor either way."""
        instrumentor = cls()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(**kwargs)
        return instrumentor

    def _instrument(self, **kwargs: Any) -> None:
        self.options = Options.parse(kwargs, system=self.system, extra=self.library_options)
        self._patches = []
        self.options.start_recording()
        self._hook(self.options)

    def _uninstrument(self, **kwargs: Any) -> None:
        try:
            self._unhook()
        finally:
            patches, self._patches = getattr(self, "_patches", []), []
            for owner, name, original in reversed(patches):
                setattr(owner, name, original)

    def _hook(self, options: Options) -> None:
        """Connect to the library: signals, middleware, :meth:`patch`."""
        raise NotImplementedError

    def _unhook(self) -> None:
        """Disconnect what :meth:`_hook` connected other than patches (restored anyway)."""

    def patch(self, owner: object, name: str, wrap: Callable[[Any], Any]) -> bool:
        """Replace ``owner.name`` by ``wrap(original)`` until ``uninstrument()``.

        On a class, the class of its MRO that defines ``name`` is patched (a base class, maybe).
        An attribute jobtrace already wrapped (an instrumentor that was never uninstrumented) is
        left alone. Never raises: a failed patch costs a warning.

        Returns:
            Whether it was patched.
        """
        try:
            holder = owner
            if isinstance(owner, type):
                holder = next(klass for klass in owner.__mro__ if name in vars(klass))
            original = vars(holder)[name]
            if hasattr(original, PATCHED):
                return False
            wrapper = wrap(original)
            setattr(wrapper, PATCHED, original)
            setattr(holder, name, wrapper)
        except Exception:
            logger.warning("jobtrace: patching %r.%s failed", owner, name, exc_info=True)
            return False
        self._patches.append((holder, name, original))
        return True


def import_integration(
    module: str, *, library: str, extra: str, packages: Collection[str]
) -> ModuleType:
    """Import an integration's implementation for a convenience function (``instrument_rq()``).

    Entry points import the implementation directly, so that a missing library is a bare
    ``ModuleNotFoundError`` ``opentelemetry-instrument`` skips; here it says what to install.

    Args:
        module: The module that imports the library at top level.
        library: The library's name as people write it (``RQ``).
        extra: jobtrace's extra that installs it (``rq``).
        packages: Top-level packages of the library and its dependencies.

    Raises:
        ModuleNotFoundError: The library is missing: ``pip install 'jobtrace[<extra>]'``.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in packages:
            raise
        raise ModuleNotFoundError(
            f"jobtrace's {library} integration needs {library} ({error}): "
            f"pip install 'jobtrace[{extra}]'",
            name=error.name,
        ) from error


# -- sends in two halves --------------------------------------------------------------------------


class SendIncompleteError(RuntimeError):
    """A send whose after-hook never came: the library raised in between, the send likely failed."""


class SendTracker:
    """Sends started in a library's before-send hook and ended in its after-send hook.

    Per thread, as libraries call both hooks in the thread that sends. A send whose after-hook
    never came (the broker raised in between) is ended as failed at the thread's next send or
    whenever the integration knows (:meth:`fail_unfinished`), so its span is not lost.

    Args:
        error: The exception type failed sends end with.
        message: Its message.
    """

    def __init__(
        self,
        error: type[BaseException] = SendIncompleteError,
        message: str = "the send raised before it was confirmed",
    ) -> None:
        self._error = error
        self._message = message
        self._local = threading.local()

    def _sends(self) -> dict[str, Enqueue]:
        sends: dict[str, Enqueue] | None = getattr(self._local, "sends", None)
        if sends is None:
            sends = self._local.sends = {}
        return sends

    def track(self, job_id: str, enqueue: Enqueue) -> None:
        """Remember a started send until :meth:`complete`."""
        self._sends()[job_id] = enqueue

    def complete(self, job_id: str) -> None:
        """End the send of ``job_id`` as sent; unknown ids are ignored."""
        enqueue = self._sends().pop(job_id, None)
        if enqueue is not None:
            enqueue.end()

    def fail_unfinished(self) -> None:
        """End every send of this thread still waiting for its after-hook as failed."""
        sends = self._sends()
        while sends:
            _, enqueue = sends.popitem()
            enqueue.end(self._error(self._message))

    def end_all(self) -> None:
        """End this thread's waiting sends without an error (at ``uninstrument()``)."""
        sends = self._sends()
        while sends:
            sends.popitem()[1].end()
