"""The lineage recorder: every job record into the store, off the job's hot path.

A job hands its records to :meth:`Recorder.__call__`, which appends to a bounded in-memory buffer
and returns; a background thread writes them in batches. Records of one job merge in the database
by rules that do not depend on arrival order (:mod:`jobtrace.lineage._merge`), so producers and
workers in many processes can write into one store. The same thread heartbeats the jobs running
in this process, which is how the reaper tells a crashed job from a slow one.

A store that is down or slow costs a rate-limited warning and, once the buffer is full, dropped
records (counted in :attr:`Recorder.dropped`); the job never waits and never fails. The recorder's
own SQL runs with OpenTelemetry instrumentation suppressed, so it never shows up as spans, while a
job's own queries still do.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry import metrics
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, Observation
from sqlalchemy import ColumnElement, Table, bindparam, insert, literal_column, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from jobtrace import records
from jobtrace._internal import delivery
from jobtrace._internal.config import get_settings
from jobtrace.lineage import _merge, handoff
from jobtrace.lineage.models import Attempt, Base, Gap, Job
from jobtrace.lineage.store import create_store_engine, default_url, ensure_schema, safe_url
from jobtrace.records import JobRecord, JobState

logger = logging.getLogger("jobtrace")

HEARTBEAT_INTERVAL = 10.0
WRITE_INTERVAL = 0.2
BATCH_SIZE = 2000
MAX_BUFFERED = 100_000
WARN_EVERY = 30.0
DROPPED_METRIC = "jobtrace.lineage.records.dropped"
_WRITE_ATTEMPTS = 3
_PREPARE_ATTEMPTS = 5


def _is_busy(error: Exception) -> bool:
    """SQLite's "locked"/"busy": another process holds the file for a moment."""
    text = str(error).lower()
    return isinstance(error, OperationalError) and ("locked" in text or "busy" in text)


