"""Getting telemetry out: one budget per job end, back-off from a broken exporter, a bounded exit.

The end-to-end tests run a LocalQueue application in a subprocess with the real OTLP HTTP exporter
pointed at a fault-injecting proxy (:mod:`tests.faults`) in front of a fake collector
(:mod:`tests.collector`); bounds on times are generous (the budget is 1 s, the faults cost 10 s
or more without it).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

import jobtrace
from jobtrace import records
from jobtrace._internal import delivery
from jobtrace.lineage.models import Job
from jobtrace.records import JobRecord
from jobtrace.testing import CapturedTelemetry
from tests.collector import FakeCollector, fake_collector
from tests.faults import TcpProxy, tcp_proxy
from tests.integrations.harness import store_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_delivery() -> Iterator[None]:
    """No back-off or count of one test leaks into the next."""
    delivery.reset()
    yield
    delivery.reset()


@pytest.fixture
def collector() -> Iterator[FakeCollector]:
    """A fake OTLP/HTTP collector on loopback."""
    with fake_collector() as found:
        yield found


@pytest.fixture
def proxy(collector: FakeCollector) -> Iterator[TcpProxy]:
    """A fault-injecting TCP proxy in front of the collector."""
    with tcp_proxy(collector.port) as found:
        yield found


def _env(proxy: TcpProxy, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "JOBTRACE_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{proxy.port}",
        JOBTRACE_DATABASE_URL=database_url,
        PYTHONIOENCODING="utf-8",
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
    )
    env.update(extra)
    return env


# Ten jobs on one LocalQueue worker; each job notes when it started, so the gap between two
# starts is what the first one's end cost. Prints the gaps, then when it began to exit.
LOCAL_APP = """
import json, sys, time
import jobtrace
from jobtrace.local import LocalQueue

jobtrace.configure(service_name="delivery-test", flush_on_job_end={flush})
starts = []

def job(i):
    starts.append(time.monotonic())

with LocalQueue(1) as queue:
    for i in range(10):
        queue.enqueue(job, i)
    queue.join(timeout=600)
    ended = time.monotonic()
gaps = [b - a for a, b in zip(starts, starts[1:])]
print(json.dumps({{"gaps": gaps, "total": ended - starts[0], "exiting": time.monotonic()}}), flush=True)
"""


def _run_local(
    proxy: TcpProxy, database_url: str, *, flush: bool, timeout: float = 60
) -> tuple[dict[str, Any], str, float]:
    """The LocalQueue app's report, its stderr, and how long its exit took."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOCAL_APP.format(flush=flush))],
        env=_env(proxy, database_url),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    exited = time.monotonic()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, done.stderr, exited - report["exiting"]


def _succeeded(database_url: str) -> int:
    return sum(1 for job in store_rows(database_url, Job) if job.state == "succeeded")


def test_healthy_collector_gets_every_span(
    proxy: TcpProxy, collector: FakeCollector, sqlite_url: str
) -> None:
    """With the collector answering, each flushed job's spans reach it and the exit is quiet."""
    report, stderr, _ = _run_local(proxy, sqlite_url, flush=True)
    assert collector.span_names.count("process job") == 10, stderr
    assert "not exported" not in stderr
    assert max(report["gaps"]) < 1.0
    assert _succeeded(sqlite_url) == 10


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_a_broken_exporter_costs_one_job_the_budget_and_the_rest_nothing(
    proxy: TcpProxy, sqlite_url: str, fault: str
) -> None:
    """Refused or black-holed: one job's end waits out the budget, the others skip the exporter."""
    getattr(proxy, fault)()
    report, stderr, _ = _run_local(proxy, sqlite_url, flush=True)
    slow = [gap for gap in report["gaps"] if gap > 0.5]
    assert len(slow) <= 2, report  # the job that found out (and at most one retry)
    assert max(report["gaps"]) < 3.0, report
    assert report["total"] < 6.0, report
    assert _succeeded(sqlite_url) == 10, stderr  # the lineage is complete


