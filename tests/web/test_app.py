"""The dashboard as a WSGI application: mounted under a prefix, behind credentials, live, self-contained."""

from __future__ import annotations

import base64
import html
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import setup_testing_defaults

import pytest

from jobtrace.cli import main
from jobtrace.lineage.queries import LineageStore
from jobtrace.web import Credentials, DashboardApp, create_app
from jobtrace.web.auth import PASSWORD_ENV, TOKEN_ENV, USER_ENV
from tests.lineage.builders import TreeBuilder, create_schema
from tests.web.support import HOSTILE_CHILD, Dashboard, Page, Stored, running


@dataclass
class Answer:
    """A WSGI answer: status code, headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        assert self.headers["content-type"].startswith("application/json")
        return json.loads(self.body)


def call(
    app: DashboardApp,
    path: str,
    *,
    script_name: str = "",
    method: str = "GET",
    query: str = "",
    request_uri: str | None = None,
    **headers: str,
) -> Answer:
    """Call ``app`` as a WSGI server would, with ``path`` as PATH_INFO below ``script_name``."""
    environ: dict[str, Any] = {  # text as WSGI carries it: UTF-8 bytes decoded as Latin-1
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": script_name.encode().decode("latin-1"),
        "PATH_INFO": path.encode().decode("latin-1"),
        "QUERY_STRING": query,
    }
    if request_uri is not None:
        environ["REQUEST_URI"] = request_uri
    environ.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    setup_testing_defaults(environ)
    answer: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], *_: Any) -> Any:
        answer["status"] = int(status.split()[0])
        answer["headers"] = {name.lower(): value for name, value in response_headers}
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return Answer(answer["status"], answer["headers"], body)


@pytest.fixture
def app(stored: Stored) -> Iterator[DashboardApp]:
    """The WSGI app over the stored runs, opened from their URL."""
    dashboard = create_app(stored.url)
    try:
        yield dashboard
    finally:
        dashboard.close()


def local_urls(body: str) -> list[str]:
    """Every href, src and form action of a page that is not a trace link."""
    page = Page.parse(body)
    urls = [href for href, _ in page.links if not href.startswith("http://localhost:16686/")]
    return [*urls, *page.sources, *page.actions]


# Mounted in a host.


def test_under_a_prefix_every_link_stays_under_it(stored: Stored, app: DashboardApp) -> None:
    """Mounted at /ops/jobtrace (SCRIPT_NAME), pages, assets, forms and the JSON twin all link below it."""
    prefix = "/ops/jobtrace"
    for path in ("/", f"/runs/{stored.run.root}", f"/jobs/{stored.run.pages[0]}", "/nowhere"):
        answer = call(app, path, script_name=prefix)
        assert answer.status in (200, 404), path
        urls = local_urls(answer.text)
        assert urls, path
        assert all(url.startswith(prefix + "/") for url in urls), (path, urls)
    front = call(app, "/", script_name=prefix).text
    assert f'href="{prefix}/static/dashboard.css"' in front
    assert f'src="{prefix}/static/live.js"' in front
    assert f'data-src="{prefix}/api/runs"' in front
    redirect = call(app, f"/runs/{stored.run.pages[0]}", script_name=prefix)
    assert redirect.status == 302
    assert redirect.headers["location"] == f"{prefix}/runs/{stored.run.root}"
    lookup = call(app, "/jobs", script_name=prefix, query=f"id={stored.run.pages[1]}")
    assert lookup.headers["location"] == f"{prefix}/jobs/{stored.run.pages[1]}"


def test_base_path_for_hosts_that_pass_the_whole_path(stored: Stored) -> None:
    """With base_path, a host that leaves the prefix in PATH_INFO is served too, and other paths 404."""
    app = create_app(stored.url, base_path="/jobtrace/")
    try:
        page = call(app, f"/jobtrace/runs/{stored.run.root}")
        assert page.status == 200
        assert all(url.startswith("/jobtrace/") for url in local_urls(page.text))
        assert call(app, "/runs", script_name="/jobtrace").status == 200
        assert call(app, f"/runs/{stored.run.root}").status == 404
    finally:
        app.close()
    for bad in ("jobtrace", "//evil.example", "/a\nb"):
        with pytest.raises(ValueError, match="base path"):
            create_app(stored.url, base_path=bad)


def test_any_wsgi_server_can_mount_it_beside_its_own_app(stored: Stored) -> None:
    """Under the standard library's WSGI server, a ten-line dispatcher mounts it at /jobtrace."""
    dashboard = create_app(stored.url)

    def host(environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/jobtrace" or path.startswith("/jobtrace/"):
            environ["SCRIPT_NAME"] += "/jobtrace"
            environ["PATH_INFO"] = path.removeprefix("/jobtrace")
            return dashboard(environ, start_response)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the host's own page"]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    with make_server("127.0.0.1", 0, host, handler_class=Quiet) as server:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            base = Dashboard(f"http://127.0.0.1:{server.server_port}")
            assert base.get("/").body == "the host's own page"
            front = base.get("/jobtrace/")
            assert front.status == 200
            assert f'href="/jobtrace/runs/{stored.run.root}"' in front.body
            assert base.get("/jobtrace/api/runs").json()["runs"]
            assert base.get("/jobtrace/static/live.js").status == 200
            run = base.get(f"/jobtrace/runs/{stored.run.pages[0]}")
            assert run.url.endswith(f"/jobtrace/runs/{stored.run.root}")
        finally:
            server.shutdown()
            thread.join(10)
            dashboard.close()


def test_ids_holding_a_slash_route_when_the_server_passes_the_raw_path(app: DashboardApp) -> None:
    """PATH_INFO decodes %2F; REQUEST_URI (set by the standalone server, gunicorn, uWSGI) keeps it."""
    encoded = quote(HOSTILE_CHILD, safe="")
    raw = call(app, "/jobs/" + HOSTILE_CHILD, request_uri=f"/jobs/{encoded}")
    assert raw.status == 200
    assert HOSTILE_CHILD in html.unescape(raw.text)
    mounted = call(
        app, "/api/jobs/" + HOSTILE_CHILD, script_name="/x", request_uri=f"/x/api/jobs/{encoded}"
    )
    assert mounted.json()["job"]["job_id"] == HOSTILE_CHILD


# Credentials.


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_token_is_taken_as_bearer_or_as_the_password(stored: Stored) -> None:
    """With a token, a request without it is a 401 that makes a browser ask; with it, it is served."""
    app = create_app(stored.url, credentials=Credentials(token="s3cret ☃"))
    try:
        refused = call(app, "/")
        assert refused.status == 401
        assert refused.headers["www-authenticate"].startswith('Basic realm="jobtrace"')
        assert stored.run.root not in refused.text
        assert call(app, "/api/runs").json() == {
            "error": "The dashboard needs its token or password.",
            "status": 401,
        }
        assert call(app, "/static/live.js").status == 401
        assert call(app, "/", authorization="Bearer s3cret ☃").status == 200
        assert call(app, "/", authorization=basic("anyone", "s3cret ☃")).status == 200
        for wrong in ("Bearer s3cret", basic("anyone", "S3CRET ☃"), "Basic !!!", "s3cret ☃", ""):
            assert call(app, "/", authorization=wrong).status == 401, wrong
    finally:
        app.close()


def test_a_user_and_password_are_basic_authentication(stored: Stored) -> None:
    """With a user and a password both must match."""
    app = create_app(stored.url, credentials=Credentials(user="oncall", password="pw:with:colons"))
    try:
        assert call(app, "/", authorization=basic("oncall", "pw:with:colons")).status == 200
        assert call(app, "/", authorization=basic("other", "pw:with:colons")).status == 401
        assert call(app, "/", authorization=basic("oncall", "pw")).status == 401
        assert call(app, "/", authorization="Bearer pw:with:colons").status == 401
    finally:
        app.close()


def test_credentials_come_from_the_environment() -> None:
    """The token or the user and password are read from the environment; half a pair is refused."""
    assert Credentials.from_env({}) is None
    assert Credentials.from_env({TOKEN_ENV: "t"}) == Credentials(token="t")
    pair = Credentials.from_env({USER_ENV: "u", PASSWORD_ENV: "p"})
    assert pair == Credentials(user="u", password="p")
    assert "p" not in repr(pair)
    with pytest.raises(ValueError, match=PASSWORD_ENV):
        Credentials.from_env({USER_ENV: "u"})


def test_the_standalone_server_requires_credentials_set_in_the_environment(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once JOBTRACE_WEB_TOKEN is set, even on loopback every request needs it."""
    monkeypatch.setenv(TOKEN_ENV, "tok")
    with running(stored.url) as served:
        assert served.get("/").status == 401
        assert served.get("/", headers={"Authorization": "Bearer tok"}).status == 200


def test_off_loopback_the_server_starts_with_credentials(
    stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On every address, with a password in the environment, it serves those who give it."""
    from jobtrace.web import make_server

    monkeypatch.setenv(USER_ENV, "oncall")
    monkeypatch.setenv(PASSWORD_ENV, "pw")
    store = LineageStore(stored.url)
    server = make_server(store, "0.0.0.0", 0, log=None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        local = Dashboard(f"http://127.0.0.1:{server.server_address[1]}")
        assert local.get("/api/runs").status == 401
        assert local.get("/api/runs", headers={"Authorization": basic("oncall", "pw")}).json()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        store.close()
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ValueError, match=PASSWORD_ENV):
        make_server(store, "0.0.0.0", 0, log=None)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_addresses_need_no_credentials(
    stored: Stored, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Addresses only this machine reaches are served without a login, as before."""
    from jobtrace.web import make_server

    for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)
    store = LineageStore(stored.url)
    try:
        make_server(store, host, 0, log=None).server_close()
    except OSError as error:  # no IPv6 on this machine
        pytest.skip(f"cannot listen on {host}: {error}")
    finally:
        store.close()


# Self-contained and live.


def test_styles_and_scripts_come_from_the_app_itself(app: DashboardApp) -> None:
    """The CSS and the script are served by the app, cacheable by ETag, and nothing loads from elsewhere."""
    css = call(app, "/static/dashboard.css")
    js = call(app, "/static/live.js")
    assert css.status == js.status == 200
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert b"fetch(" in js.body
    again = call(app, "/static/live.js", if_none_match=js.headers["etag"])
    assert again.status == 304
    assert again.body == b""
    for missing in ("/static/nope.js", "/static/../app.py", "/static/"):
        assert call(app, missing).status == 404, missing
    front = call(app, "/")
    assert "style=" not in front.text  # the policy allows no inline style
    assert all(not url.startswith(("http:", "https:", "//")) for url in local_urls(front.text))
    assert "'unsafe-inline'" not in front.headers["content-security-policy"]


def test_every_page_says_as_of_and_which_version_of_its_twin_it_shows(
    stored: Stored, app: DashboardApp
) -> None:
    """Pages carry their snapshot's time and the version of their JSON twin; a twin read later with
    nothing changed has the same version and a later as_of."""
    for path in ("/", f"/runs/{stored.run.root}", f"/jobs/{stored.run.pages[0]}"):
        page = call(app, path)
        live = Page.parse(page.text).element("live")
        twin = call(app, live["data-src"]).json()
        assert live["data-version"] == twin["version"], path
        shown = datetime.fromisoformat(Page.parse(page.text).element("as-of")["datetime"])
        assert shown <= datetime.fromisoformat(twin["as_of"]), path
        assert abs(datetime.now(timezone.utc) - shown) < timedelta(minutes=5), path
        assert "as of" in page.text


def test_pages_poll_only_while_work_is_in_progress(sqlite_url: str) -> None:
    """A run with jobs still to do is live, a finished one is not; the runs page always is."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder()
    done = builder.job("DoneJob")
    builder.job("ChildJob", done)
    busy = builder.job("BusyJob", state="running", started=1)
    builder.job("ChildJob", busy, state="queued")
    builder.insert(engine)
    engine.dispose()
    app = create_app(sqlite_url, poll_seconds=1.5)
    try:
        assert call(app, "/api/runs").json()["live"] is True
        assert call(app, f"/api/runs/{done}").json()["live"] is False
        assert call(app, f"/api/runs/{busy}").json()["live"] is True
        assert call(app, f"/api/jobs/{done}").json()["live"] is False
        assert call(app, f"/api/jobs/{busy}").json()["live"] is True
        live = Page.parse(call(app, f"/runs/{busy}").text).element("live")
        assert (live["data-live"], live["data-interval"]) == ("true", "1500")
        assert Page.parse(call(app, f"/runs/{done}").text).element("live")["data-live"] == "false"
    finally:
        app.close()
    with pytest.raises(ValueError, match="poll_seconds"):
        create_app(sqlite_url, poll_seconds=0)


def test_without_jinja2_the_dashboard_says_what_to_install(
    stored: Stored, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No Jinja2: create_app raises a one-line ValueError, and `jobtrace web` prints it and exits 1."""
    monkeypatch.setitem(sys.modules, "jinja2", None)
    with pytest.raises(ValueError, match=r"pip install 'jobtrace\[web\]'"):
        create_app(stored.url)
    assert main(["--database-url", stored.url, "web", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err == "jobtrace: the dashboard needs Jinja2: pip install 'jobtrace[web]'\n"


def test_a_head_request_has_the_headers_of_the_get(app: DashboardApp) -> None:
    """HEAD answers the GET's status and length with an empty body."""
    get = call(app, "/api/runs")
    head = call(app, "/api/runs", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["content-length"] == str(len(get.body))
    post = call(app, "/api/runs", method="POST")
    assert post.status == 405
    assert post.headers["allow"] == "GET, HEAD"
