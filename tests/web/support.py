"""What the dashboard's tests share: a store with a cinema run and a hostile run, a served
dashboard, and a small HTML reader of tables and links."""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from jobtrace.lineage.queries import LineageStore
from jobtrace.web import make_server
from tests.lineage.builders import CinemaRun, TreeBuilder, cinema_run, create_schema

HONEYCOMB = "https://ui.honeycomb.io/acme/environments/prod/trace?trace_id={trace_id}&span=x"
HOSTILE_ROOT = "<script>alert(\"root\")</script> 'quoted' & ☃ é/../x"
HOSTILE_NAME = '<b onmouseover="x">EvilJob</b>'
HOSTILE_CHILD = 'child "</td><script>alert(1)</script>" ü?#%'
HOSTILE_ARGS = {"q": "</pre><script>alert(2)</script>", "u": "ünï ☃"}
HOSTILE_TRACE = 'ab"<x>&?/'


@dataclass
class Fetched:
    """One HTTP answer: status, headers, body text, and the URL after redirects."""

    status: int
    headers: dict[str, str]
    body: str
    url: str

    def json(self) -> Any:
        assert self.headers["content-type"].startswith("application/json")
        return json.loads(self.body)


@dataclass
class Dashboard:
    """A running dashboard and how to fetch from it."""

    base: str

    def get(self, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Fetched:
        request = urllib.request.Request(self.base + path, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Fetched(
                    response.status,
                    {k.lower(): v for k, v in response.headers.items()},
                    response.read().decode("utf-8"),
                    response.geturl(),
                )
        except urllib.error.HTTPError as error:
            return Fetched(
                error.code,
                {k.lower(): v for k, v in error.headers.items()},
                error.read().decode("utf-8"),
                error.geturl(),
            )


@contextmanager
def running(
    url_or_store: str | LineageStore, trace_url: str | None = None, **options: Any
) -> Iterator[Dashboard]:
    """The dashboard on a store (or a URL's), served from a thread on a free port of 127.0.0.1.

    ``options`` go to :func:`jobtrace.web.make_server`.
    """
    owned = not isinstance(url_or_store, LineageStore)
    store = LineageStore(url_or_store) if isinstance(url_or_store, str) else url_or_store
    server = make_server(store, "127.0.0.1", 0, trace_url=trace_url, log=None, **options)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield Dashboard(server.url.rstrip("/"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        if owned:
            store.close()


class Page(HTMLParser):
    """The tables (rows of cell texts), links (href, text), asset URLs, form actions and elements
    by id of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.links: list[tuple[str, str]] = []
        self.sources: list[str] = []  # <link href> and <script src>
        self.actions: list[str] = []
        self.ids: dict[str, dict[str, str]] = {}
        self._cell: list[str] | None = None
        self._href: str | None = None
        self._link_text: list[str] = []

    @classmethod
    def parse(cls, body: str) -> Page:
        page = cls()
        page.feed(body)
        page.close()
        return page

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if "id" in found:
            self.ids[found["id"]] = found
        if tag == "link" and "href" in found:
            self.sources.append(found["href"])
        elif tag == "script" and "src" in found:
            self.sources.append(found["src"])
        elif tag == "form" and "action" in found:
            self.actions.append(found["action"])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self._href = dict(attrs).get("href")
            self._link_text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self.tables:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._link_text)))
            self._href = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._href is not None:
            self._link_text.append(data)

    def element(self, element_id: str) -> dict[str, str]:
        """The attributes of the element with this id."""
        return self.ids[element_id]

    def rows(self, table: int) -> list[dict[str, str]]:
        """Table ``table``'s rows as ``{header: cell}``."""
        headers, *rows = self.tables[table]
        return [dict(zip(headers, row, strict=True)) for row in rows]


@dataclass(frozen=True)
class Stored:
    """A store holding a cinema run and a hostile run, and what was put in it."""

    url: str
    builder: TreeBuilder
    run: CinemaRun


def build(url: str) -> Stored:
    """A cinema run, plus a run whose ids, names, args and trace id are hostile, with attempts."""
    engine = create_schema(url)
    builder = TreeBuilder()
    run = cinema_run(builder, random.Random(10), start=-60)
    root = builder.job(HOSTILE_NAME, job_id=HOSTILE_ROOT, args=HOSTILE_ARGS, enqueued=-3600)
    child = builder.job(
        HOSTILE_NAME,
        root,
        job_id=HOSTILE_CHILD,
        state="failed",
        args=HOSTILE_ARGS,
        error_type="ValueError",
        error_message="<img src=x onerror=alert(3)>",
        trace_id=HOSTILE_TRACE,
        enqueued=-3500,
    )
    builder.attempt(child, 1, "retrying", error_type="TimeoutError", host="worker-<1>")
    builder.attempt(child, 2, "failed", error_type="ValueError", host="worker-2", pid=42)
    builder.insert(engine)
    engine.dispose()
    return Stored(url, builder, run)


def stage_counts(rows: list[dict[str, str]]) -> dict[tuple[int, str, str], int]:
    return {
        (int(row["depth"]), row["job"], row["state"]): int(row["count"].replace(",", ""))
        for row in rows
    }


def expected_counts(stored: Stored, root: str) -> dict[tuple[int, str, str], int]:
    return dict(stored.builder.counts(stored.builder.under(root)))
