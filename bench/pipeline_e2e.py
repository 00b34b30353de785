"""What tracing costs a whole pipeline, end to end, on real Celery and RQ workers and a real Redis.

One pipeline is 4 levels: 1 root job sends P page jobs, each page D detail jobs, each detail I
processing jobs (``--jobs`` picks P = D = round(jobs ** 1/3) and the smallest I that makes at least
that many; 500 gives 1 + 8 + 64 + 448 = 521). Each job sends its children, then counts itself with
an INCR on a Redis key (the last one pushes to a list the producer waits on). The time of a round
is the wall time from the root's enqueue until the last job is done (for RQ also: no job left in
the queue's started registry, so the last work horse's own flush is inside it).

Workers, all started by this script as subprocesses, warm (one small pipeline first), each mode
on a queue of its own, on the Redis database of ``--redis-url`` (default 12, which no test uses):

* Celery: one ``celery worker`` per mode, pool ``prefork``, ``--concurrency`` children (2);
* RQ: ``--concurrency`` (2) ``rq worker`` processes per mode, RQ's forking ``Worker`` (a work
  horse per job).

Modes:

* ``bare``: no instrumentation;
* ``contrib`` (Celery only): ``opentelemetry-instrumentation-celery``, in ``worker_process_init``;
* ``spans``: jobtrace with ``JOBTRACE_RECORD=0`` (spans, metrics, metadata; no lineage store);
* ``lineage``: jobtrace as users get it by default, lineage recorded into a SQLite file (in a
  temporary folder, one per system and mode).

jobtrace is set up in the worker with its public API (``jobtrace.configure()`` and
``instrument_celery(app)`` / ``instrument_rq()`` with the worker class of
``docs/integrations/rq.md``; modules ``bench/e2e_celery.py``, ``bench/e2e_rq.py``). Every worker has a
``TracerProvider`` with a ``BatchSpanProcessor`` and a ``MeterProvider`` with a periodic reader,
their exporters dropping everything in process: the export path is paid, no network is needed.
The producer (this process) only enqueues the root and is not instrumented: the root job starts
its own trace, as a job from an uninstrumented producer does.

Rounds are interleaved (every mode once per round, the order rotating) so drift hits the modes
alike. Per round, each mode's time is divided by ``bare``'s (and by ``contrib``'s) of the same
round; the figures are the medians of those ratios, printed with min / median / max. CPU time of
each mode's worker processes (work horses included, once reaped) is printed beside it.

``--exporter-down`` (RQ): jobtrace with lineage, its OTLP exporters set up by
``jobtrace.configure()`` from ``OTEL_EXPORTER_OTLP_ENDPOINT``, once towards a closed port
(``http://127.0.0.1:1``, ``down``) and once towards a stub OTLP/HTTP receiver in this process that
answers 200 to everything (``healthy``). Its figure is the extra worker time per job,
``(down wall - healthy wall) * workers / jobs`` in milliseconds, per round; below zero when a job
whose export is skipped (the exporter known to be down) costs less than one that exports. The
median ``perform()`` of the jobs (from RQ's ``started_at`` / ``ended_at``, flush included) is printed
beside it. A round that runs out of ``--timeout`` gives an estimate from the jobs done so far.

``--celery-no-flush`` instruments Celery's jobtrace workers with ``flush_on_job_end=False``, to
tell the share of the flush after each task (on by default in prefork children) from the rest.
``--profile DIR`` runs every RQ work horse and Celery pool child under cProfile and prints, per
mode, where their time went (ms per job); profiling slows them, so such a run's ratios are not
the figures. The header names the commit and a digest of ``src/`` as measured. The database
must hold no RQ keys when the run starts; the run deletes its own (the prefix's and ``rq:*``).

Run::

    python bench/pipeline_e2e.py [--jobs 500] [--rounds 3] [--systems celery,rq]
    python bench/pipeline_e2e.py --exporter-down [--jobs 500] [--rounds 3]
    python bench/pipeline_e2e.py --rounds 1 --profile /tmp/e2e-profile

The last line is ``e2e_celery_vs_bare=<x> e2e_celery_vs_contrib=<y> e2e_rq_vs_bare=<z>``
(jobtrace with lineage, medians of per-round ratios), or ``exporter_down_ms_per_job=<x>``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import pstats
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import e2e_common  # the worker modules import it by this name too, from bench/
from e2e_common import (
    MODE_ENV,
    NO_FLUSH_ENV,
    PREFIX_ENV,
    PROFILE_ENV,
    QUEUE_ENV,
    REDIS_ENV,
    shape_for,
    total_jobs,
)
from redis import Redis

BENCH_DIR = Path(__file__).resolve().parent

MODES = {"celery": ("bare", "contrib", "spans", "lineage"), "rq": ("bare", "spans", "lineage")}
DOWN_MODES = ("healthy", "down")
CLOSED_ENDPOINT = "http://127.0.0.1:1"
WARM_SHAPE = (2, 2, 2)  # 15 jobs: the workers are up, connections and tables made
DOWN_WARM_SHAPE = (1, 1, 1)  # 4 jobs: with today's stalls a job towards a closed port takes seconds
SETTLE = 0.5  # seconds after a round: reaped horses, the recorder's 0.2 s batches, in the CPU


class RoundTimeout(TimeoutError):
    """A round that did not finish in time: how far it got."""

    def __init__(self, message: str, mode: str, elapsed: float, done: int) -> None:
        super().__init__(message)
        self.mode = mode
        self.elapsed = elapsed
        self.done = done


@dataclass
class Round:
    """One round of one mode: wall seconds, CPU seconds of its workers, RQ's job durations."""

    wall: float
    cpu: float
    main_cpu: float = 0.0
    job_ms: list[float] = field(default_factory=list)