def test_exit_with_the_collector_black_holed_is_bounded(proxy: TcpProxy, sqlite_url: str) -> None:
    """A process that exits while the collector never answers is gone within seconds, says so once."""
    proxy.blackhole()
    _, stderr, exit_seconds = _run_local(proxy, sqlite_url, flush=False)
    assert exit_seconds < 8.0, stderr
    summaries = [line for line in stderr.splitlines() if "spans were not exported" in line]
    assert len(summaries) == 1, stderr
    assert _succeeded(sqlite_url) == 10


RECOVERY_APP = """
import json, sys, time
import jobtrace
from jobtrace._internal import delivery
from jobtrace.local import LocalQueue

delivery.FIRST_BACKOFF = 0.2  # so the test need not wait 5 s for the retry
jobtrace.configure(service_name="delivery-test", flush_on_job_end=True)

def job(i):
    pass

with LocalQueue(1) as queue:
    queue.enqueue(job, 0)
    queue.join(timeout=60)
    print(json.dumps({"down": jobtrace.telemetry_status().backing_off}), flush=True)
    sys.stdin.readline()  # the test heals the proxy
    time.sleep(0.5)
    for i in range(3):
        queue.enqueue(job, i)
    queue.join(timeout=60)
jobtrace.flush(2.0)
status = jobtrace.telemetry_status()
print(json.dumps({"failed": status.failed_exports, "down": status.backing_off}), flush=True)
"""


@pytest.mark.parametrize("fault", ["refuse", "pause"])
def test_spans_go_out_again_once_the_collector_is_back(
    proxy: TcpProxy, collector: FakeCollector, sqlite_url: str, fault: str
) -> None:
    """After the back-off, job ends try again: spans arrive and failed exports are a metric."""
    getattr(proxy, fault)()
    app = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(RECOVERY_APP)],
        env=_env(proxy, sqlite_url),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None
        assert app.stdin is not None
        during = json.loads(app.stdout.readline() or "{}")
        proxy.heal()
        app.stdin.write("\n")
        app.stdin.flush()
        out, err = app.communicate(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    assert app.returncode == 0, err
    after = json.loads(out.strip().splitlines()[-1])
    assert "traces" in during["down"], err
    assert after["down"] == [], err
    assert after["failed"] >= 1
    assert collector.span_names.count("process job") >= 3, err
    failed = {
        dict(attributes)["jobtrace.telemetry.signal"]: value
        for (name, attributes), value in collector.sums.items()
        if name == delivery.FAILED_EXPORTS_METRIC
    }
    assert failed.get("traces", 0) >= 1, collector.sums


# -- in process: the budget and the back-off themselves ------------------------------------


class _Stuck:
    """A provider whose flush hangs until the test ends (an exporter waiting on a dead host)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.calls = 0

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.calls += 1
        self.release.wait(30)
        return True


class _SlowSink:
    """A record sink whose flush takes as long as it is allowed (a frozen store)."""

    def __call__(self, record: JobRecord) -> None:
        return None

    def flush(self, timeout: float) -> bool:
        time.sleep(min(timeout, 5.0))
        return False


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test: the stuck providers' threads finish."""
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture
def slow_sink() -> Iterator[_SlowSink]:
    """A record sink that never finishes its flush in time."""
    sink = _SlowSink()
    records.add_sink(sink)
    yield sink
    records.remove_sink(sink)


def test_spans_metrics_and_records_share_one_budget(
    telemetry: CapturedTelemetry, release: threading.Event, slow_sink: _SlowSink
) -> None:
    """Two stuck providers and a stuck store: ``flush(0.3)`` returns after about 0.3 s, not each."""
    started = time.monotonic()
    jobtrace.flush(0.3, (_Stuck(release), _Stuck(release)))
    assert time.monotonic() - started < 1.5


def test_a_backing_off_exporter_costs_the_next_job_ends_nothing(
    telemetry: CapturedTelemetry, release: threading.Event, slow_sink: _SlowSink
) -> None:
    """After one timed-out flush, twenty more skip the exporter and the store at once."""
    stuck = _Stuck(release)
    jobtrace.flush(0.3, (stuck,))
    started = time.monotonic()
    for _ in range(20):
        jobtrace.flush(0.3, (stuck,))
    assert time.monotonic() - started < 1.0
    assert stuck.calls == 1
    status = jobtrace.telemetry_status()
    assert status.failed_exports == 1
    assert status.skipped_flushes >= 40  # twenty of the stuck provider, twenty of the records
    assert set(status.backing_off) == {"metrics", "records"}


def test_back_off_grows_and_ends_with_a_success() -> None:
    """Each failure in a row doubles the wait, up to a minute; one success ends it."""
    waits = []
    for _ in range(6):
        delivery.report_failure("traces", "failed", "exporting traces failed")
        waits.append(delivery._board.get("traces", delivery._RETRY_AT) - time.monotonic())
    assert [round(w) for w in waits] == [5, 10, 20, 40, 60, 60]
    assert not delivery.ready("traces")
    delivery.report_success("traces")
    assert delivery.ready("traces")


def test_one_warning_per_kind_of_problem(caplog: pytest.LogCaptureFixture) -> None:
    """Many failures of two signals and two kinds warn once per kind, not once for all."""
    caplog.set_level(logging.WARNING, logger="jobtrace")
    for _ in range(10):
        delivery.report_failure("traces", "failed", "exporting traces failed")
        delivery.report_failure("traces", "timeout", "exporting traces took over 1 s")
        delivery.report_failure("metrics", "failed", "exporting metrics failed")
    messages = [r.getMessage() for r in caplog.records if r.name == "jobtrace"]
    assert len(messages) == 3, messages
    assert jobtrace.telemetry_status().failed_exports == 30


def test_back_off_is_shared_with_forked_children() -> None:
    """A failure a forked child (an RQ work horse) saw backs its parent and siblings off too."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    script = """
        import os, sys
        from jobtrace._internal import delivery
        pid = os.fork()
        if pid == 0:
            delivery.report_failure("traces", "failed", "exporting traces failed")
            os._exit(0)
        os.waitpid(pid, 0)
        sibling = os.fork()
        if sibling == 0:
            os._exit(0 if not delivery.ready("traces") else 1)
        _, code = os.waitpid(sibling, 0)
        import jobtrace
        status = jobtrace.telemetry_status()
        ok = status.failed_exports == 1 and "traces" in status.backing_off
        sys.exit(0 if ok and os.waitstatus_to_exitcode(code) == 0 else 1)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=True, timeout=60)


