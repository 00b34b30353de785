"""Forked children hand their records to the process they came from, which writes them."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

import jobtrace
from jobtrace.lineage.queries import LineageStore
from jobtrace.lineage.reaper import reap
from jobtrace.lineage.recorder import Recorder, start_recorder, stop_recorder
from jobtrace.testing import capture_telemetry
from tests.faults import tcp_proxy


@pytest.fixture
def recorder(store_url: str) -> Iterator[Recorder]:
    """This process's recorder, heartbeating fast, stopped afterwards."""
    started = start_recorder(store_url, heartbeat_interval=0.2)
    assert started.prepare()
    try:
        yield started
    finally:
        stop_recorder()


def fork(child: Callable[[], None]) -> int:
    """Run ``child`` in a forked process that leaves with ``os._exit``, like a work horse."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            child()
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def forbid_the_store(recorder: Recorder, touched: Path) -> None:
    """In the child: any use of the store's engine leaves a mark (a hand-off never needs it)."""

    def refuse(*args: object, **kwargs: object) -> None:
        touched.write_text("the child opened the store")
        raise RuntimeError("the child must not open the store")

    recorder.engine.connect = refuse  # type: ignore[method-assign]
    recorder.engine.begin = refuse  # type: ignore[method-assign]


def test_a_forked_child_never_opens_the_store_and_loses_nothing(
    recorder: Recorder, tmp_path: Path
) -> None:
    """Records of jobs run in a work horse reach the store through the parent, complete."""
    touched = tmp_path / "touched"

    def horse() -> None:
        forbid_the_store(recorder, touched)
        for n in range(5):
            with jobtrace.trace_job(None, name="HorseJob", job_id=f"horse-{n}"):
                jobtrace.progress(n, 5)
        jobtrace.flush(5.0)

    with capture_telemetry():
        pid = fork(horse)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert recorder.flush(10)
    assert not touched.exists(), touched.read_text()
    with LineageStore(recorder.url) as store:
        states = {f"horse-{n}": store.job(f"horse-{n}").state for n in range(5)}
        assert store.job("horse-3").progress == pytest.approx(0.6)
    assert set(states.values()) == {"succeeded"}


def test_the_parent_heartbeats_a_childs_job_until_the_child_dies(
    recorder: Recorder, tmp_path: Path
) -> None:
    """A running child's job stays fresh through the parent; killed, it is reaped crashed."""
    ready = tmp_path / "ready"

    def horse() -> None:
        with jobtrace.trace_job(None, name="LongJob", job_id="long-1"):
            jobtrace.flush(5.0)
            ready.write_text("running")
            time.sleep(60)

    with capture_telemetry():
        pid = fork(horse)
        try:
            deadline = time.monotonic() + 20
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            beats: set[object] = set()
            with LineageStore(recorder.url) as store:
                while len(beats) < 4 and time.monotonic() < deadline:
                    assert recorder.flush(5)
                    beats.add(store.job("long-1").heartbeat_at)
                    time.sleep(0.1)
                assert reap(recorder.url, heartbeat_timeout=0.5).crashed == ()
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert len(beats) >= 4
        time.sleep(1.5)  # the parent stops after the child missed two beats; then three more
        crashed = reap(recorder.url, heartbeat_timeout=0.5).crashed
    assert crashed == ("long-1",)


def test_a_child_whose_parent_cannot_take_its_records_writes_them_itself(
    recorder: Recorder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JOBTRACE_HANDOFF=0, or a parent that stopped reading: the child writes to the store."""
    monkeypatch.setenv("JOBTRACE_HANDOFF", "0")

    def horse() -> None:
        with jobtrace.trace_job(None, name="SoloJob", job_id="solo-1"):
            pass
        jobtrace.flush(5.0)

    with capture_telemetry():
        pid = fork(horse)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with LineageStore(recorder.url) as store:
        assert store.job("solo-1").state == "succeeded"


def all_there(url: str) -> bool:
    with LineageStore(url) as store:
        try:
            return all(store.job(f"frozen-{n}").state == "succeeded" for n in range(3))
        except LookupError:
            return False


def test_a_frozen_store_does_not_hold_up_a_childs_jobs(postgres_url: str, tmp_path: Path) -> None:
    """With the store black-holed, a work horse's jobs end at once; the records arrive later."""
    from sqlalchemy.engine import make_url

    from tests.faults import tcp_proxy

    real = make_url(postgres_url)
    timing = tmp_path / "seconds"
    with tcp_proxy(real.port or 5432) as proxy:
        url = real.set(port=proxy.port).render_as_string(hide_password=False)
        recorder = start_recorder(url + "?connect_timeout=1", heartbeat_interval=0.2)
        try:
            ready_by = time.monotonic() + 20  # a loaded machine may miss one 1 s connect
            while not recorder.prepare() and time.monotonic() < ready_by:
                time.sleep(0.2)
            assert recorder.prepare()

            def horse() -> None:
                began = time.monotonic()
                for n in range(3):
                    with jobtrace.trace_job(None, name="FrozenJob", job_id=f"frozen-{n}"):
                        pass
                jobtrace.flush(5.0)
                timing.write_text(str(time.monotonic() - began))

            with capture_telemetry():
                proxy.blackhole()
                pid = fork(horse)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
                proxy.heal()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not all_there(postgres_url):
                    recorder.flush(5)
                    time.sleep(0.2)
        finally:
            stop_recorder()
    assert float(timing.read_text()) < 2.0  # the budget of one flush is 5 s: it never waited
    with LineageStore(postgres_url) as store:
        assert {store.job(f"frozen-{n}").state for n in range(3)} == {"succeeded"}


def test_a_frozen_postgresql_never_holds_up_a_fork(postgres_url: str) -> None:
    """RQ forks per job: a writer stuck in a frozen server must not make each fork wait for it."""
    url = make_url(postgres_url)
    with tcp_proxy(url.port or 5432) as proxy:
        started = start_recorder(
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
            heartbeat_interval=0.2,
        )
        try:
            assert started.prepare()
            proxy.pause()
            with capture_telemetry():
                with jobtrace.trace_job(None, name="BeforeFork", job_id="before-fork"):
                    pass
                started.flush(0.5)  # the writer is now inside the driver, waiting on the server
                waits = []
                for _ in range(3):
                    forked_at = time.monotonic()
                    pid = fork(lambda: None)
                    waits.append(time.monotonic() - forked_at)
                    os.waitpid(pid, 0)
            assert max(waits) < 1.0, waits
        finally:
            proxy.heal()
            stop_recorder()