class Recorder:
    """A record sink writing into the lineage store from a background thread.

    Args:
        url: The store; ``None`` means :func:`jobtrace.lineage.store.default_url`.
        heartbeat_interval: Seconds between heartbeats of the jobs running in this process.
        write_interval: Longest time a record waits in the buffer.
        batch_size: Records written per transaction at most.
        max_buffered: Records held while the store is slow; past that, records are dropped.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        write_interval: float = WRITE_INTERVAL,
        batch_size: int = BATCH_SIZE,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.url = url or default_url()
        self.heartbeat_interval = heartbeat_interval
        self.write_interval = write_interval
        self.batch_size = batch_size
        self.max_buffered = max_buffered
        #: Records lost because the buffer was full or the store kept failing.
        self.dropped = 0
        #: Records written to the store.
        self.written = 0
        with suppress_instrumentation():
            self._engine: Engine = create_store_engine(self.url)
        self._schema_ready = False  # survives a fork: the schema is the same for the child
        # Only SQLite's driver holds process-wide mutexes a fork must not copy while held.
        self._quiet_for_fork = self._engine.dialect.name == "sqlite"
        # A fork waited out _FORK_WAIT and the writer is still inside the driver: the next
        # forks do not wait again until it comes out (a hung store costs one fork, not each).
        self._writer_stuck = False
        # Opened before the first fork, kept across forks: children hand their records over.
        self._handoff: handoff.Handoff | None = None
        self._reset_process_state()
        _instances.add(self)

    # -- the job side: never blocks, never raises ----------------------------------------------

    def __call__(self, record: JobRecord) -> None:
        """Buffer ``record``; start the writer thread on the first record of this process."""
        if record.kind == "started":
            self._running[record.job_id] = record.attempt
        elif record.kind == "finished":
            if self._running.get(record.job_id) == record.attempt:
                del self._running[record.job_id]
            if self._child_beats:  # a worker telling how its child's attempt ended (RQ)
                self._child_ended((record.job_id, record.attempt))
        self._buffer_record(record)

    def _buffer_record(self, record: JobRecord) -> None:
        if len(self._buffer) >= self.max_buffered:
            self._drop((record,))
            self._warn(
                "buffer", "the lineage buffer is full (store slow or down): dropping records"
            )
            return
        buffer = self._buffer
        buffer.append(record)
        self._accepted += 1
        if self._thread is None and not self._closed:
            self._start_thread()
        elif len(buffer) == self.batch_size:  # once per batch; the writer drains what follows
            self._wake.set()

    # -- control -------------------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Write out everything buffered so far; ``False`` if ``timeout`` passed first."""
        if self._handoff is not None and not self._handing_off:
            self._handoff.drain()  # what children sent just before is part of "so far"
        target = self._accepted
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._write_pending()
            return self._done >= target
        deadline = time.monotonic() + timeout
        with self._progress:
            while self._done < target:
                self._wake.set()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop the writer thread and release the engine's connections."""
        records.remove_sink(self)
        self.flush(timeout)
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._handoff is not None and not self._handing_off:
            self._handoff.close()
        self._engine.dispose()

    @property
    def engine(self) -> Engine:
        """The engine the recorder writes with."""
        return self._engine

    def prepare(self) -> bool:
        """Create or upgrade the schema now, so readers find the tables; ``False`` if it failed.

        SQLite answers "database is locked" at once, without its busy timeout, to a connection
        that opens while another process's last connection cleans up the WAL: a moment's wait
        and a retry, not a warning.
        """
        for attempt in range(1, _PREPARE_ATTEMPTS + 1):
            try:
                with self._db_lock, suppress_instrumentation():
                    ensure_schema(self._engine)
            except Exception as error:
                if attempt < _PREPARE_ATTEMPTS and _is_busy(error):
                    time.sleep(0.05 * attempt)
                    continue
                self._warn("unreachable", f"the lineage store is not reachable yet: {error}")
                return False
            self._schema_ready = True
            return True
        return False  # not reached: the last attempt returns

    # -- the writer thread ---------------------------------------------------------------------

    def _reset_process_state(self) -> None:
        self._buffer: deque[JobRecord] = deque()
        # Ids this writer gave a row (theirs or a placeholder), newest last: no placeholder for them.
        self._known: OrderedDict[str, None] = OrderedDict()
        # The most advanced record of each job whose records were dropped: re-delivered when the
        # store answers again, so an outage costs a job its intermediate steps, not its outcome.
        self._lost: dict[str, JobRecord] = {}
        self._gap: _Gap | None = None
        self._running: dict[str, int] = {}
        # Attempts running in forked children, and when a child last said so (monotonic).
        self._child_beats: dict[tuple[str, int], float] = {}
        self._ended: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._handing_off = False  # in a forked child with a parent that writes for it
        self._accepted = 0
        self._done = 0
        self._wake = threading.Event()
        self._progress = threading.Condition()
        # Held while this process is inside the database driver: fork waits for it (see
        # _before_fork), because SQLite's global mutexes held at fork deadlock the child.
        self._db_lock = threading.RLock()
        self._held_for_fork = False
        self._thread_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._next_heartbeat = time.monotonic() + self.heartbeat_interval
        self._last_warning: dict[str, float] = {}

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread is gone and its buffer is the parent's to write.

        With a hand-off open, the child's records go to the parent, which writes them.
        """
        self._engine.dispose(close=False)
        self._reset_process_state()
        if self._handoff is not None:
            self._handoff.forget_parent_end()
            self._handing_off = True

    def _open_handoff(self) -> None:
        """Before a fork in the writing process: the channel children will hand records through."""
        if self._closed or self._handing_off or not handoff.enabled():
            return
        if self._handoff is None:
            try:
                self._handoff = handoff.Handoff()
            except OSError as error:
                self._warn("handoff", f"forked processes will write to the store: {error}")
                return
        self._handoff.start_reading(self._take_over, self._children_alive)

    def _take_over(self, batch: Sequence[JobRecord]) -> None:
        """Records a forked child handed over: buffered like this process's own."""
        now = time.monotonic()
        for record in batch:
            key = (record.job_id, record.attempt)
            if record.kind == "started" and key not in self._ended:
                self._child_beats[key] = now
            elif record.kind == "finished":
                self._child_ended(key)
            self._buffer_record(record)

    def _children_alive(self, running: Sequence[tuple[str, int]]) -> None:
        now = time.monotonic()
        for key in running:
            if tuple(key) not in self._ended:  # a beat sent just before the attempt ended
                self._child_beats[(key[0], key[1])] = now

    def _child_ended(self, key: tuple[str, int]) -> None:
        self._child_beats.pop(key, None)
        self._ended[key] = None
        if len(self._ended) > _KNOWN_IDS:
            self._ended.popitem(last=False)

    def _start_thread(self) -> None:
        with self._thread_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="jobtrace-lineage-recorder", daemon=True
            )
            # The first record of a process is written at once: in a work horse that is the job's
            # start, on record even if the horse dies a moment later. Later ones wait for a batch.
            self._wake.set()
            self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(min(self.write_interval, self.heartbeat_interval))
            self._wake.clear()
            self._write_pending()
            if time.monotonic() >= self._next_heartbeat:
                self._heartbeat()
                if self._gap is not None and not self._handing_off:
                    with self._db_lock:  # no new record came: try the store again on our own
                        self._redeliver()

    def _write_pending(self) -> None:
        """Write the buffer in batches; called by the writer thread, or by a flush without it."""
        while self._buffer:
            with self._db_lock:
                batch: list[JobRecord] = []
                while self._buffer and len(batch) < self.batch_size:
                    batch.append(self._buffer.popleft())
                self._write_batch(batch)
            self._writer_stuck = False
            with self._progress:
                self._done += len(batch)
                self._progress.notify_all()

    def _write_batch(self, batch: Sequence[JobRecord]) -> None:
        if self._handing_off and self._handoff is not None and self._handoff.send(batch):
            self.written += len(batch)
            return
        if not self._schema_ready and not self.prepare():
            self._drop(batch)
            return
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                self._write(batch)
                self.written += len(batch)
                if self._gap is not None:
                    self._redeliver()
                return
            except (OperationalError, InterfaceError) as error:  # the store is down or busy
                if attempt == _WRITE_ATTEMPTS:
                    self._drop(batch)
                    self._warn("write", f"writing {len(batch)} lineage records failed: {error}")
                    return
                time.sleep(0.05 * attempt)
            except Exception as error:
                # A record the database refuses: write the rest without it.
                if len(batch) == 1:
                    self.dropped += 1
                    self._warn(
                        "refused", f"the lineage store refused a record of {batch[0].name}: {error}"
                    )
                    return
                half = len(batch) // 2
                self._write_batch(batch[:half])
                self._write_batch(batch[half:])
                return

    def _write(self, batch: Sequence[JobRecord]) -> None:
        known = self._known
        with suppress_instrumentation(), self._engine.begin() as conn:
            written = _merge.write(
                conn, batch, time.time(), self.heartbeat_interval, known.__contains__
            )
        for job_id in written:
            known[job_id] = None
        while len(known) > _KNOWN_IDS:
            known.popitem(last=False)

    # -- records that could not be written -------------------------------------------------------

    def _drop(self, batch: Sequence[JobRecord]) -> None:
        """Count ``batch`` as dropped, keep each job's most advanced record, open or extend a gap."""
        self.dropped += len(batch)
        now = time.time()
        gap = self._gap
        if gap is None:
            gap = self._gap = _Gap(started_at=now)
        gap.ended_at = now
        gap.dropped += len(batch)
        lost = self._lost
        for record in batch:
            kept = lost.get(record.job_id)
            if kept is None:
                if len(lost) >= _MAX_LOST_JOBS:
                    continue  # past the cap: only the gap row tells
            elif (kept.attempt, _merge.rank(kept.state.value)) > (
                record.attempt,
                _merge.rank(record.state.value),
            ):
                continue
            lost[record.job_id] = record

    def _redeliver(self) -> None:
        """The store answers again: write the kept records (marked lost) and the gap itself."""
        gap, lost = self._gap, self._lost
        if gap is None:
            return
        self._gap, self._lost = None, {}
        kept = [record._replace(kind="lost") for record in lost.values()]
        try:
            for start in range(0, len(kept), self.batch_size):
                self._write(kept[start : start + self.batch_size])
            with suppress_instrumentation(), self._engine.begin() as conn:
                conn.execute(
                    insert(_GAPS).values(
                        host=_HOST,
                        pid=os.getpid(),
                        started_at=gap.started_at,
                        ended_at=gap.ended_at,
                        records_dropped=gap.dropped,
                        jobs_redelivered=len(kept),
                    )
                )
        except Exception as error:
            self._gap, self._lost = gap, lost  # the next successful write tries again
            self._warn(
                "redeliver", f"re-delivering the records of {len(kept)} jobs failed: {error}"
            )
            return
        logger.warning(
            "jobtrace: the lineage store answers again; %d records were dropped in %.0f s, "
            "the latest record of %d jobs re-delivered (marked lost)",
            gap.dropped,
            gap.ended_at - gap.started_at,
            len(kept),
        )

    def _heartbeat(self) -> None:
        """Tell the store that the jobs running here are alive (a crashed one comes back)."""
        now_monotonic = time.monotonic()
        self._next_heartbeat = now_monotonic + self.heartbeat_interval
        running = list(self._running.items())
        if self._handing_off and self._handoff is not None:
            if running and self._handoff.beat(running):
                return  # the parent heartbeats them while this process says they run
        elif self._child_beats:
            fresh = now_monotonic - self.heartbeat_interval * _CHILD_BEATS_MISSED
            for key, seen in list(self._child_beats.items()):
                if seen >= fresh:
                    running.append(key)
                else:  # the child stopped saying so: let the reaper judge
                    self._child_beats.pop(key, None)
        if not running or not self._schema_ready:
            return
        now = time.time()
        params = [{"b_job_id": job_id, "b_attempt": attempt} for job_id, attempt in running]
        # Literals, not an IN list: an expanding parameter cannot run in an executemany.
        alive: list[ColumnElement[str]] = [
            literal_column(f"'{state.value}'") for state in _HEARTBEAT_STATES
        ]
        try:
            with self._db_lock, suppress_instrumentation(), self._engine.begin() as conn:
                for table in _TABLES:
                    conn.execute(
                        update(table)
                        .where(
                            table.c.job_id == bindparam("b_job_id"),
                            table.c.attempt == bindparam("b_attempt"),
                            or_(*(table.c.state == state for state in alive)),
                        )
                        .values(
                            heartbeat_at=now,
                            state=JobState.RUNNING.value,
                            heartbeat_interval=self.heartbeat_interval,
                        ),
                        params,
                    )
        except Exception as error:
            if _is_busy(error):  # another process holds SQLite for a moment: the next one will do
                logger.debug("jobtrace: heartbeat skipped, the store is busy", exc_info=True)
                return
            self._warn("heartbeat", f"heartbeat of {len(running)} running jobs failed: {error}")

    def _warn(self, kind: str, message: str) -> None:
        """At most one warning per kind of problem per ``WARN_EVERY`` seconds.

        A down store must not flood the logs, and one problem must not hide another: a full
        buffer does not silence a refused record.
        """
        now = time.monotonic()
        last = self._last_warning.get(kind)
        if last is not None and now - last < WARN_EVERY:
            return
        self._last_warning[kind] = now
        logger.warning("jobtrace: %s (%d records dropped so far)", message, self.dropped)

    def summary(self) -> str | None:
        """One line on what this process could not record, or ``None`` when nothing was lost."""
        pending = len(self._buffer)
        if not self.dropped and not pending:
            return None
        parts = []
        if self.dropped:
            parts.append(f"{self.dropped} lineage records were dropped")
        if self._lost:
            parts.append(f"the latest records of {len(self._lost)} jobs were never re-delivered")
        if pending:
            parts.append(f"{pending} records were still buffered")
        return "jobtrace: " + ", ".join(parts) + f" (store {safe_url(self.url)})"


