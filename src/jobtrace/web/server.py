"""The HTTP plumbing: a standard-library threaded server that hands each GET to the :class:`App`.

``http.server`` is enough for a dashboard a few people open: no dependency to install in a worker
image, one thread per request, and the store's connection pool shared between them.
"""

from __future__ import annotations

from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jobtrace.lineage.queries import LineageStore
from jobtrace.web.app import App, Response
from jobtrace.web.links import Links, trace_template

__all__ = ["DashboardServer", "make_server", "serve"]


class DashboardServer(ThreadingHTTPServer):
    """A threaded HTTP server carrying the :class:`App` its handlers call."""

    daemon_threads = True  # a slow request never keeps the process from stopping

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """The address it listens on, as a URL (the real port when asked for port 0)."""
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    """GET and HEAD go to the app; other methods get a 405 in the same format."""

    server_version = "jobtrace-web"
    server: DashboardServer

    def do_GET(self) -> None:
        self._send(self._answer(), body=True)

    def do_HEAD(self) -> None:
        self._send(self._answer(), body=False)

    def _answer(self) -> Response:
        # http.server decodes the request line as Latin-1; ids typed raw in UTF-8 need undoing it.
        try:
            target = self.path.encode("latin-1").decode("utf-8")
        except UnicodeError:
            api = self.path == "/api" or self.path.startswith("/api/")
            message = "The request target is not valid UTF-8."
            return self.server.app.error(HTTPStatus.BAD_REQUEST, message, api=api)
        return self.server.app.handle(target)

    def _not_allowed(self) -> None:
        api = self.path == "/api" or self.path.startswith("/api/")
        response = self.server.app.error(
            HTTPStatus.METHOD_NOT_ALLOWED, "The dashboard only reads: use GET.", api=api
        )
        self._send(response, body=True, extra=(("Allow", "GET, HEAD"),))

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed

    def _send(
        self, response: Response, *, body: bool, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in (*response.headers, *extra):
                self.send_header(name, value)
            self.end_headers()
            if body:
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away: nothing to tell it


def make_server(
    store: LineageStore,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    trace_url: str | None = None,
) -> DashboardServer:
    """A dashboard server bound to ``host:port`` (0: any free port), not serving yet.

    Args:
        trace_url: The trace link template (see :func:`~jobtrace.web.links.trace_template`).

    Raises:
        ValueError: A trace URL template without ``{trace_id}`` or not http(s).
        OSError: The address cannot be bound (port taken, unknown host).
    """
    app = App(store, Links(trace_template(trace_url)))
    return DashboardServer((host, port), app)


def serve(
    store: LineageStore | str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    trace_url: str | None = None,
) -> None:
    """Serve the dashboard until interrupted, on a store or a URL (default: the usual store)."""
    owned = not isinstance(store, LineageStore)
    lineage = LineageStore(store) if not isinstance(store, LineageStore) else store
    try:
        with make_server(lineage, host, port, trace_url=trace_url) as server:
            server.serve_forever()
    finally:
        if owned:
            lineage.close()
