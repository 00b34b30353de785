"""Getting spans, metrics and lineage records out without making a job wait.

A flush has one deadline that spans, metrics and records share: the span and metric flushes run on
helper threads while the records flush waits in the caller, and whatever is not done by the
deadline finishes (or fails) in the background. A failed or timed-out export puts its signal in
back-off: job ends skip it for 5 s, then 10, 20, up to a minute, while the batch processor keeps
its spans queued and its own thread keeps trying; the first export that goes through ends the
back-off. The providers jobtrace installs are shut down at exit within ``exit_timeout``, with one
line on what did not go out.

The back-off state and the counters live in memory shared with forked children (an anonymous
``mmap`` made at import): RQ's work horse lives for one job, so what one horse learnt about a
broken exporter must reach the next one, and what the horses counted must reach the parent that
reports it.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import mmap
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from jobtrace import records
from jobtrace._internal import forkchannel
from jobtrace._internal.config import get_settings
from jobtrace._version import __version__

logger = logging.getLogger("jobtrace")

Signal = Literal["traces", "metrics", "records"]
SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "records")
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 60.0
WARN_EVERY = 30.0
FAILED_EXPORTS_METRIC = "jobtrace.telemetry.exports.failed"
SIGNAL_ATTRIBUTE = "jobtrace.telemetry.signal"

# Per signal: failures in a row, when job ends try again (monotonic), failed exports, skipped
# flushes. Then, per signal and problem, when it was last warned about.
_STREAK, _RETRY_AT, _FAILED, _SKIPPED = range(4)
_FIELDS = 4
_PROBLEMS = ("failed", "timeout")


@dataclass(frozen=True)
class TelemetryStatus:
    """What jobtrace could not deliver so far: this process's and its forked children's.

    Attributes:
        failed_exports: Span and metric exports that failed or did not finish within the budget.
        skipped_flushes: Flushes at a job's end skipped because an exporter or the store was
            backing off after a failure (a forked work horse loses what it did not flush).
        records_dropped: Lineage records this process's recorder dropped.
        backing_off: What job ends skip right now: ``"traces"``, ``"metrics"``, ``"records"``.
    """

    failed_exports: int
    skipped_flushes: int
    records_dropped: int
    backing_off: tuple[str, ...]


class _Board:
    """Back-off state and counters, shared by this process and every process forked from it."""

    def __init__(self) -> None:
        size = len(SIGNALS) * (_FIELDS + len(_PROBLEMS))
        self.owner = os.getpid()
        self._cells: ctypes.Array[ctypes.c_double] | list[float]
        try:
            self._map = mmap.mmap(-1, size * ctypes.sizeof(ctypes.c_double))
            self._cells = (ctypes.c_double * size).from_buffer(self._map)
        except (OSError, ValueError, TypeError, BufferError):  # no shared memory: this process only
            self._cells = [0.0] * size

    def _at(self, signal: Signal, field: int) -> int:
        return SIGNALS.index(signal) * _FIELDS + field

    def get(self, signal: Signal, field: int) -> float:
        return float(self._cells[self._at(signal, field)])

    def add(self, signal: Signal, field: int, amount: float = 1.0) -> None:
        # Not atomic across processes: two increments at the same instant may count once.
        index = self._at(signal, field)
        self._cells[index] = self._cells[index] + amount

    def set(self, signal: Signal, field: int, value: float) -> None:
        self._cells[self._at(signal, field)] = value

    def may_warn(self, signal: Signal, problem: str, now: float) -> bool:
        """Whether this kind of problem was not warned about in the last ``WARN_EVERY`` seconds."""
        index = len(SIGNALS) * _FIELDS + SIGNALS.index(signal) * len(_PROBLEMS)
        index += _PROBLEMS.index(problem)
        last = float(self._cells[index])
        if last and now - last < WARN_EVERY:
            return False
        self._cells[index] = now
        return True

    def reset(self) -> None:
        for index in range(len(self._cells)):
            self._cells[index] = 0.0


_board = _Board()


class _ProcessState:
    """What only this process knows: its own spans, flushes in progress, the last errors."""

    def __init__(self) -> None:
        self.spans_ended = 0
        self.spans_exported = 0
        self.in_flight: dict[int, _Flush] = {}
        self.last_error: dict[str, str] = {}
        self.summarised = False


_process = _ProcessState()


def _after_fork_in_child() -> None:
    global _process
    _process = _ProcessState()  # the parent's spans and helper threads are the parent's


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- back-off ---------------------------------------------------------------------------------


def ready(signal: Signal) -> bool:
    """Whether job ends should try ``signal`` now (it is not backing off)."""
    return time.monotonic() >= _board.get(signal, _RETRY_AT)


def report_failure(signal: Signal, problem: str, detail: str) -> None:
    """An export or flush of ``signal`` failed (``problem``: ``failed`` or ``timeout``): back off."""
    streak = _board.get(signal, _STREAK) + 1
    _board.set(signal, _STREAK, streak)
    backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(streak - 1, 16))
    now = time.monotonic()
    _board.set(signal, _RETRY_AT, now + backoff)
    if signal != "records":
        _board.add(signal, _FAILED)
    _process.last_error[signal] = detail
    register_metric()
    if _board.may_warn(signal, problem, now):
        logger.warning(
            "jobtrace: %s (%d failed exports so far); job ends skip %s for %.0f s",
            detail,
            _failed_exports(),
            "lineage records" if signal == "records" else signal,
            backoff,
        )


def report_success(signal: Signal) -> None:
    """``signal`` went out: the back-off ends."""
    if not _board.get(signal, _STREAK):
        return
    _board.set(signal, _STREAK, 0.0)
    _board.set(signal, _RETRY_AT, 0.0)
    logger.warning(
        "jobtrace: %s go out again (%d failed exports so far)", signal, _failed_exports()
    )


def _failed_exports() -> int:
    return int(_board.get("traces", _FAILED) + _board.get("metrics", _FAILED))


# -- flushing ---------------------------------------------------------------------------------


class _Flush:
    """One provider's ``force_flush`` on a helper thread, so the caller can stop waiting."""

    def __init__(self, provider: object, signal: Signal, millis: int) -> None:
        self.provider = provider
        self.signal = signal
        self.done = threading.Event()
        self.ok = True
        self.failed_before = _board.get(signal, _FAILED)
        self._millis = millis
        threading.Thread(target=self._run, name="jobtrace-flush", daemon=True).start()

    def _run(self) -> None:
        try:
            self.ok = self.provider.force_flush(self._millis) is not False  # type: ignore[attr-defined]
        except Exception as error:
            self.ok = False
            report_failure(self.signal, "failed", f"flushing {self.provider!r} raised {error!r}")
        finally:
            self.done.set()


