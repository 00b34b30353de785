"""Every URL the dashboard writes: its own pages under its mount prefix, and trace links.

Ids are percent-encoded as one path segment (``/`` included), so a hostile id can neither break out
of its segment nor inject markup; templates still escape the whole URL for the attribute.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

__all__ = [
    "DEFAULT_TRACE_URL",
    "TRACE_URL_ENV",
    "Links",
    "Urls",
    "trace_template",
]

#: Jaeger's trace view, the UI of the stack in ``docker-compose.yml``.
DEFAULT_TRACE_URL = "http://localhost:16686/trace/{trace_id}"
TRACE_URL_ENV = "JOBTRACE_TRACE_URL"
PLACEHOLDER = "{trace_id}"
# Browsers drop or fold these before parsing a URL (`java\nscript:`, `/\host`): none belongs in one.
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


def trace_template(option: str | None = None) -> str:
    """The trace URL template: ``option``, else ``JOBTRACE_TRACE_URL``, else Jaeger's default.

    Only two forms are links the dashboard can write safely: ``http(s)://host/...`` with the
    ``{trace_id}`` outside the host, and a path on the dashboard's own site (``/jaeger/...``).

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
        and PLACEHOLDER not in parts.netloc
    )


@dataclass(frozen=True)
class Links:
    """Trace links from one template: plain ``{trace_id}`` substitution (Jaeger, Honeycomb, ...).

    ``str.replace`` rather than ``str.format``: other braces in a template stay as they are.
    """

    trace_url: str = DEFAULT_TRACE_URL

    def trace(self, trace_id: str | None) -> str | None:
        """The tracing UI's page for ``trace_id``; ``None`` for a job without a trace."""
        if not trace_id:
            return None
        return self.trace_url.replace(PLACEHOLDER, _segment(trace_id))


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

    def lookup(self) -> str:
        """Where the front page's job lookup form goes."""
        return f"{self.prefix}/jobs"

    def static(self, name: str) -> str:
        """A stylesheet or script the app serves itself."""
        return f"{self.prefix}/static/{_segment(name)}"


def _segment(text: str) -> str:
    return quote(text, safe="")
