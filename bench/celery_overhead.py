"""What tracing costs per Celery task: jobtrace, python-contrib's instrumentation, and nothing.

Three real ``celery worker`` processes run side by side on a real Redis broker, one per mode, each
on a queue of its own and all with the same tasks:

* ``none``: no instrumentation;
* ``contrib``: ``opentelemetry-instrumentation-celery`` (a span per publish and per run);
* ``jobtrace``: ``instrument_celery(app)`` with what users get by default: spans, the lineage
  metadata in the headers, and lineage recording into a SQLite file (in a temporary folder).

Every process (this producer and the workers) has a ``TracerProvider`` with a
``BatchSpanProcessor`` and an exporter that drops everything, and no meter provider (both
instrumentations' metrics are no-ops). The producer is instrumented like the worker it sends to,
switched between rounds.

One round of a mode: a gate task occupies the worker; the producer sends N small tasks (each
increments a Redis counter; the last one pushes to a list the producer waits on); then the gate
opens and the worker drains the queue. Two measures per round:

* **CPU time** (the ratio's basis): user + system CPU of this producer process and of the worker's
  process group, from the first send until the background threads (span export, the lineage
  recorder) had time to finish the round's work. What instrumentation costs is CPU; wall time
  also holds the broker's latency, which on a shared machine varies more between rounds than
  contrib's whole cost.
* **wall time**: from the first send to the last completion. Holding the worker while sending keeps
  the producer's and the worker's costs from overlapping on different cores.

Modes run in interleaved rounds (their order rotating) so drift hits them alike, and the medians
are compared. The worker pool is ``solo`` by default: the task runs in the worker process itself,
so the numbers hold the instrumentation and not the pipe to a pool child. With ``--pool prefork``
(concurrency 1) contrib is instrumented in ``worker_process_init`` as its guide says, and jobtrace
flushes after each task, as it does by default in forked pool children. ``--no-record`` turns
jobtrace's lineage recording off in the producer and the workers, to tell its cost from the
tracing's. Run::

    python bench/celery_overhead.py [--tasks 2000] [--rounds 5] [--pool solo] [--no-record]

Per-task overhead is (mode's CPU time - none's CPU time) / N. The last line is
``celery_ratio_vs_contrib=<jobtrace overhead / contrib overhead>`` (CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from redis import Redis

MODES = ("none", "contrib", "jobtrace")
SETTLE = 0.6  # seconds: the recorder writes a batch every 0.2 s
BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MODE_ENV, RUN_ENV, BROKER_ENV = "BENCH_CELERY_MODE", "BENCH_CELERY_RUN", "BENCH_CELERY_BROKER"

app = Celery("celery_overhead", set_as_current=False)
_redis: Redis | None = None


class DropExporter(SpanExporter):
    """Accepts every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def configure(broker_url: str, run: str) -> None:
    """The app on ``broker_url``, every key of the run under the prefix ``<run>:``."""
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options={"global_keyprefix": f"{run}:"},
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
    )


def install_tracing() -> BatchSpanProcessor:
    """A provider as an application sets one up, its spans dropped by the exporter."""
    provider = TracerProvider()
    processor = BatchSpanProcessor(DropExporter(), max_queue_size=2**16)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return processor


def redis_client() -> Redis:
    """This process's connection for the counters (the broker's own Redis)."""
    global _redis
    if _redis is None:
        _redis = Redis.from_url(app.conf.broker_url)
    return _redis


@app.task(name="bench.tick")
def tick(key: str, total: int) -> None:
    """The measured task: count itself; the last one tells the producer."""
    client = redis_client()
    if client.incr(key) == total:
        client.rpush(f"{key}:done", 1)


@app.task(name="bench.gate")
def gate(key: str) -> None:
    """Hold the worker until the producer has sent the round's tasks."""
    client = redis_client()
    client.rpush(f"{key}:held", 1)
    client.blpop([f"{key}:open"], timeout=120)


# -- the worker side: ``celery -A celery_overhead worker`` with BENCH_CELERY_MODE set ------------


def _instrument_contrib(**kwargs: Any) -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()