def _targets(providers: Iterable[object]) -> list[tuple[object, Signal]]:
    found: list[tuple[object, Signal]] = [(trace.get_tracer_provider(), "traces")]
    # A forked child that hands its measurements to its parent has none of its own to export.
    if not forkchannel.handed_off("metrics"):
        found.append((metrics.get_meter_provider(), "metrics"))
    for provider in providers:
        if provider is None or any(provider is known for known, _ in found):
            continue
        found.append(
            (provider, "traces" if isinstance(provider, trace.TracerProvider) else "metrics")
        )
    return [(p, s) for p, s in found if getattr(p, "force_flush", None) is not None]


def _start(provider: object, signal: Signal, millis: int) -> _Flush | None:
    """A flush of ``provider`` on a helper thread; ``None`` when ``signal`` is backing off."""
    if not ready(signal):
        _board.add(signal, _SKIPPED)
        return None
    running = _process.in_flight.get(id(provider))
    if running is not None and not running.done.is_set():
        _board.add(signal, _SKIPPED)  # the last one is still stuck in the exporter
        return None
    try:
        started = _Flush(provider, signal, millis)
    except RuntimeError:  # no new threads (the interpreter is shutting down)
        _board.add(signal, _SKIPPED)
        return None
    _process.in_flight[id(provider)] = started
    return started


def _flush_records(deadline: float, what: str) -> None:
    """The lineage records, in the caller, until ``deadline``; a timeout backs records off."""
    if not records.has_sinks():
        return
    if not ready("records"):
        _board.add("records", _SKIPPED)
        return
    left = deadline - time.monotonic()
    if left <= 0:
        return
    started = time.monotonic()
    records.flush(left)
    if time.monotonic() - started >= left:
        report_failure(
            "records", "timeout", f"writing the lineage records at {what} took over {left:.1f} s"
        )


def _wait(flushes: Sequence[_Flush], deadline: float, what: str, budget: float) -> list[_Flush]:
    """Wait for ``flushes`` until ``deadline``; the ones not done are failures (and returned)."""
    late = []
    for running in flushes:
        running.done.wait(max(0.0, deadline - time.monotonic()))
        if not running.done.is_set():
            late.append(running)
            report_failure(
                running.signal,
                "timeout",
                f"exporting {running.signal} at {what} took over {budget:g} s",
            )
        elif not running.ok:
            if _board.get(running.signal, _FAILED) == running.failed_before:
                report_failure(
                    running.signal, "failed", f"flushing {running.signal} at {what} failed"
                )
        elif not is_adopted(running.provider):
            # A provider of the application's: done in time is all there is to know. Jobtrace's
            # own report every export themselves (an empty queue exports nothing, proves nothing).
            report_success(running.signal)
    return late


