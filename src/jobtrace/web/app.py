"""From a request target to a response: check the input, ask for a view, answer in HTML or JSON.

Everything that can go wrong ends here as a status and one sentence (400 bad input, 404 unknown id
or page, 503 store unreadable, 500 a bug), so no traceback ever reaches the browser; tracebacks go
to the server's log. Kept apart from the HTTP plumbing so routing is a plain function of a string.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import NoReturn
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from jobtrace.exceptions import StoreError
from jobtrace.lineage.models import ID_LENGTH, Job
from jobtrace.lineage.queries import STUCK_AFTER, JobNotFoundError, LineageStore
from jobtrace.web import pages
from jobtrace.web.links import Links, job_path, run_path
from jobtrace.web.views import (
    JobView,
    RunsView,
    RunView,
    Thresholds,
    job_view,
    run_view,
    runs_view,
    to_json,
)

__all__ = ["App", "BadRequest", "Response"]

logger = logging.getLogger("jobtrace.web")

HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
#: No script at all, inline CSS only: defence in depth should some value escape the escaping.
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),  # live runs: always ask the store again
)
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadRequest(ValueError):
    """Input the dashboard cannot use (a malformed id or parameter): a 400 with this message."""


class _NoSuchPage(LookupError):
    """A path the dashboard does not serve."""


@dataclass(frozen=True)
class Response:
    """What to send back: a status, a body, its type, and extra headers (a redirect's Location)."""

    status: HTTPStatus
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = field(default=SECURITY_HEADERS)


class App:
    """The dashboard's routes over one store; thread-safe as long as the store's engine is.

    Args:
        store: Where every page's data comes from.
        links: Trace URL template (Jaeger's by default).
    """

    def __init__(self, store: LineageStore, links: Links | None = None) -> None:
        self.store = store
        self.links = links or Links()

    def handle(self, target: str) -> Response:
        """The response to ``GET target`` (a path with its query); never raises."""
        path, query = _split(target)
        api = path == "/api" or path.startswith("/api/")
        try:
            return self._route(path, query, api)
        except BadRequest as error:
            return self.error(HTTPStatus.BAD_REQUEST, str(error), api=api)
        except JobNotFoundError as error:
            return self.error(
                HTTPStatus.NOT_FOUND, f"No job {error.job_id!r} in the lineage store.", api=api
            )
        except _NoSuchPage:
            return self.error(HTTPStatus.NOT_FOUND, "No such page.", api=api)
        except Exception as error:
            if _is_store_error(error):
                logger.error("jobtrace web: cannot read the lineage store", exc_info=True)
                return self.error(HTTPStatus.SERVICE_UNAVAILABLE, _store_problem(error), api=api)
            logger.exception("jobtrace web: error while serving %r", target)
            return self.error(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "Something went wrong on the server; the details are in its log.",
                api=api,
            )

    def error(self, status: HTTPStatus, message: str, *, api: bool = False) -> Response:
        """An error as JSON (``{"error", "status"}``) for the API, else as a page."""
        if api:
            return _json(status, {"error": message, "status": status.value})
        return _html(status, pages.error_page(status, message))

    def _route(self, path: str, query: str, api: bool) -> Response:
        segments = _segments(path)
        if api:
            segments = segments[1:]
        params = _params(query)
        match segments:
            case [] | ["runs"]:
                limit = _int(params, "limit", 20, 1, 1000)
                return self._render(runs_view(self.store, limit, _text(params, "name")), api)
            case ["runs", raw_id]:
                job = self.store.job(_job_id(raw_id))
                if not job.is_root:  # any job of a run leads to its run, like `jobtrace stats`
                    location = run_path(job.root_job_id, api=api)
                    return _redirect(location + (f"?{urlencode(params)}" if params else ""))
                return self._render(run_view(self.store, job.job_id, _thresholds(params)), api)
            case ["jobs"] if not api:  # the lookup form on the front page
                raw = params.get("id", "").strip()
                return _redirect(job_path(_job_id(raw, encoded=False)))
            case ["jobs", raw_id]:
                limit = _int(params, "limit", 50, 1, 1000)
                return self._render(job_view(self.store, _job_id(raw_id), limit), api)
            case _:
                raise _NoSuchPage(path)

    def _render(self, view: RunsView | RunView | JobView, api: bool) -> Response:
        if api:
            return _json(HTTPStatus.OK, to_json(view, self.links))
        if isinstance(view, RunsView):
            return _html(HTTPStatus.OK, pages.runs_page(view, self.links))
        if isinstance(view, RunView):
            return _html(HTTPStatus.OK, pages.run_page(view, self.links))
        return _html(HTTPStatus.OK, pages.job_page(view, self.links))


# Reading the request.


def _split(target: str) -> tuple[str, str]:
    """Path and query of a request target, in origin form (``/a?b``) or absolute form."""
    if _ABSOLUTE.match(target):
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path.partition("#")[0] or "/", query.partition("#")[0]


def _segments(path: str) -> list[str]:
    """The path's segments, still percent-encoded: an id may hold an encoded ``/``."""
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()
    return segments


def _params(query: str) -> dict[str, str]:
    """The query's parameters, the last value of a repeated one winning."""
    try:
        parsed = parse_qs(query, keep_blank_values=True, errors="strict", max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        _bad("the query string is not valid UTF-8 or has too many fields")
    return {name: values[-1] for name, values in parsed.items()}


def _job_id(raw: str, *, encoded: bool = True) -> str:
    """A job id from a path segment (percent-encoded) or a form field (already decoded)."""
    try:
        job_id = unquote(raw, errors="strict") if encoded else raw
    except UnicodeDecodeError:
        _bad("the job id is not valid UTF-8")
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


def _bad(message: str) -> NoReturn:
    raise BadRequest(message[:1].upper() + message[1:] + ".")


# Writing the response.


def _html(status: HTTPStatus, text: str) -> Response:
    return Response(status, text.encode("utf-8", "replace"), HTML)


def _json(status: HTTPStatus, value: object) -> Response:
    text = json.dumps(value, ensure_ascii=False, indent=2) + "\n"
    return Response(status, text.encode("utf-8", "replace"), JSON)


def _redirect(location: str) -> Response:
    body = pages.error_page(HTTPStatus.FOUND, f"See {location}")
    headers = (*SECURITY_HEADERS, ("Location", location))
    return Response(HTTPStatus.FOUND, body.encode("utf-8"), HTML, headers)


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