def _setup_worker(mode: str, pool: str) -> None:
    """Configure this worker process for ``mode``, as an application's Celery module would."""
    configure(os.environ[BROKER_ENV], os.environ[RUN_ENV])
    install_tracing()
    if mode == "jobtrace":
        from jobtrace.integrations.celery import instrument_celery

        instrument_celery(app)  # records into JOBTRACE_DATABASE_URL
    elif mode == "contrib":
        if pool == "prefork":
            from celery.signals import worker_process_init

            worker_process_init.connect(_instrument_contrib, weak=False)
        else:
            _instrument_contrib()


if os.environ.get(MODE_ENV):
    _setup_worker(os.environ[MODE_ENV], os.environ.get("BENCH_CELERY_POOL", "solo"))


# -- the producer side ----------------------------------------------------------------------------


@dataclass
class Round:
    """One round of one mode: wall seconds sending and draining, CPU seconds on either side."""

    send: float
    drain: float
    producer_cpu: float
    worker_cpu: float

    @property
    def total(self) -> float:
        """From the first send to the last completion."""
        return self.send + self.drain

    @property
    def cpu(self) -> float:
        """CPU the round cost the producer and the worker, their background threads included."""
        return self.producer_cpu + self.worker_cpu


def group_cpu(group: int) -> float:
    """CPU seconds (user + system) used so far by the processes of one process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / tick


class Producer:
    """This process as a producer, instrumented like the worker it sends to."""

    def __init__(self, database_url: str, record: bool) -> None:
        self.database_url = database_url
        self.record = record
        self.active: Any = None

    def use(self, mode: str) -> None:
        """Uninstrument the previous mode, instrument ``mode``."""
        if self.active is not None:
            self.active.uninstrument()
            self.active = None
        if mode == "contrib":
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            self.active = CeleryInstrumentor()
            self.active.instrument()
        elif mode == "jobtrace":
            from jobtrace.integrations.celery import instrument_celery

            self.active = instrument_celery(app, database_url=self.database_url, record=self.record)


def start_worker(
    mode: str, run: str, options: argparse.Namespace, workdir: Path
) -> subprocess.Popen[bytes]:
    """A worker for ``mode`` on the queue ``bench-<mode>``, in its own process group."""
    pool = options.pool
    env = {
        **os.environ,
        MODE_ENV: mode,
        RUN_ENV: run,
        BROKER_ENV: options.broker_url,
        "BENCH_CELERY_POOL": pool,
        "JOBTRACE_DATABASE_URL": f"sqlite:///{workdir / 'lineage.db'}",
        "JOBTRACE_RECORD": "0" if options.no_record else "1",
        # This checkout's jobtrace (a worktree of another commit measures that commit).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), str(ROOT / "src"), str(ROOT)])),
    }
    command = [sys.executable, "-m", "celery", "-A", "celery_overhead", "worker"]
    command += ["-Q", f"bench-{mode}", "-n", f"{mode}-{run}@%h", f"--pool={pool}"]
    command += ["--concurrency=1", "--loglevel=WARNING"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with (workdir / f"worker-{mode}.log").open("wb") as log:
        return subprocess.Popen(
            command,
            env=env,
            cwd=BENCH_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown of the worker's process group; SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def one_round(mode: str, tasks: int, run: str, number: int, worker: int) -> Round:
    """Hold the worker, send ``tasks`` ticks, open the gate, wait for the last one.

    CPU is read from the start of the sends until the background writers had time to write the
    round's records (``SETTLE`` seconds after the last task), in this process and in the worker's
    process group.
    """
    client = redis_client()
    key = f"{run}:count:{mode}:{number}"
    queue = f"bench-{mode}"
    gate.apply_async((key,), queue=queue)
    if client.blpop([f"{key}:held"], timeout=120) is None:
        raise TimeoutError(f"the {mode} worker did not pick up its gate task")
    producer_cpu, worker_cpu = time.process_time(), group_cpu(worker)
    started = time.perf_counter()
    for _ in range(tasks):
        tick.apply_async((key, tasks), queue=queue)
    sent = time.perf_counter()
    client.rpush(f"{key}:open", 1)
    if client.blpop([f"{key}:done"], timeout=300) is None:
        raise TimeoutError(f"the {mode} worker did not finish round {number}")
    done = time.perf_counter()
    time.sleep(SETTLE)
    return Round(
        send=sent - started,
        drain=done - sent,
        producer_cpu=time.process_time() - producer_cpu,
        worker_cpu=group_cpu(worker) - worker_cpu,
    )


def measure(
    producer: Producer, tasks: int, rounds: int, run: str, workers: dict[str, int]
) -> dict[str, tuple[float, float, float, float, float, float]]:
    """Median (send, drain, total, producer CPU, worker CPU, CPU) seconds per mode.

    Rounds are interleaved, their order rotating.
    """
    for mode in MODES:  # warm up the workers, the connections and the lineage tables
        producer.use(mode)
        one_round(mode, max(1, tasks // 10), run, -1, workers[mode])
    samples: dict[str, list[Round]] = {mode: [] for mode in MODES}
    for number in range(rounds):
        order = MODES[number % len(MODES) :] + MODES[: number % len(MODES)]
        for mode in order:
            producer.use(mode)
            samples[mode].append(one_round(mode, tasks, run, number, workers[mode]))
    producer.use("none")
    return {
        mode: (
            statistics.median(r.send for r in rs),
            statistics.median(r.drain for r in rs),
            statistics.median(r.total for r in rs),
            statistics.median(r.producer_cpu for r in rs),
            statistics.median(r.worker_cpu for r in rs),
            statistics.median(r.cpu for r in rs),
        )
        for mode, rs in samples.items()
    }


def main() -> None:
    """Print per-task microseconds for each mode and its overhead, then the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per round (2000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per mode (5)")
    parser.add_argument("--pool", choices=("solo", "prefork"), default="solo")
    parser.add_argument(
        "--no-record", action="store_true", help="jobtrace without lineage recording (to compare)"
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    options = parser.parse_args()
    run = f"bench-celery-{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="celery-overhead-"))
    configure(options.broker_url, run)
    processor = install_tracing()
    producer = Producer(f"sqlite:///{workdir / 'lineage.db'}", record=not options.no_record)
    workers = {mode: start_worker(mode, run, options, workdir) for mode in MODES}
    try:
        groups = {mode: worker.pid for mode, worker in workers.items()}
        results = measure(producer, options.tasks, options.rounds, run, groups)
    finally:
        for worker in workers.values():
            stop_worker(worker)
        client = redis_client()
        keys = list(client.scan_iter(match=f"{run}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        app.close()
        processor.shutdown()  # type: ignore[no-untyped-call]
        shutil.rmtree(workdir, ignore_errors=True)

    per_task = {
        mode: tuple(s / options.tasks * 1e6 for s in values) for mode, values in results.items()
    }
    print(
        f"{options.tasks} tasks x {options.rounds} rounds, pool {options.pool}, Redis broker,"
        f" lineage recording {'off' if options.no_record else 'on'}; medians in us per task"
    )
    base = per_task["none"]
    print("wall time (send: producer, run: worker draining its queue; includes the broker):")
    for mode in MODES:
        send, drain, total = per_task[mode][:3]
        line = f"{mode:>9}: send {send:7.1f} | run {drain:7.1f} | total {total:7.1f}"
        if mode != "none":
            line += f" | overhead {total - base[2]:+7.1f}"
        print(line)
    print("CPU time (producer and worker processes, their background threads included):")
    for mode in MODES:
        producer_cpu, worker_cpu, cpu = per_task[mode][3:]
        line = (
            f"{mode:>9}: producer {producer_cpu:7.1f} | worker {worker_cpu:7.1f} | total {cpu:7.1f}"
        )
        if mode != "none":
            line += (
                f" | overhead {cpu - base[5]:+7.1f} (producer {producer_cpu - base[3]:+.1f},"
                f" worker {worker_cpu - base[4]:+.1f})"
            )
        print(line)
    contrib = per_task["contrib"][5] - base[5]
    jobtrace_overhead = per_task["jobtrace"][5] - base[5]
    ratio = jobtrace_overhead / contrib if contrib > 0 else float("nan")
    print(f"celery_ratio_vs_contrib={ratio:.3f}")


if __name__ == "__main__":
    main()
