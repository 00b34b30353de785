"""The dashboard's defences: framing, hostile trace templates, JSON errors, slow and idle clients."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from jobtrace.lineage.queries import LineageStore
from jobtrace.web import DashboardServer, make_server, trace_template
from tests.web.support import Stored, running


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def fetch_raw(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one GET, redirects not followed."""
    opener = urllib.request.build_opener(_NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=30) as response:
            status, head, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, head, body = error.code, error.headers, error.read()
    return status, {k.lower(): v for k, v in head.items()}, body


def test_no_answer_can_be_framed(stored: Stored) -> None:
    """Pages, JSON and errors all forbid framing (CSP frame-ancestors and X-Frame-Options)."""
    with running(stored.url) as served:
        for path in ("/", f"/runs/{stored.run.root}", "/api/runs", "/nowhere", "/api/jobs/x"):
            _, headers, _ = fetch_raw(served.base + path)
            policy = headers["content-security-policy"]
            assert "frame-ancestors 'none'" in policy, path
            assert "default-src 'none'" in policy, path
            assert headers["x-frame-options"] == "DENY", path
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["referrer-policy"] == "no-referrer", path


def test_api_of_a_job_inside_a_run_answers_json(stored: Stored) -> None:
    """/api/runs/ID of a job that is not a root answers its run as JSON, never an HTML redirect."""
    with running(stored.url) as served:
        status, headers, body = fetch_raw(f"{served.base}/api/runs/{stored.run.pages[0]}")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["root"]["job_id"] == stored.run.root


@pytest.mark.parametrize(
    "template",
    [
        "//evil.example/{trace_id}",
        "/\\evil.example/{trace_id}",
        "\\\\evil.example/{trace_id}",
        "javascript:alert('{trace_id}')",
        "JaVaScRiPt:alert('{trace_id}')",
        " javascript:alert('{trace_id}')",
        "\tjavascript:alert('{trace_id}')",
        "java\nscript:alert('{trace_id}')",
        "data:text/html,<script>alert('{trace_id}')</script>",
        "http:{trace_id}",
        "https:/{trace_id}",
        "http://{trace_id}",
    ],
)
def test_hostile_trace_templates_are_refused(stored: Stored, template: str) -> None:
    """Protocol-relative, scheme-less tricks and non-http schemes never become trace links."""
    with pytest.raises(ValueError, match="trace URL template"):
        trace_template(template)
    with LineageStore(stored.url) as store, pytest.raises(ValueError, match="trace URL template"):
        make_server(store, "127.0.0.1", 0, trace_url=template)


@pytest.mark.parametrize(
    "template",
    [
        "http://localhost:16686/trace/{trace_id}",
        "https://ui.honeycomb.io/acme/environments/prod/trace?trace_id={trace_id}",
        "/jaeger/trace/{trace_id}",
    ],
)
def test_ordinary_trace_templates_are_kept(template: str) -> None:
    """http(s) URLs with a host, and site-relative paths, are accepted as they are."""
    assert trace_template(template) == template


# The standalone server under hostile clients.


@contextmanager
def dashboard_process(url: str, *args: str, nofile: int = 1024) -> Iterator[tuple[int, str]]:
    """``jobtrace web`` in a child process limited to ``nofile`` descriptors: (pid, base URL)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    command = [sys.executable, "-m", "jobtrace", "--database-url", url, "web", "--port", "0"]
    with subprocess.Popen(
        [*command, *args], stderr=subprocess.PIPE, text=True, preexec_fn=limit
    ) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            assert line.startswith("jobtrace dashboard on http://127.0.0.1:"), line
            yield process.pid, line.split()[3].rstrip("/")
        finally:
            process.kill()
            process.communicate(timeout=30)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def many_descriptors() -> Iterator[int]:
    """Room in this process for the idle sockets a test opens."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield wanted
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_sockets_neither_starve_a_request_nor_spin_the_server(
    stored: Stored, many_descriptors: int
) -> None:
    """More idle connections than the server has descriptors leave a real request answered and the
    server quiet (the 1,023 idle sockets of a 1,024-descriptor process, at a smaller scale)."""
    limit = 128
    with dashboard_process(stored.url, nofile=limit) as (pid, base):
        host, port = base.removeprefix("http://").rsplit(":", 1)
        idle: list[socket.socket] = []
        try:
            for _ in range(limit + 72):
                try:  # each connection is accepted, or the server cannot take any more
                    idle.append(socket.create_connection((host, int(port)), timeout=5))
                except OSError:
                    break
            before, start = cpu_seconds(pid), time.monotonic()
            time.sleep(3)
            busy = cpu_seconds(pid) - before
            wall = time.monotonic() - start
            with urllib.request.urlopen(f"{base}/api/runs", timeout=20) as response:
                assert response.status == 200
                assert json.load(response)["runs"]
        finally:
            for conn in idle:
                conn.close()
    assert len(idle) == limit + 72, "the server stopped accepting connections"
    assert busy < wall / 4, f"{busy:.2f}s of CPU in {wall:.2f}s with idle connections open"


def test_a_request_sent_too_slowly_is_cut_off(stored: Stored) -> None:
    """A client that starts a request and never finishes it is answered 408 and disconnected."""
    store = LineageStore(stored.url)
    server = make_server(store, "127.0.0.1", 0, request_timeout=0.5, idle_timeout=60, log=None)
    with (
        store,
        serving(server) as (host, port),
        socket.create_connection((host, port), timeout=30) as conn,
    ):
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        answer = read_all(conn)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]


def test_an_idle_connection_is_closed(stored: Stored) -> None:
    """A connection that sends nothing is closed after the idle timeout, with no answer."""
    store = LineageStore(stored.url)
    server = make_server(store, "127.0.0.1", 0, idle_timeout=0.5, log=None)
    with (
        store,
        serving(server) as (host, port),
        socket.create_connection((host, port), timeout=30) as conn,
    ):
        assert read_all(conn) == b""


def read_all(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a 30 s socket timeout)."""
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    return answer


@contextmanager
def serving(server: DashboardServer) -> Iterator[tuple[str, int]]:
    """``server`` serving from a thread: its host and port."""
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield host, port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# Standalone off loopback: credentials or nothing.


def test_off_loopback_the_dashboard_refuses_to_start_without_credentials(stored: Stored) -> None:
    """`jobtrace web --host 0.0.0.0` with no token or password in the environment exits with one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTRACE_WEB_")}
    command = [sys.executable, "-m", "jobtrace", "--database-url", stored.url, "web"]
    command += ["--host", "0.0.0.0", "--port", "0"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
        finally:
            process.kill()
            rest = process.communicate(timeout=30)[1]
    assert line.startswith("jobtrace: "), line
    assert "JOBTRACE_WEB_TOKEN" in line
    assert "JOBTRACE_WEB_PASSWORD" in line
    assert rest == ""