@dataclass
class _Gap:
    """Records dropped by this process since the store last answered."""

    started_at: float
    ended_at: float = 0.0
    dropped: int = 0


_instances: weakref.WeakSet[Recorder] = weakref.WeakSet()
_HOST = socket.gethostname()
_KNOWN_IDS = 50_000
#: Heartbeats a child may miss telling before the parent stops heartbeating its attempts.
_CHILD_BEATS_MISSED = 2
_MAX_LOST_JOBS = 50_000


_FORK_WAIT = 5.0


def _before_fork() -> None:
    """Let a SQLite write in progress finish, so no thread is inside its driver at the fork.

    PostgreSQL's driver holds nothing a forked child could trip over (the child never uses the
    parent's connections), so a fork never waits for it: a frozen server must not hold up every
    RQ work horse. A SQLite write stuck past ``_FORK_WAIT`` is waited for once, not per fork.
    """
    for recorder in list(_instances):
        recorder._open_handoff()
        if not recorder._quiet_for_fork:
            continue
        if recorder._writer_stuck:
            recorder._held_for_fork = recorder._db_lock.acquire(blocking=False)
        else:
            recorder._held_for_fork = recorder._db_lock.acquire(timeout=_FORK_WAIT)
        if not recorder._held_for_fork:
            recorder._writer_stuck = True


