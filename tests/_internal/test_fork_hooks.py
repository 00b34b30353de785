"""A forked child must not hang in the OpenTelemetry SDK's own fork hook."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

CHILD_EXITS = textwrap.dedent(
    """
    import os, sys
    import jobtrace  # before the provider, as an application imports it
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource({"service.name": "fork-hooks"}))
    import concurrent.futures.thread  # first imported now, as a gRPC exporter would
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("child exited")
    """
)


def test_a_forked_child_exits_when_the_thread_pool_module_comes_after_the_provider() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD_EXITS],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError("the forked child hung in a fork hook") from None
    assert process.returncode == 0
    assert out.strip() == "child exited"