# Ten jobs recorded into PostgreSQL through a proxy, then (once the test froze the store) ten
# more and an exit: the store never answers again, nor does the collector.
FROZEN_STORE_APP = """
import json, sys, time
import jobtrace
from jobtrace.local import LocalQueue

jobtrace.configure(service_name="delivery-test")

def job(i):
    pass

with LocalQueue(1) as queue:
    for i in range(10):
        queue.enqueue(job, i)
    queue.join(timeout=60)
    jobtrace.flush(5.0)
    print("frozen?", flush=True)
    sys.stdin.readline()
    for i in range(10):
        queue.enqueue(job, i)
    queue.join(timeout=60)
print(json.dumps({"exiting": time.monotonic()}), flush=True)
"""


def test_a_frozen_store_and_collector_cost_the_exit_one_budget_not_two(
    proxy: TcpProxy, postgres_url: str
) -> None:
    """The records' exit flush waits only for what the exit budget has left, not a budget more."""
    url = make_url(postgres_url)
    with tcp_proxy(url.port or 5432) as store_proxy:
        through_proxy = url.set(host="127.0.0.1", port=store_proxy.port)
        app = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(FROZEN_STORE_APP)],
            env=_env(
                proxy,
                through_proxy.render_as_string(hide_password=False),
                JOBTRACE_EXIT_TIMEOUT="3",
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert app.stdout is not None
            assert app.stdin is not None
            assert app.stdout.readline().strip() == "frozen?"
            store_proxy.pause()
            proxy.blackhole()
            app.stdin.write("\n")
            app.stdin.flush()
            out, err = app.communicate(timeout=60)
            exited = time.monotonic()
        finally:
            app.kill()
            store_proxy.heal()
    assert app.returncode == 0, err
    exit_seconds = exited - json.loads(out.strip().splitlines()[-1])["exiting"]
    assert exit_seconds < 5.0, err  # one budget of 3 s and the interpreter's own exit