def _after_fork_in_parent() -> None:
    for recorder in list(_instances):
        if recorder._held_for_fork:
            recorder._held_for_fork = False
            recorder._db_lock.release()


def _after_fork_in_child() -> None:
    for recorder in list(_instances):
        recorder._after_fork()


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)

#: What a heartbeat may turn back into ``running``: every state but an outcome the attempt itself
#: reported. This process knows the attempt runs here, so a ``queued`` or ``stalled`` row (its
#: ``started`` record was lost), a ``crashed`` one (the reaper was early) or an ``unknown`` one
#: (lost track) is wrong.
_HEARTBEAT_STATES = (
    JobState.QUEUED,
    JobState.STALLED,
    JobState.RUNNING,
    JobState.CRASHED,
    JobState.UNKNOWN,
)
_TABLES: tuple[Table, ...] = tuple(
    Base.metadata.tables[model.__tablename__] for model in (Job, Attempt)
)
_GAPS: Table = Base.metadata.tables[Gap.__tablename__]
_recorder: Recorder | None = None
_lock = threading.Lock()
_dropped_metric_provider: object | None = None


def _observe_dropped(_options: CallbackOptions) -> Iterable[Observation]:
    recorder = _recorder
    return [] if recorder is None else [Observation(recorder.dropped)]


