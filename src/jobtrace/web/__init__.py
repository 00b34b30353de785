"""The dashboard: a read-only WSGI application over the lineage store, linking into the traces.

Mount it in any WSGI host under a prefix (authentication is then the host's), or run it alone
with ``jobtrace web``. Every page has a JSON twin under ``/api`` built from the same view, and
pages update themselves while work is in progress. Needs ``pip install 'jobtrace[web]'``
(Jinja2). The guide is ``docs/web.md``::

    from jobtrace.web import create_app
    dashboard = create_app("postgresql+psycopg://jobs@db/lineage", base_path="/jobtrace")
"""

from __future__ import annotations

from jobtrace.display.health import FAILING_SHARE, Health, run_health
from jobtrace.web.app import DashboardApp, create_app
from jobtrace.web.auth import Credentials
from jobtrace.web.links import DEFAULT_TRACE_URL, Links, Urls, trace_template
from jobtrace.web.server import DashboardServer, make_server, serve

__all__ = [
    "DEFAULT_TRACE_URL",
    "FAILING_SHARE",
    "Credentials",
    "DashboardApp",
    "DashboardServer",
    "Health",
    "Links",
    "Urls",
    "create_app",
    "make_server",
    "run_health",
    "serve",
    "trace_template",
]
