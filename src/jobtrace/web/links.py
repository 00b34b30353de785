"""Every URL the dashboard writes: its own pages, and trace links into the tracing UI.

Ids are percent-encoded as one path segment (``/`` included), so a hostile id can neither break out
of its segment nor inject markup; the HTML layer still escapes the whole URL for the attribute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

__all__ = [
    "DEFAULT_TRACE_URL",
    "TRACE_URL_ENV",
    "Links",
    "job_path",
    "run_path",
    "trace_template",
]

#: Jaeger's trace view, the UI of the stack in ``docker-compose.yml``.
DEFAULT_TRACE_URL = "http://localhost:16686/trace/{trace_id}"
TRACE_URL_ENV = "JOBTRACE_TRACE_URL"
PLACEHOLDER = "{trace_id}"


def trace_template(option: str | None = None) -> str:
    """The trace URL template: ``option``, else ``JOBTRACE_TRACE_URL``, else Jaeger's default.

    Raises:
        ValueError: The template has no ``{trace_id}`` or is not an http(s) or site-relative URL
            (a ``javascript:`` link would run in the dashboard's page).
    """
    template = option or os.environ.get(TRACE_URL_ENV) or DEFAULT_TRACE_URL
    if PLACEHOLDER not in template:
        raise ValueError(f"the trace URL template {template!r} has no {PLACEHOLDER}")
    if urlsplit(template).scheme.lower() not in ("http", "https", ""):
        raise ValueError(f"the trace URL template {template!r} is not an http(s) URL")
    return template


def run_path(job_id: str, *, api: bool = False) -> str:
    """The page of the run rooted at ``job_id`` (its JSON twin with ``api``)."""
    return f"{'/api' if api else ''}/runs/{_segment(job_id)}"


def job_path(job_id: str, *, api: bool = False) -> str:
    """The page of one job (its JSON twin with ``api``)."""
    return f"{'/api' if api else ''}/jobs/{_segment(job_id)}"


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


def _segment(text: str) -> str:
    return quote(text, safe="")
