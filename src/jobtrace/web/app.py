"""The dashboard as a WSGI application: from a request to a view, then to HTML or its JSON twin.

Routing is a pure function of the path (:func:`resolve`); each request reads the store in one
snapshot (:mod:`jobtrace.web.snapshot`). Everything that can go wrong ends here as a status and one
sentence (400 bad input, 401 no credentials, 404 unknown id or page, 405 not a read, 503 store
unreadable, 500 a bug), so no traceback ever reaches the browser; tracebacks go to the log.

Mounted under a prefix, the app takes it from ``SCRIPT_NAME`` (or ``base_path``) and writes every
link under it. Ids travel percent-encoded in one path segment; where the server passes the raw
request target (``REQUEST_URI`` or ``RAW_URI``, as the standalone server, gunicorn and uWSGI do)
even an id holding ``/`` routes.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from importlib import resources
from typing import Any, Literal, NoReturn, Protocol
from urllib.parse import parse_qs, quote, unquote_to_bytes, urlencode, urlsplit

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from jobtrace.display.health import FAILING_SHARE
from jobtrace.exceptions import StoreError
from jobtrace.lineage.export import jsonable
from jobtrace.lineage.joblist import MAX_PAGE, Cursor, FilterError, JobFilter, parse_filter
from jobtrace.lineage.models import ID_LENGTH, Job
from jobtrace.lineage.queries import (
    STUCK_AFTER,
    AmbiguousJobIdError,
    JobNotFoundError,
    JobRow,
    LineageStore,
)
from jobtrace.web.auth import Credentials
from jobtrace.web.links import Links, Urls, trace_template
from jobtrace.web.links import trace_service as service_option
from jobtrace.web.render import Renderer
from jobtrace.web.snapshot import snapshot
from jobtrace.web.views import (
    CompareView,
    JobListView,
    JobView,
    QueuesView,
    RunsView,
    RunView,
    Thresholds,
    View,
    compare_view,
    job_list_view,
    job_view,
    queues_view,
    run_view,
    runs_view,
    to_json,
)

__all__ = [
    "POLL_SECONDS",
    "SECURITY_HEADERS",
    "DashboardApp",
    "Response",
    "Route",
    "create_app",
    "resolve",
]

logger = logging.getLogger("jobtrace.web")

#: How often a page in progress asks its JSON twin whether anything changed.
POLL_SECONDS = 5.0
HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
CSV = "text/csv; charset=utf-8"
#: The columns of a job list's CSV, in order.
CSV_COLUMNS = (
    "job_id",
    "name",
    "state",
    "queue",
    "depth",
    "parent_job_id",
    "root_job_id",
    "attempt",
    "enqueued_at",
    "started_at",
    "finished_at",
    "duration",
    "error",
    "error_message",
    "args",
    "trace_id",
)
#: Jobs fetched per keyset page while a list streams.
STREAM_BATCH = 1000
#: Scripts and styles from the app only, nothing inline, no framing, no referrer to tracing UIs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_NO_STORE = (("Cache-Control", "no-store"),)  # live runs: always ask the store again
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ALLOWED = "GET, HEAD"

Page = Literal["runs", "run", "lookup", "job", "static", "list", "export", "queues", "compare"]


class StartResponse(Protocol):
    """The ``start_response`` callable of PEP 3333."""

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = ..., /
    ) -> Callable[[bytes], object]: ...


class BadRequest(ValueError):
    """Input the dashboard cannot use (a malformed id or parameter): a 400 with this message."""


class _NoSuchPage(LookupError):
    """A path the dashboard does not serve."""


@dataclass(frozen=True)
class Route:
    """What a path asks for: a page, whether its JSON twin, and its argument (an id, a file)."""

    page: Page
    api: bool = False
    arg: str | None = None


@dataclass(frozen=True)
class Response:
    """What to send back: a status, a body, its type, and headers beyond the security ones."""

    status: HTTPStatus
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = _NO_STORE
    #: A body too big to hold: written as it is produced, without a ``Content-Length``.
    stream: Callable[[], Iterator[bytes]] | None = None


def resolve(segments: Sequence[str]) -> Route:
    """The route of a path, given as its decoded segments (``["api", "runs", "ID"]``).

    Raises:
        LookupError: No page has this path.
    """
    api = bool(segments) and segments[0] == "api"
    rest = list(segments[1:] if api else segments)
    match rest:
        case [] | ["runs"]:
            return Route("runs", api)
        case ["runs", job_id]:
            return Route("run", api, job_id)
        case ["jobs"] if not api:  # the lookup form on the front page
            return Route("lookup")
        case ["jobs", job_id]:
            return Route("job", api, job_id)
        case ["list"]:
            return Route("list", api)
        case ["list.csv" | "list.json" as name] if not api:
            return Route("export", arg=name.removeprefix("list."))
        case ["queues"]:
            return Route("queues", api)
        case ["compare"]:
            return Route("compare", api)
        case ["static", name] if not api:
            return Route("static", arg=name)
        case _:
            raise _NoSuchPage("/".join(segments))


class DashboardApp:
    """The dashboard's WSGI application over one store; thread-safe as the store's engine is.

    Args:
        store: Where every page's data comes from.
        base_path: The prefix the app is mounted at, when the host does not say it in
            ``SCRIPT_NAME`` (a path that still includes it is accepted too).
        links: Trace URL template (Jaeger's by default).
        poll_seconds: How often a page in progress checks for news.
        credentials: What every request must present (the standalone server's; a host that
            mounts the app brings its own authentication and leaves this ``None``).
        close_store: Close ``store`` in :meth:`close` (a store the app opened itself).
    """

    def __init__(
        self,
        store: LineageStore,
        *,
        base_path: str = "",
        links: Links | None = None,
        poll_seconds: float = POLL_SECONDS,
        credentials: Credentials | None = None,
        close_store: bool = False,
    ) -> None:
        if not (math.isfinite(poll_seconds) and poll_seconds > 0):
            raise ValueError(f"poll_seconds must be a positive number, not {poll_seconds!r}")
        self.store = store
        self.links = links or Links()
        self.base_path = _base_path(base_path)
        self.poll_seconds = poll_seconds
        self.credentials = credentials
        self._close_store = close_store
        self._renderer = Renderer()
        self._static = _load_static()

    def close(self) -> None:
        """Release the store's connections if the app opened it."""
        if self._close_store:
            self.store.close()

    def __call__(
        self, environ: Mapping[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        response = self.respond(environ)
        length = [] if response.stream else [("Content-Length", str(len(response.body)))]
        headers = [
            ("Content-Type", response.content_type),
            *length,
            *SECURITY_HEADERS,
            *response.headers,
        ]
        start_response(f"{response.status.value} {response.status.phrase}", headers)
        if str(environ.get("REQUEST_METHOD", "GET")).upper() == "HEAD":
            return [b""]
        if response.stream is not None:
            return response.stream()
        return [response.body]

    def respond(self, environ: Mapping[str, Any]) -> Response:
        """The response to one request, as a WSGI environ describes it; never raises."""
        urls = Urls(self._prefix(environ))
        api = False
        try:
            segments = self._segments(environ)
            api = bool(segments) and segments[0] == "api"
            if self.credentials is not None and not self.credentials.accept(
                environ.get("HTTP_AUTHORIZATION")
            ):
                return self._unauthorized(urls, api)
            method = str(environ.get("REQUEST_METHOD", "GET")).upper()
            if method not in ("GET", "HEAD"):
                response = self.error(
                    urls, HTTPStatus.METHOD_NOT_ALLOWED, "The dashboard only reads: use GET.", api
                )
                return _with_headers(response, ("Allow", _ALLOWED))
            route = resolve(segments)
            params = _params(str(environ.get("QUERY_STRING", "")))
            return self._route(route, params, urls, environ)
        except BadRequest as error:
            return self.error(urls, HTTPStatus.BAD_REQUEST, str(error), api)
        except FilterError as error:
            return self.error(urls, HTTPStatus.BAD_REQUEST, _sentence(str(error)), api)
        except JobNotFoundError as error:
            message = f"No job {error.job_id!r} in the lineage store."
            return self.error(urls, HTTPStatus.NOT_FOUND, message, api)
        except AmbiguousJobIdError as error:
            return self.error(urls, HTTPStatus.BAD_REQUEST, _sentence(str(error)), api)
        except _NoSuchPage:
            return self.error(urls, HTTPStatus.NOT_FOUND, "No such page.", api)
        except Exception as error:
            if _is_store_error(error):
                logger.error("jobtrace web: cannot read the lineage store", exc_info=True)
                return self.error(urls, HTTPStatus.SERVICE_UNAVAILABLE, _store_problem(error), api)
            logger.exception("jobtrace web: error while serving %r", environ.get("PATH_INFO"))
            message = "Something went wrong on the server; the details are in its log."
            return self.error(urls, HTTPStatus.INTERNAL_SERVER_ERROR, message, api)

    def error(self, urls: Urls, status: HTTPStatus, message: str, api: bool = False) -> Response:
        """An error as JSON (``{"error", "status"}``) for the API, else as a page."""
        if api:
            return _json(status, {"error": message, "status": status.value})
        return self._error_page(urls, status, message)

    # Routes.

    def _route(
        self, route: Route, params: Mapping[str, str], urls: Urls, environ: Mapping[str, Any]
    ) -> Response:
        if route.page == "static":
            return self._static_file(route.arg or "", environ)
        if route.page == "lookup":
            raw = params.get("id", "").strip()
            return self._redirect(urls, urls.job(_job_id(raw)))
        as_of = datetime.now(timezone.utc)
        if route.page == "export":
            return self._export(route.arg or "csv", params, as_of)
        view: View
        with snapshot(self.store) as store:
            if route.page == "list":
                where = _resolved(store, parse_filter(params))
                after = Cursor.decode(params["after"]) if params.get("after") else None
                limit = _int(params, "limit", 50, 1, MAX_PAGE)
                view = job_list_view(store, where, after, limit, as_of)
            elif route.page == "queues":
                run = _text(params, "run")
                root = _run_root(store, run) if run else None
                view = queues_view(store, root, as_of)
            elif route.page == "compare":
                typed_a, typed_b = _compared(params)
                run_a, run_b = _run_root(store, typed_a), _run_root(store, typed_b)
                view = compare_view(store, run_a, run_b, as_of)
            elif route.page == "runs":
                limit = _int(params, "limit", 20, 1, 1000)
                view = runs_view(store, limit, _text(params, "name"), as_of)
            elif route.page == "run":
                job = store.job(_job_id(route.arg or ""))
                root_id = job.root_job_id
                if root_id is not None and root_id != job.job_id and not route.api:
                    # Any job of a run leads to its run, like `jobtrace stats`.
                    location = urls.run(root_id) + (f"?{urlencode(params)}" if params else "")
                    return self._redirect(urls, location)
                # The API answers the run itself: a client asking for JSON gets JSON.
                anchor = root_id or job.job_id
                view = run_view(store, anchor, _thresholds(params), as_of)
            else:
                limit = _int(params, "limit", 50, 1, 1000)
                view = job_view(store, _job_id(route.arg or ""), limit, as_of)
        return self._render(view, route.api, urls)

    def _render(self, view: View, api: bool, urls: Urls) -> Response:
        document = to_json(view, self.links)
        if api:
            return _json(HTTPStatus.OK, document)
        if isinstance(view, RunsView):
            template, title, twin = "runs.html", "Runs", urls.runs(api=True)
        elif isinstance(view, JobListView):
            params = _page_params(view)
            template, title, twin = "list.html", "Jobs", urls.jobs(params, api=True)
        elif isinstance(view, QueuesView):
            run = None if view.run is None else view.run.job_id
            template, title, twin = "queues.html", "Queues", urls.queues(run, api=True)
        elif isinstance(view, CompareView):
            a, b = view.diff.a.job_id, view.diff.b.job_id
            template, title, twin = "compare.html", "Compare runs", urls.compare(a, b, api=True)
        elif isinstance(view, RunView):
            root = view.overview.root
            template, title, twin = "run.html", f"Run {root.name}", urls.run(root.job_id, api=True)
        else:
            assert isinstance(view, JobView)
            job = view.job
            template, title, twin = (
                "job.html",
                f"{job.name} {job.job_id}",
                urls.job(job.job_id, api=True),
            )
        html = self._renderer.render(
            template,
            view=view,
            title=title,
            twin=twin,
            version=document["version"],
            live=view.live,
            as_of=view.as_of,
            poll_ms=round(self.poll_seconds * 1000),
            failing_share=FAILING_SHARE,
            stuck_after=STUCK_AFTER,
            urls=urls,
            links=self.links,
        )
        return _html(HTTPStatus.OK, html)

    def _export(self, kind: str, params: Mapping[str, str], as_of: datetime) -> Response:
        """The whole list as CSV or JSON, written page by page from one snapshot.

        Filters are checked (and the run resolved) before the answer starts, so a bad one is a
        400; a store that fails halfway ends the stream early, and the log says why.
        """
        with snapshot(self.store) as store:
            where = _resolved(store, parse_filter(params))
        store = self.store
        stamp = as_of.strftime("%Y%m%dT%H%M%SZ")
        disposition = ("Content-Disposition", f'attachment; filename="jobs-{stamp}.{kind}"')

        def rows() -> Iterator[JobRow]:
            with snapshot(store) as frozen:
                yield from frozen.iter_jobs(where, now=as_of, batch_size=STREAM_BATCH)

        def stream() -> Iterator[bytes]:
            try:
                if kind == "csv":
                    yield from _csv(rows())
                else:
                    yield from _json_lines(where, as_of, rows(), self.links)
            except Exception:
                logger.exception("jobtrace web: a job list stopped halfway")

        content_type = CSV if kind == "csv" else JSON
        return Response(HTTPStatus.OK, b"", content_type, (*_NO_STORE, disposition), stream=stream)

    def _error_page(
        self, urls: Urls, status: HTTPStatus, message: str, location: str | None = None
    ) -> Response:
        html = self._renderer.render(
            "error.html",
            status=status,
            message=message,
            location=location,
            title=status.phrase,
            twin=None,
            urls=urls,
            links=self.links,
        )
        return _html(status, html)

    def _redirect(self, urls: Urls, location: str) -> Response:
        page = self._error_page(urls, HTTPStatus.FOUND, "This page is elsewhere.", location)
        return _with_headers(page, ("Location", location))

    def _unauthorized(self, urls: Urls, api: bool) -> Response:
        assert self.credentials is not None
        response = self.error(
            urls, HTTPStatus.UNAUTHORIZED, "The dashboard needs its token or password.", api
        )
        return _with_headers(response, ("WWW-Authenticate", self.credentials.challenge))

    def _static_file(self, name: str, environ: Mapping[str, Any]) -> Response:
        found = self._static.get(name)
        if found is None:
            raise _NoSuchPage(name)
        body, content_type, etag = found
        headers = (("Cache-Control", "no-cache"), ("ETag", etag))
        if environ.get("HTTP_IF_NONE_MATCH") == etag:
            return Response(HTTPStatus.NOT_MODIFIED, b"", content_type, headers)
        return Response(HTTPStatus.OK, body, content_type, headers)

    # Reading the request.

    def _prefix(self, environ: Mapping[str, Any]) -> str:
        """Where the app is mounted, percent-encoded for links."""
        if self.base_path:
            return self.base_path
        script = _latin1_to_text(str(environ.get("SCRIPT_NAME", "")), strict=False)
        return quote(script.rstrip("/"), safe="/-._~!$&'()*+,;=:@")

    def _segments(self, environ: Mapping[str, Any]) -> list[str]:
        """The request path's decoded segments below the mount point."""
        script = _split(_latin1_to_text(str(environ.get("SCRIPT_NAME", ""))))
        path = _split(_latin1_to_text(str(environ.get("PATH_INFO", ""))))
        raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
        if raw:
            # The raw target keeps %2F inside a segment; trust it where it agrees with the rest.
            target = str(raw)
            if "://" in target.split("?", 1)[0]:
                target = urlsplit(target).path or "/"
            full = [_decode(segment) for segment in _split(target.split("?", 1)[0])]
            if full[: len(script)] == script and "/".join(full[len(script) :]) == "/".join(path):
                path = full[len(script) :]
        full_path = [*script, *path]
        if self.base_path:
            base = _split(unquote_to_bytes(self.base_path).decode("utf-8"))
            if full_path[: len(base)] != base:
                raise _NoSuchPage("/".join(full_path))
            return full_path[len(base) :]
        return path


def create_app(
    store_or_url: LineageStore | str | None = None,
    *,
    base_path: str = "",
    trace_url: str | None = None,
    trace_service: str | None = None,
    poll_seconds: float = POLL_SECONDS,
    credentials: Credentials | None = None,
) -> DashboardApp:
    """The dashboard as a WSGI application, to mount in Flask, Django or any WSGI server.

    Args:
        store_or_url: A store, or a database URL (``None``: ``JOBTRACE_DATABASE_URL``, else the
            local default); a store the app opens is closed by its ``close()``.
        base_path: The prefix the app is mounted at, if the host does not pass it as
            ``SCRIPT_NAME`` (werkzeug's ``DispatcherMiddleware`` does).
        trace_url: The trace link template (see :func:`~jobtrace.web.links.trace_template`).
        trace_service: What a template's ``{service}`` becomes (``None``:
            ``JOBTRACE_TRACE_SERVICE``); needed by a template that uses it.
        poll_seconds: How often a page in progress checks for news.
        credentials: Require these on every request (see :class:`~jobtrace.web.auth.Credentials`).

    Raises:
        ValueError: A bad trace URL template (or one using ``{service}`` without a service) or
            base path, or Jinja2 missing.
    """
    links = Links(trace_template(trace_url), service_option(trace_service))
    owned = not isinstance(store_or_url, LineageStore)
    store = store_or_url if isinstance(store_or_url, LineageStore) else LineageStore(store_or_url)
    try:
        return DashboardApp(
            store,
            base_path=base_path,
            links=links,
            poll_seconds=poll_seconds,
            credentials=credentials,
            close_store=owned,
        )
    except BaseException:
        if owned:
            store.close()
        raise


def _base_path(base_path: str) -> str:
    if not base_path or base_path == "/":
        return ""
    if not base_path.startswith("/") or base_path.startswith("//") or _CONTROL.search(base_path):
        raise ValueError(f"the base path {base_path!r} must be a path starting with a single /")
    return quote(base_path.rstrip("/"), safe="/-._~!$&'()*+,;=:@%")


def _split(path: str) -> list[str]:
    """A path's segments, without the leading and the trailing ``/``."""
    if not path:
        return []
    segments = path.split("/")
    if segments[0] == "":
        segments = segments[1:]
    if segments and segments[-1] == "":
        segments.pop()
    return segments


def _latin1_to_text(value: str, *, strict: bool = True) -> str:
    """A WSGI string (bytes carried as Latin-1, PEP 3333) as the UTF-8 text it encodes."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:
        return value  # a host that already decoded it
    except UnicodeDecodeError:
        if strict:
            _bad("the request path is not valid UTF-8")
        return value.encode("latin-1").decode("utf-8", "replace")


def _decode(segment: str) -> str:
    """One raw (percent-encoded) segment of the request target, decoded."""
    try:
        return unquote_to_bytes(segment.encode("latin-1")).decode("utf-8")
    except UnicodeEncodeError:
        return unquote_to_bytes(segment.encode("utf-8")).decode("utf-8", "replace")
    except UnicodeDecodeError:
        _bad("the request path is not valid UTF-8")


def _params(query: str) -> dict[str, str]:
    """The query's parameters, the last value of a repeated one winning."""
    try:
        text = query.encode("latin-1").decode("utf-8")
        parsed = parse_qs(text, keep_blank_values=True, errors="strict", max_num_fields=50)
    except (UnicodeError, ValueError):
        _bad("the query string is not valid UTF-8 or has too many fields")
    return {name: values[-1] for name, values in parsed.items()}


def _job_id(job_id: str) -> str:
    if not job_id:
        _bad("a job id is needed")
    if len(job_id) > ID_LENGTH:
        _bad(f"a job id has at most {ID_LENGTH} characters")
    if _CONTROL.search(job_id):
        _bad("a job id has no control characters")
    return job_id


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value and _CONTROL.search(value):
        _bad(f"{name} has no control characters")
    return value or None


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        _bad(f"{name} must be a whole number from {low} to {high}")
    return value


def _float(params: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        _bad(f"{name} must be a number from {low:g} to {high:g}")
    return value


def _thresholds(params: Mapping[str, str]) -> Thresholds:
    """``stuck_after``, ``min_failures`` and ``fail_ratio``, as ``jobtrace tree`` takes them."""
    return Thresholds(
        stuck_after=_float(params, "stuck_after", STUCK_AFTER, 0, 10 * 365 * 86400),
        min_failures=_int(params, "min_failures", 1, 0, 2**31 - 1),
        fail_ratio=_float(params, "fail_ratio", 0.0, 0, 1),
    )


def _resolved(store: LineageStore, where: JobFilter) -> JobFilter:
    """``where`` with its run and parent as job ids: prefixes resolved, a run's job to its root."""
    run = _run_root(store, where.run) if where.run else None
    parent = store.resolve(where.parent) if where.parent else None
    return dataclasses.replace(where, run=run, parent=parent)


def _run_root(store: LineageStore, typed: str) -> str:
    """The root id of the run ``typed`` (an id or a unique prefix of any of its jobs) names."""
    job = store.job(store.resolve(typed))
    return job.root_job_id or job.job_id


def _compared(params: Mapping[str, str]) -> tuple[str, str]:
    """The two runs ``/compare?a=RUN&b=RUN`` names (ids or unique prefixes, as ``/list?run=``)."""
    for name in ("a", "b"):
        if not params.get(name):
            _bad(f"comparing needs two runs: ?a=RUN&b=RUN ({name} is missing)")
    return _job_id(params["a"]), _job_id(params["b"])


def _page_params(view: JobListView) -> dict[str, str]:
    """The query of a list page, to write its twin's and its neighbours' links."""
    params = view.where.params()
    if view.after is not None:
        params["after"] = view.after.encode()
    if view.limit != 50:
        params["limit"] = str(view.limit)
    return params


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


def _bad(message: str) -> NoReturn:
    raise BadRequest(message[:1].upper() + message[1:] + ".")


# Writing the response.


#: What a spreadsheet would run as a formula at the start of a cell (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv(rows: Iterable[JobRow]) -> Iterator[bytes]:
    """A header line, then one line per job; cells a spreadsheet would run get a leading ``'``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def flush() -> bytes:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text.encode("utf-8", "replace")

    writer.writerow(CSV_COLUMNS)
    yield flush()
    for count, job in enumerate(rows, 1):
        writer.writerow([_cell(value) for value in _csv_values(job)])
        if count % 200 == 0:
            yield flush()
    yield flush()


def _csv_values(job: JobRow) -> list[object]:
    values: list[object] = []
    for column in CSV_COLUMNS:
        value = getattr(job, column)
        if isinstance(value, datetime):
            value = value.isoformat()
        values.append("" if value is None else value)
    return values


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _json_lines(
    where: JobFilter, as_of: datetime, rows: Iterable[JobRow], links: Links
) -> Iterator[bytes]:
    """``{"filter", "as_of", "jobs": [...], "count"}``, one job per line as it comes."""
    head = {"filter": where.params(), "as_of": as_of.isoformat()}
    yield (json.dumps(head, ensure_ascii=False)[:-1] + ', "jobs": [\n').encode("utf-8", "replace")
    count = 0
    for job in rows:
        item = {**jsonable(job), "trace_url": links.job(job, now=as_of)}
        line = ("," if count else "") + json.dumps(item, ensure_ascii=False) + "\n"
        count += 1
        yield line.encode("utf-8", "replace")
    yield f'], "count": {count}}}\n'.encode()


def _html(status: HTTPStatus, text: str) -> Response:
    return Response(status, text.encode("utf-8", "replace"), HTML)


def _json(status: HTTPStatus, value: object) -> Response:
    text = json.dumps(value, ensure_ascii=False, indent=2) + "\n"
    return Response(status, text.encode("utf-8", "replace"), JSON)


def _with_headers(response: Response, *headers: tuple[str, str]) -> Response:
    return Response(
        response.status, response.body, response.content_type, (*response.headers, *headers)
    )


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    """The files of ``static/``: name → (body, content type, ETag), read once."""
    files: dict[str, tuple[bytes, str, str]] = {}
    for entry in (resources.files("jobtrace.web") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _STATIC_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            files[entry.name] = (body, _STATIC_TYPES[suffix], etag)
    return files


def _is_store_error(error: Exception) -> bool:
    """Errors of the store (down, no schema, driver missing), as opposed to bugs."""
    if isinstance(error, ImportError):
        return not (error.name or "jobtrace").startswith("jobtrace")
    return isinstance(error, (SQLAlchemyError, StoreError))


def _store_problem(error: Exception) -> str:
    """What to tell the browser about a store error: the fix when known, never the SQL."""
    if isinstance(error, DBAPIError) and Job.__tablename__ in str(error.orig):
        return "The lineage store has no jobtrace schema or an old one: run `jobtrace db upgrade`."
    return "The lineage store cannot be read right now; the details are in the server's log."
