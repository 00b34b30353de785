"""``jobtrace web``: a small read-only dashboard over the lineage store, linking into the traces.

Server-rendered HTML from the standard library alone (no dependency, no JavaScript), so it runs in
any worker image. Every page has a JSON twin under ``/api``:

    /                 /api/runs           the latest runs and their health
    /runs/ROOT        /api/runs/ROOT      the per-stage table, stuck ⚠ and failing ✗ stages
    /jobs/ID          /api/jobs/ID        one job: fields, path, cause, children, attempts

Trace links follow a template with ``{trace_id}`` (``--trace-url``, else ``JOBTRACE_TRACE_URL``,
else Jaeger on ``localhost:16686``)::

    from jobtrace.web import serve
    serve("postgresql+psycopg://jobs@db/lineage", port=8080)
"""

from __future__ import annotations

from jobtrace.web.app import App
from jobtrace.web.links import DEFAULT_TRACE_URL, Links, trace_template
from jobtrace.web.server import DashboardServer, make_server, serve

__all__ = [
    "DEFAULT_TRACE_URL",
    "App",
    "DashboardServer",
    "Links",
    "make_server",
    "serve",
    "trace_template",
]