def _register_dropped_metric() -> None:
    """``jobtrace.lineage.records.dropped``: what the store did not get, as a metric to alert on."""
    global _dropped_metric_provider
    provider = metrics.get_meter_provider()
    if provider is _dropped_metric_provider:
        return  # once per meter provider: a provider installed again counts from then on
    _dropped_metric_provider = provider
    provider.get_meter("jobtrace").create_observable_counter(
        DROPPED_METRIC,
        callbacks=[_observe_dropped],
        unit="{record}",
        description="Lineage records this process dropped because the store was slow or down.",
    )


def start_recorder(
    database_url: str | None = None,
    *,
    heartbeat_interval: float | None = None,
) -> Recorder:
    """Record every job of this process into ``database_url`` (once per process).

    Calling it again with the same store returns the running recorder; another store replaces it.

    Args:
        database_url: The store; else ``JOBTRACE_DATABASE_URL``, else the local SQLite file.
        heartbeat_interval: Seconds between heartbeats; else ``JOBTRACE_HEARTBEAT_INTERVAL``,
            else 10.
    """
    global _recorder
    url = database_url or default_url()
    if heartbeat_interval is None and os.environ.get("JOBTRACE_HEARTBEAT_INTERVAL"):
        heartbeat_interval = float(os.environ["JOBTRACE_HEARTBEAT_INTERVAL"])
    with _lock:
        current = _recorder
        if current is not None and current.url == url and not current._closed:
            if heartbeat_interval is not None:  # a later call without one keeps the chosen one
                current.heartbeat_interval = heartbeat_interval
            return current
        if current is not None:
            current.close()
        _recorder = Recorder(url, heartbeat_interval=heartbeat_interval or HEARTBEAT_INTERVAL)
        if _recorder.engine.dialect.name == "sqlite":
            # A local file: create the tables now, so a reader started next finds them. A server
            # may be slow to answer; the writer thread prepares it before its first write.
            _recorder.prepare()
        records.add_sink(_recorder)
        _register_dropped_metric()
        return _recorder


def get_recorder() -> Recorder | None:
    """The recorder of this process, if one was started."""
    return _recorder


def stop_recorder(timeout: float = 5.0) -> None:
    """Flush and stop the recorder of this process; a no-op when none runs."""
    global _recorder
    with _lock:
        current, _recorder = _recorder, None
    if current is not None:
        current.close(timeout)


@atexit.register
def _flush_at_exit() -> None:
    recorder = _recorder
    if recorder is None:
        return
    try:
        deadline = delivery.exit_deadline()  # set when configure() armed its exit handler
        budget = get_settings().exit_timeout
        if deadline is not None:
            budget = max(0.0, min(budget, deadline - time.monotonic()))
        recorder.flush(budget)
        summary = recorder.summary()
    except Exception:
        logger.warning("jobtrace: flushing lineage records at exit failed", exc_info=True)
        return
    if summary is not None:
        logger.warning("%s", summary)