def flush(timeout: float, providers: Iterable[object] = ()) -> None:
    """Push out spans, metrics and records, all within ``timeout``; never raises.

    Args:
        timeout: Seconds, shared by the three signals.
        providers: Tracer and meter providers to flush besides the global ones (``None`` skipped).
    """
    try:
        deadline = time.monotonic() + max(0.0, timeout)
        millis = max(1, int(timeout * 1000))
        started = [
            running
            for provider, signal in _targets(providers)
            if (running := _start(provider, signal, millis)) is not None
        ]
        _flush_records(deadline, "a job's end")
        _wait(started, deadline, "a job's end", timeout)
    except Exception:
        logger.warning("jobtrace: flushing telemetry failed", exc_info=True)


# -- the exporters and providers jobtrace makes ---------------------------------------------------


_Exporter = TypeVar("_Exporter")


def watch_exporter(exporter: _Exporter, signal: Signal) -> _Exporter:
    """Make ``exporter`` (span or metric) report its results: failures back off, success ends it.

    Its ``export`` is wrapped on the instance, so its type (and everything that looks at it) stays.
    Its repeated log lines are rate-limited too, one per kind every ``WARN_EVERY`` seconds.
    """
    inner: Callable[..., Any] = exporter.export  # type: ignore[attr-defined]

    def export(batch: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = inner(batch, *args, **kwargs)
        except Exception as error:
            report_failure(signal, "failed", f"exporting {signal} raised {error!r}")
            raise
        if getattr(result, "name", None) == "SUCCESS":
            if signal == "traces":
                _process.spans_exported += len(batch)
            report_success(signal)
        else:
            report_failure(signal, "failed", f"exporting {signal} failed ({_cause(exporter)})")
        return result

    setattr(exporter, "export", export)  # noqa: B010 - on the instance, the type stays
    for name in {type(exporter).__module__, *_EXPORTER_LOGGERS}:
        exporter_logger = logging.getLogger(name)
        if not any(isinstance(f, _RepeatFilter) for f in exporter_logger.filters):
            exporter_logger.addFilter(_RepeatFilter())
    return exporter


def _cause(exporter: object) -> str:
    endpoint = getattr(getattr(exporter, "_client", exporter), "_endpoint", None)
    return f"endpoint {endpoint}" if isinstance(endpoint, str) else type(exporter).__name__


# Where the OTLP exporters log each failed attempt (the HTTP client, the gRPC base exporter).
_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
)


class _RepeatFilter(logging.Filter):
    """One record per message template every ``WARN_EVERY`` seconds: an outage is not a flood."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[object, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = (record.levelno, record.msg)
        last = self._last.get(key)
        if last is not None and now - last < WARN_EVERY:
            return False
        self._last[key] = now
        return True


class SpanTally(SpanProcessor):
    """Counts the spans a jobtrace-made provider ended, to tell at exit how many never went out."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        _process.spans_ended += 1

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_own: list[tuple[object, Signal]] = []  # still to shut down at exit
_adopted: list[object] = []
_exit_registered = False


def adopt(provider: object, signal: Signal) -> None:
    """Shut ``provider`` (installed by jobtrace, without the SDK's exit hook) down at exit, bounded."""
    _own.append((provider, signal))
    _adopted.append(provider)


def is_adopted(provider: object) -> bool:
    """Whether jobtrace installed ``provider`` (``configure()``) and shuts it down at exit."""
    return any(provider is known for known in _adopted)


def arm_exit() -> None:
    """Register the exit handler (again last, so it runs before the recorder's own)."""
    global _exit_registered
    if _exit_registered:
        atexit.unregister(_at_exit)
    atexit.register(_at_exit)
    _exit_registered = True


_exit_deadline: float | None = None


def exit_deadline() -> float | None:
    """When the exit budget runs out (monotonic), once the exit handler began; else ``None``.

    The lineage recorder's own exit flush runs after this one and waits only for what is left,
    so a hung store costs the exit one budget, not two.
    """
    return _exit_deadline


def _at_exit() -> None:
    global _exit_deadline
    timeout = get_settings().exit_timeout
    _exit_deadline = time.monotonic() + timeout
    shutdown(timeout)


def _shutdown_provider(provider: object, millis: int) -> bool:
    try:
        provider.shutdown(timeout_millis=millis)  # type: ignore[attr-defined]
    except TypeError:
        provider.shutdown()  # type: ignore[attr-defined]  # TracerProvider takes no timeout
    return True


