"""Every URL the dashboard writes: its own pages under its mount prefix, and trace links.

Ids are percent-encoded as one path segment (``/`` included), so a hostile id can neither break out
of its segment nor inject markup; templates still escape the whole URL for the attribute. A trace
template may hold :data:`PLACEHOLDERS` (the guide, ``docs/web.md``, has ready-made ones).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol
from urllib.parse import quote, urlencode, urlsplit

__all__ = [
    "DEFAULT_TRACE_URL",
    "MARGIN",
    "PLACEHOLDERS",
    "TRACE_SERVICE_ENV",
    "TRACE_URL_ENV",
    "Links",
    "Timed",
    "Urls",
    "trace_service",
    "trace_template",
]

#: Jaeger's trace view, the UI of the stack in ``docker-compose.yml``.
DEFAULT_TRACE_URL = "http://localhost:16686/trace/{trace_id}"
TRACE_URL_ENV = "JOBTRACE_TRACE_URL"
#: The service name ``{service}`` stands for (the store does not keep ``service.name``).
TRACE_SERVICE_ENV = "JOBTRACE_TRACE_SERVICE"
PLACEHOLDER = "{trace_id}"
SERVICE = "{service}"
#: What a template may hold: the trace id, the time range (epoch seconds, and milliseconds) and
#: the service name.
PLACEHOLDERS = (PLACEHOLDER, "{start}", "{end}", "{start_ms}", "{end_ms}", SERVICE)
#: How far a trace link's time range reaches before the job (or run) started and after it ended,
#: so clock skew between workers and the tracing backend does not cut the trace off.
MARGIN = timedelta(minutes=1)
# Browsers drop or fold these before parsing a URL (`java\nscript:`, `/\host`): none belongs in one.
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


def trace_template(option: str | None = None) -> str:
    """The trace URL template: ``option``, else ``JOBTRACE_TRACE_URL``, else Jaeger's default.

    Only two forms are links the dashboard can write safely: ``http(s)://host/...`` with every
    placeholder (:data:`PLACEHOLDERS`) outside the host, and a path on the dashboard's own site
    (``/jaeger/...``).

    Raises:
        ValueError: The template has no ``{trace_id}`` or is of another form: another scheme (a
            ``javascript:`` link would run in the dashboard's page), protocol-relative
            (``//host``, which goes wherever the trace id or the template says), or holding
            spaces, control characters or backslashes that browsers read differently.
    """
    template = option or os.environ.get(TRACE_URL_ENV) or DEFAULT_TRACE_URL
    if PLACEHOLDER not in template:
        raise ValueError(f"the trace URL template {template!r} has no {PLACEHOLDER}")
    if not _safe_template(template):
        raise ValueError(
            f"the trace URL template {template!r} is neither an http(s)://host/... URL nor a"
            " path starting with a single /"
        )
    return template


def _safe_template(template: str) -> bool:
    if _UNSAFE.search(template):
        return False
    if template.startswith("/"):
        return not template.startswith("//")
    parts = urlsplit(template)
    return (
        parts.scheme.lower() in ("http", "https")
        and template.lower().startswith(f"{parts.scheme.lower()}://")
        and bool(parts.netloc)
        and "{" not in parts.netloc
        and "}" not in parts.netloc
    )


def trace_service(option: str | None = None) -> str | None:
    """The service name for ``{service}``: ``option``, else ``JOBTRACE_TRACE_SERVICE``, else none.

    Raises:
        ValueError: It holds spaces or control characters.
    """
    service = option or os.environ.get(TRACE_SERVICE_ENV) or None
    if service is not None and _UNSAFE.search(service.replace(" ", "")):
        raise ValueError(f"the trace service {service!r} has control characters or backslashes")
    return service


class Timed(Protocol):
    """What a trace link's time range comes from: a job, an attempt, a failed sample."""

    @property
    def trace_id(self) -> str | None: ...

    @property
    def enqueued_at(self) -> datetime | None: ...

    @property
    def started_at(self) -> datetime | None: ...

    @property
    def finished_at(self) -> datetime | None: ...


@dataclass(frozen=True)
class Links:
    """Trace links from one template (Jaeger, Honeycomb, Grafana Tempo, ...).

    ``{start}``/``{end}`` (epoch seconds) and ``{start_ms}``/``{end_ms}`` are the time range of
    what is linked, :data:`MARGIN` wider on each side: from when it was enqueued (else started)
    to when it finished, else to now. ``str.replace`` rather than ``str.format``: other braces in
    a template stay as they are.

    Raises:
        ValueError: The template uses ``{service}`` and no (non-empty) service is given.
    """

    trace_url: str = DEFAULT_TRACE_URL
    service: str | None = None

    def __post_init__(self) -> None:
        if SERVICE in self.trace_url and not self.service:
            raise ValueError(
                f"the trace URL template {self.trace_url!r} uses {SERVICE}: name the service"
                f" (trace_service, --trace-service or {TRACE_SERVICE_ENV})"
            )

    def trace(
        self,
        trace_id: str | None,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        now: datetime | None = None,
    ) -> str | None:
        """The tracing UI's page for ``trace_id`` between ``start`` and ``end``.

        ``None`` for a job without a trace. Without ``end`` the range ends ``now`` (a job still
        running); without ``start`` it starts where it ends.
        """
        if not trace_id:
            return None
        url = self.trace_url.replace(PLACEHOLDER, _segment(trace_id))
        if "{" not in url:
            return url
        moment = now or datetime.now(timezone.utc)
        last = _aware(end) or moment
        first = min(_aware(start) or last, last) - MARGIN
        last += MARGIN
        values = {
            "{start}": str(math.floor(first.timestamp())),
            "{end}": str(math.ceil(last.timestamp())),
            "{start_ms}": str(math.floor(first.timestamp() * 1000)),
            "{end_ms}": str(math.ceil(last.timestamp() * 1000)),
            SERVICE: _segment(self.service or ""),
        }
        for placeholder, value in values.items():
            url = url.replace(placeholder, value)
        return url

    def job(self, job: Timed, *, now: datetime | None = None) -> str | None:
        """The trace of one job (or attempt), over the time it was enqueued, ran and finished."""
        start = job.enqueued_at or job.started_at
        return self.trace(job.trace_id, start, job.finished_at, now=now)


def _aware(moment: datetime | None) -> datetime | None:
    """Stored times are UTC; SQLite hands them back naive."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Urls:
    """The dashboard's own URLs under the prefix it is mounted at (``""`` at the site's root).

    Args:
        prefix: Already percent-encoded, without a trailing ``/`` (``/ops/jobtrace``).
    """

    prefix: str = ""

    def home(self) -> str:
        """The runs page."""
        return f"{self.prefix}/"

    def runs(self, *, api: bool = False) -> str:
        """The runs page, or its JSON twin."""
        return f"{self.prefix}/api/runs" if api else self.home()

    def run(self, job_id: str, *, api: bool = False) -> str:
        """The page of the run rooted at ``job_id`` (its JSON twin with ``api``)."""
        return f"{self.prefix}{'/api' if api else ''}/runs/{_segment(job_id)}"

    def job(self, job_id: str, *, api: bool = False) -> str:
        """The page of one job (its JSON twin with ``api``)."""
        return f"{self.prefix}{'/api' if api else ''}/jobs/{_segment(job_id)}"

    def jobs(
        self, params: Mapping[str, object], *, api: bool = False, export: str | None = None
    ) -> str:
        """A job list (:mod:`jobtrace.lineage.joblist`) with these filter parameters.

        Args:
            params: Query parameters; ``None`` values are left out.
            api: The page's JSON twin.
            export: ``"csv"`` or ``"json"``: the whole list, streamed.
        """
        query = urlencode({k: str(v) for k, v in params.items() if v is not None})
        path = f"/list.{export}" if export else "/list"
        return f"{self.prefix}{'/api' if api else ''}{path}" + (f"?{query}" if query else "")

    def stage(self, root_id: str, depth: int, name: str, state: str | None = None) -> str:
        """The jobs of one stage of a run, optionally in one state (or several, comma-joined)."""
        return self.jobs({"run": root_id, "depth": depth, "name": name, "state": state})

    def queues(self, run: str | None = None, *, api: bool = False) -> str:
        """The queue view across runs; with ``run``, that run marked as "this run"."""
        query = "?" + urlencode({"run": run}) if run else ""
        return f"{self.prefix}{'/api' if api else ''}/queues{query}"

    def compare(self, a: str, b: str, *, api: bool = False) -> str:
        """Two runs side by side (``jobtrace diff``): run ``a`` against run ``b``."""
        query = urlencode({"a": a, "b": b})
        return f"{self.prefix}{'/api' if api else ''}/compare?{query}"

    def lookup(self) -> str:
        """Where the front page's job lookup form goes."""
        return f"{self.prefix}/jobs"

    def static(self, name: str) -> str:
        """A stylesheet or script the app serves itself."""
        return f"{self.prefix}/static/{_segment(name)}"


def _segment(text: str) -> str:
    return quote(text, safe="")