def spread(values: Sequence[float], digits: int = 3) -> str:
    """``min / median / max`` of ``values``."""
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low:.{digits}f} / {mid:.{digits}f} / {high:.{digits}f}"


def src_state() -> str:
    """The commit and a digest of ``src/`` as it is on disk: runs against the same code compare."""
    root = BENCH_DIR.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "?", []
    digest = hashlib.sha1()
    for path in sorted((root / "src").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    changes = f" + {len(dirty)} uncommitted files" if dirty else ""
    return f"{commit}{changes}, src digest {digest.hexdigest()[:10]}"


def load() -> str:
    """The 1, 5 and 15 minute load averages (2 cores: above 2 means waiting for CPU)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def session_cpu(session: int) -> tuple[float, float]:
    """CPU seconds of one session: its leader (the worker's main process), and the rest.

    The rest is the pool children, or RQ's work horses once reaped (their parent's ``cutime``).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    leader = rest = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) != session:
            continue
        utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
        if int(entry.name) == session:
            leader += utime + stime
            rest += cutime + cstime
        else:
            rest += utime + stime + cutime + cstime
    return leader / ticks, rest / ticks


def kill_session(session: int) -> None:
    """SIGKILL what is left of a worker started by this script: the processes of its session."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile


class OTLPStub(http.server.BaseHTTPRequestHandler):
    """A healthy OTLP/HTTP receiver: reads the request, answers 200 with an empty response."""

    protocol_version = "HTTP/1.1"  # keep-alive, as a Collector does

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


class Bench:
    """The workers of one system, the producer's side of a round, and the Redis keys of a run."""

    def __init__(self, options: argparse.Namespace, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.prefix = f"bench-e2e-{uuid.uuid4().hex[:8]}"
        self.client = Redis.from_url(options.redis_url)
        self.workers: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.endpoints: dict[str, str] = {}
        self.samples: dict[str, list[Round]] = {}
        os.environ[REDIS_ENV] = options.redis_url  # e2e_common.redis_client() in this process
        import e2e_celery

        e2e_celery.configure_app(options.redis_url, self.prefix)

    # -- workers ---------------------------------------------------------------------------------

    def queue(self, system: str, mode: str) -> str:
        return f"{self.prefix}-{system}-{mode}"

    def env(self, system: str, mode: str) -> dict[str, str]:
        """A worker's environment: the mode, the keys, its own lineage store."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
        env.pop(MODE_ENV, None)
        env.update(
            {
                MODE_ENV: mode,
                REDIS_ENV: self.options.redis_url,
                QUEUE_ENV: self.queue(system, mode),
                PREFIX_ENV: self.prefix,
                "JOBTRACE_RECORD": "0" if mode == "spans" else "1",
                "JOBTRACE_DATABASE_URL": f"sqlite:///{self.store(system, mode)}",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])
                ),
            }
        )
        if mode in self.endpoints:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.endpoints[mode]
        if self.options.celery_no_flush and system == "celery":
            env[NO_FLUSH_ENV] = "1"
        if self.options.profile:
            folder = self.profile_dir(system, mode)
            folder.mkdir(parents=True, exist_ok=True)
            env[PROFILE_ENV] = str(folder)
        return env

    def profile_dir(self, system: str, mode: str) -> Path:
        return Path(self.options.profile).resolve() / f"{system}-{mode}"

    def store(self, system: str, mode: str) -> Path:
        return self.workdir / f"lineage-{system}-{mode}.db"

    def start(self, system: str, modes: Sequence[str]) -> None:
        """Start the workers of every mode of ``system``, each in a session of its own."""
        for mode in modes:
            concurrency = self.options.concurrency
            if system == "celery":
                commands = [
                    [
                        *(sys.executable, "-m", "celery", "-A", "e2e_celery", "worker"),
                        *("-Q", self.queue(system, mode), "-n", f"{mode}-{self.prefix}@%h"),
                        *("--pool=prefork", f"--concurrency={concurrency}", "--loglevel=WARNING"),
                        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
                    ]
                ]
            else:
                commands = [
                    [
                        *(
                            sys.executable,
                            "-m",
                            "rq.cli",
                            "worker",
                            "--url",
                            self.options.redis_url,
                        ),
                        *("--worker-class", "e2e_rq.Worker", "--name", f"{self.prefix}-{mode}-{n}"),
                        *("--logging_level", "WARNING", self.queue(system, mode)),
                    ]
                    for n in range(concurrency)
                ]
            self.workers[mode] = []
            for number, command in enumerate(commands):
                log = (self.workdir / f"{system}-{mode}-{number}.log").open("wb")
                with log:
                    self.workers[mode].append(
                        subprocess.Popen(
                            command,
                            env=self.env(system, mode),
                            cwd=BENCH_DIR,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )

    def stop(self) -> None:
        """Warm shutdown of every worker's session; SIGKILL for one that lingers."""
        for processes in self.workers.values():
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
        for processes in self.workers.values():
            for process in processes:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    kill_session(process.pid)  # RQ's horses have process groups of their own
                    process.wait(5)
                kill_session(process.pid)  # a horse left behind by its worker
        self.workers = {}

    def cpu(self, mode: str) -> tuple[float, float]:
        """CPU seconds of the mode's workers: main processes, pool children or horses."""
        parts = [session_cpu(process.pid) for process in self.workers[mode]]
        return sum(part[0] for part in parts), sum(part[1] for part in parts)

    def check_alive(self, mode: str) -> None:
        for process in self.workers[mode]:
            if process.poll() is not None:
                raise RuntimeError(f"a {mode} worker exited ({process.returncode}); see its log")

    # -- one round ------------------------------------------------------------------------------

    def send_root(self, system: str, mode: str, key: str, shape: Sequence[int]) -> None:
        queue = self.queue(system, mode)
        if system == "celery":
            import e2e_celery

            e2e_celery.root.apply_async((key, list(shape)), e2e_common.JOB_KWARGS, queue=queue)
        else:
            import e2e_rq
            from rq import Queue

            Queue(queue, connection=self.client).enqueue(
                e2e_rq.root, key, list(shape), **e2e_common.JOB_KWARGS
            )

    def one_round(
        self, system: str, mode: str, key: str, shape: Sequence[int], timeout: float
    ) -> Round:
        """Send the root, wait for the last job, read the CPU after the background work settled."""
        self.check_alive(mode)
        cpu = self.cpu(mode)
        started = time.perf_counter()
        self.send_root(system, mode, key, shape)
        deadline = started + timeout
        while self.client.blpop([f"{key}:done"], timeout=1) is None:
            self.check_alive(mode)
            if time.perf_counter() > deadline:
                done = int(self.client.get(key) or 0)
                raise RoundTimeout(
                    f"{system} {mode}: {done} of {total_jobs(shape)} jobs done in {timeout} s",
                    mode,
                    time.perf_counter() - started,
                    done,
                )
        if system == "rq":
            from rq.registry import StartedJobRegistry

            registry = StartedJobRegistry(self.queue(system, mode), connection=self.client)
            while registry.get_job_count(cleanup=False) and time.perf_counter() < deadline:
                time.sleep(0.002)
        wall = time.perf_counter() - started
        time.sleep(SETTLE)
        main, children = self.cpu(mode)
        result = Round(wall=wall, cpu=main + children - sum(cpu), main_cpu=main - cpu[0])
        if system == "rq":
            result.job_ms = self.job_durations(key)
        return result

    def job_durations(self, key: str) -> list[float]:
        """Each RQ job's ``ended_at - started_at`` (the horse's ``perform``, flush included), ms."""
        ids = [value.decode() for value in self.client.lrange(f"{key}:ids", 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"rq:job:{job_id}", ["started_at", "ended_at"])
        durations = []
        for started, ended in pipe.execute():
            if started and ended:
                begin = datetime.fromisoformat(started.decode())
                end = datetime.fromisoformat(ended.decode())
                durations.append((end - begin).total_seconds() * 1000)
        return durations

    def measure(
        self, system: str, modes: Sequence[str], warm: Sequence[int] = WARM_SHAPE
    ) -> dict[str, list[Round]]:
        """Warm every mode up with a ``warm`` pipeline, then ``--rounds`` interleaved rounds.

        The order of the modes rotates from one round to the next.
        """
        shape = shape_for(self.options.jobs)
        samples: dict[str, list[Round]] = {mode: [] for mode in modes}
        self.samples = samples  # what was measured stays readable if a round times out
        for mode in modes:
            key = f"{self.prefix}:{system}:warm:{mode}"
            self.one_round(system, mode, key, warm, self.options.timeout)
        for number in range(self.options.rounds):
            order = list(modes[number % len(modes) :]) + list(modes[: number % len(modes)])
            for mode in order:
                key = f"{self.prefix}:{system}:round{number}:{mode}"
                samples[mode].append(self.one_round(system, mode, key, shape, self.options.timeout))
        return samples

    def recorded(self, system: str, mode: str) -> int | None:
        """Job rows in the mode's lineage store (a check that lineage was on), if it has one."""
        path = self.store(system, mode)
        if not path.exists():
            return None
        try:
            with sqlite3.connect(path) as connection:
                row = connection.execute("SELECT count(*) FROM jobtrace_jobs").fetchone()
        except sqlite3.Error:
            return None
        return int(row[0])

    def warnings(self, system: str, mode: str) -> list[str]:
        """jobtrace's and the workers' warnings and errors, from the mode's logs."""
        lines: list[str] = []
        for log in sorted(self.workdir.glob(f"{system}-{mode}-*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if any(word in line for word in ("jobtrace", "Traceback", "ERROR", "Error")):
                    lines.append(line.strip())
        return lines

    def clean(self) -> None:
        """Delete this run's keys: the prefix's, and RQ's (the database had none before)."""
        for pattern in (f"{self.prefix}*", "rq:*"):
            keys = list(self.client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 1000):
                self.client.delete(*keys[start : start + 1000])


def profile_summary(folder: Path, mode: str, jobs: int) -> None:
    """What the profiled processes of one mode spent their time in, ms per job (``--profile``)."""
    dumps = sorted(str(path) for path in folder.glob("*.prof"))
    if not dumps:
        print(f"  {mode:>8}: no profile (Celery children dump theirs when they exit)")
        return
    stats = pstats.Stats(*dumps)
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in table.values())
    print(f"  {mode:>8}: profiled {total / jobs * 1000:.2f} ms per job ({len(dumps)} dumps)")

    def name(function: tuple[str, int, str]) -> str:
        path, line, label = function
        parts = Path(path).parts
        short = "/".join(parts[-3:]) if len(parts) > 2 else path
        return f"{short}:{line}({label})"

    own = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:8]
    print(
        "            own time, ms per job: "
        + "; ".join(f"{entry[2] / jobs * 1000:.2f} {name(function)}" for function, entry in own)
    )
    ours = [
        (function, entry)
        for function, entry in table.items()
        if "jobtrace" in function[0] or "opentelemetry" in function[0]
    ]
    ours.sort(key=lambda item: item[1][3], reverse=True)
    print(
        "            cumulative, jobtrace and OpenTelemetry, ms per job: "
        + "; ".join(
            f"{entry[3] / jobs * 1000:.2f} {name(function)}" for function, entry in ours[:12]
        )
    )


def report(system: str, bench: Bench, samples: dict[str, list[Round]]) -> dict[str, float]:
    """Print one system's figures; the medians of the per-round ratios of the headline modes."""
    jobs = total_jobs(shape_for(bench.options.jobs))
    modes = list(samples)
    print(f"{system}: wall s per round (min / median / max), ms per job at the median, CPU")
    for mode in modes:
        walls = [r.wall for r in samples[mode]]
        cpus = [r.cpu / jobs * 1000 for r in samples[mode]]
        main = statistics.median(r.main_cpu for r in samples[mode]) / jobs * 1000
        print(
            f"  {mode:>8}: wall {spread(walls)} s | {statistics.median(walls) / jobs * 1000:6.2f} ms"
            f" per job | worker CPU {spread(cpus, 2)} ms per job (main processes {main:.2f})"
        )
    if any(r.job_ms for rounds in samples.values() for r in rounds):
        print(f"{system}: each job's perform() in its work horse, ms (median over a round's jobs)")
        for mode in modes:
            medians = [statistics.median(r.job_ms) for r in samples[mode] if r.job_ms]
            highs = [max(r.job_ms) for r in samples[mode] if r.job_ms]
            print(f"  {mode:>8}: median {spread(medians, 2)} | slowest {spread(highs, 1)}")
    ratios: dict[str, float] = {}
    for base in ("bare", "contrib"):
        if base not in samples:
            continue
        print(f"{system}: wall time / {base}'s of the same round (min / median / max)")
        for mode in modes:
            if mode == base or (base == "contrib" and mode == "bare"):
                continue
            values = [r.wall / b.wall for r, b in zip(samples[mode], samples[base], strict=True)]
            print(f"  {mode:>8}: x {spread(values)}")
            ratios[f"{mode}_vs_{base}"] = statistics.median(values)
    if bench.options.profile:
        warm = total_jobs(DOWN_WARM_SHAPE if "down" in modes else WARM_SHAPE)
        for mode in modes:
            profile_summary(bench.profile_dir(system, mode), mode, warm + jobs * len(samples[mode]))
    for mode in modes:
        count = bench.recorded(system, mode)
        if count is not None:
            print(f"  {mode:>8}: {count} job rows in its lineage store")
        for line in bench.warnings(system, mode)[:5]:
            print(f"  {mode:>8} worker log: {line[:200]}")
    return ratios


def run_normal(options: argparse.Namespace, workdir: Path) -> None:
    bench = Bench(options, workdir)
    results: dict[str, dict[str, float]] = {}
    try:
        for system in options.systems:
            bench.start(system, MODES[system])
            try:
                before = load()
                samples = bench.measure(system, MODES[system])
                print(f"{system}: load average before {before}, after {load()}")
            finally:
                bench.stop()
            results[system] = report(system, bench, samples)
    finally:
        bench.stop()
        bench.clean()
    celery, rq = results.get("celery", {}), results.get("rq", {})
    nan = float("nan")
    print(
        f"e2e_celery_vs_bare={celery.get('lineage_vs_bare', nan):.3f}"
        f" e2e_celery_vs_contrib={celery.get('lineage_vs_contrib', nan):.3f}"
        f" e2e_rq_vs_bare={rq.get('lineage_vs_bare', nan):.3f}"
    )


def unfinished(
    options: argparse.Namespace, samples: dict[str, list[Round]], timeout: RoundTimeout
) -> None:
    """The exporter-down figure estimated from a round that ran out of time (``--timeout``)."""
    print(f"rq: a round ran out of time: {timeout}")
    jobs = total_jobs(shape_for(options.jobs))
    healthy = [r.wall * options.concurrency / jobs * 1000 for r in samples.get("healthy", [])]
    if timeout.mode != "down" or not timeout.done:
        print("exporter_down_ms_per_job=nan")
        return
    down = timeout.elapsed * options.concurrency / timeout.done * 1000
    base = statistics.median(healthy) if healthy else 0.0
    print(
        f"rq: down: {down:.0f} ms of worker time per job done so far; healthy"
        f" {base:.1f} ms per job ({len(healthy)} rounds); an estimate, from an unfinished round"
    )
    print(f"exporter_down_ms_per_job={down - base:.2f}")


def run_exporter_down(options: argparse.Namespace, workdir: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OTLPStub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bench = Bench(options, workdir)
    bench.endpoints = {
        "healthy": f"http://127.0.0.1:{server.server_address[1]}",
        "down": CLOSED_ENDPOINT,
    }
    jobs = total_jobs(shape_for(options.jobs))
    try:
        bench.start("rq", DOWN_MODES)
        try:
            before = load()
            samples = bench.measure("rq", DOWN_MODES, warm=DOWN_WARM_SHAPE)
            print(f"rq: load average before {before}, after {load()}")
        except RoundTimeout as timeout:
            print(f"rq: load average before {before}, after {load()}")
            unfinished(options, bench.samples, timeout)
            return
        finally:
            bench.stop()
        report("rq", bench, {mode: samples[mode] for mode in DOWN_MODES})
    finally:
        bench.stop()
        bench.clean()
        server.shutdown()
    extra = [
        (down.wall - healthy.wall) * options.concurrency / jobs * 1000
        for down, healthy in zip(samples["down"], samples["healthy"], strict=True)
    ]
    per_job = [
        statistics.median(down.job_ms) - statistics.median(healthy.job_ms)
        for down, healthy in zip(samples["down"], samples["healthy"], strict=True)
        if down.job_ms and healthy.job_ms
    ]
    print(
        f"extra worker time per job, down vs healthy, ms (min / median / max): {spread(extra, 2)}"
    )
    if per_job:
        print(f"extra median perform() per job, down vs healthy, ms: {spread(per_job, 2)}")
    print(f"exporter_down_ms_per_job={statistics.median(extra):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs per pipeline, at least (500)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode (3)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool children / RQ workers (2)")
    parser.add_argument("--systems", default="celery,rq", help="comma-separated: celery, rq (both)")
    parser.add_argument(
        "--exporter-down", action="store_true", help="RQ: OTLP towards a closed port vs healthy"
    )
    parser.add_argument("--timeout", type=float, default=900, help="longest round, seconds (900)")
    parser.add_argument(
        "--celery-no-flush",
        action="store_true",
        help="Celery's jobtrace workers with flush_on_job_end=False (the per-task flush's share)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile every RQ work horse and Celery pool child into DIR (slows them: figures"
        " from such a run show where time goes, not what it costs)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_E2E_REDIS_URL", "redis://127.0.0.1:6379/12"),
        help="a Redis database of the benchmark's own (db 12)",
    )
    options = parser.parse_args()
    options.systems = [name.strip() for name in options.systems.split(",") if name.strip()]
    unknown = set(options.systems) - set(MODES)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    client = Redis.from_url(options.redis_url)
    if next(iter(client.scan_iter(match="rq:*", count=1000)), None) is not None:
        parser.error(f"{options.redis_url} holds RQ keys already: pick a free database")
    client.close()
    shape = shape_for(options.jobs)
    print(
        f"pipeline: 1 root -> {shape[0]} pages -> {shape[1]} details each -> {shape[2]} items"
        f" each = {total_jobs(shape)} jobs; {options.rounds} rounds; {options.concurrency}"
        f" prefork children (Celery) / rq workers (RQ); Redis {options.redis_url};"
        f" load average {load()}"
    )
    print(f"src: {src_state()}")
    if options.celery_no_flush:
        print("celery: jobtrace's workers run with flush_on_job_end=False (--celery-no-flush)")
    workdir = Path(tempfile.mkdtemp(prefix="pipeline-e2e-"))
    try:
        if options.exporter_down:
            run_exporter_down(options, workdir)
        else:
            run_normal(options, workdir)
    finally:
        if os.environ.get("BENCH_E2E_KEEP"):
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