class _Shutdown(_Flush):
    """A provider's shutdown on a helper thread (it exports what is left, then stops)."""

    def _run(self) -> None:
        try:
            _shutdown_provider(self.provider, self._millis)
        except Exception as error:
            self.ok = False
            report_failure(
                self.signal, "failed", f"shutting {self.provider!r} down raised {error!r}"
            )
        finally:
            self.done.set()


def shutdown(timeout: float) -> str | None:
    """Shut jobtrace's providers down and flush the records, all within ``timeout``; never raises.

    Returns the one line said about what was not delivered (``None`` when everything went out).
    A signal that is backing off is not tried: its spans are counted as not exported.
    """
    try:
        deadline = time.monotonic() + max(0.0, timeout)
        millis = max(1, int(timeout * 1000))
        forkchannel.drain()  # what children sent and was not read yet goes out with the rest
        own, _own[:] = list(_own), []
        started: list[_Flush] = []
        skipped: set[str] = set()
        for provider, signal in own:
            if not ready(signal):
                skipped.add(signal)
                continue
            try:
                started.append(_Shutdown(provider, signal, millis))
            except RuntimeError:
                skipped.add(signal)
        _flush_records(deadline, "exit")
        late = _wait(started, deadline, "exit", timeout)
        failed = {running.signal for running in started if not running.ok}
        return _summarise(
            {"traces", "metrics"} & {s for _, s in own},
            skipped | {running.signal for running in late} | failed,
            timeout if late else None,
        )
    except Exception:
        logger.warning("jobtrace: shutting telemetry down failed", exc_info=True)
        return None


def _summarise(signals: set[str], undelivered: set[str], gave_up: float | None) -> str | None:
    """One line, once per process, on what did not go out; ``None`` when nothing was lost."""
    parts = []
    lost_spans = _process.spans_ended - _process.spans_exported
    if "traces" in signals and lost_spans > 0:
        parts.append(f"{lost_spans} spans were not exported")
    if "metrics" in signals and "metrics" in undelivered:
        parts.append("the last metrics were not exported")
    skipped = int(_board.get("traces", _SKIPPED) + _board.get("metrics", _SKIPPED))
    if parts and skipped:
        parts.append(f"{skipped} job ends skipped their flush while backing off")
    if not parts or _process.summarised:
        return None
    _process.summarised = True
    why = [f"{signal}: {error}" for signal, error in sorted(_process.last_error.items())]
    if gave_up is not None:
        why.append(f"gave up waiting after {gave_up:g} s")
    line = "jobtrace: " + ", ".join(parts)
    if why:
        line += " (" + "; ".join(why) + ")"
    logger.warning("%s", line)
    return line


# -- reading it back --------------------------------------------------------------------------


def telemetry_status() -> TelemetryStatus:
    """What jobtrace could not deliver so far, and what it is backing off from now.

    Counts this process and the processes forked from it (RQ work horses, prefork children).
    """
    recorder_module = sys.modules.get("jobtrace.lineage.recorder")
    recorder = getattr(recorder_module, "get_recorder", lambda: None)()
    return TelemetryStatus(
        failed_exports=_failed_exports(),
        skipped_flushes=int(sum(_board.get(signal, _SKIPPED) for signal in SIGNALS)),
        records_dropped=int(getattr(recorder, "dropped", 0)),
        backing_off=tuple(signal for signal in SIGNALS if not ready(signal)),
    )


_metric_providers: list[object] = []


def _observe_failed(_options: CallbackOptions) -> Iterable[Observation]:
    if os.getpid() != _board.owner:
        return []  # a forked child's failures are on the shared board: its parent reports them
    return [
        Observation(int(_board.get(signal, _FAILED)), {SIGNAL_ATTRIBUTE: signal})
        for signal in ("traces", "metrics")
    ]


def register_metric() -> None:
    """``jobtrace.telemetry.exports.failed`` on the global meter provider (once per provider)."""
    provider = metrics.get_meter_provider()
    if any(provider is known for known in _metric_providers):
        return
    if type(provider).__name__ == "_ProxyMeterProvider":
        return  # the API's placeholder: registered once a real provider is installed
    _metric_providers.append(provider)
    try:
        provider.get_meter("jobtrace", __version__).create_observable_counter(
            FAILED_EXPORTS_METRIC,
            callbacks=[_observe_failed],
            unit="{export}",
            description="Span and metric exports that failed or ran out of time, by signal.",
        )
    except Exception:
        logger.warning("jobtrace: the failed-exports metric is not available", exc_info=True)


def reset() -> None:
    """Forget every failure, count and provider: for tests."""
    global _process, _exit_deadline
    _exit_deadline = None
    _board.reset()
    _process = _ProcessState()
    _own.clear()
    _adopted.clear()
