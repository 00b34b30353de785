"""Trace links from templates with time ranges and a service name, and the templates refused."""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from jobtrace.lineage.queries import LineageStore
from jobtrace.web import Links, create_app, trace_template
from jobtrace.web.links import MARGIN, PLACEHOLDERS, trace_service
from tests.lineage.builders import TreeBuilder, create_schema
from tests.web.support import running

NIGHT = datetime(2026, 12, 2, 2, 0, tzinfo=timezone.utc)
HONEYCOMB = (
    "https://ui.honeycomb.io/acme/environments/prod/datasets/jobs/trace"
    "?trace_id={trace_id}&trace_start_ts={start}&trace_end_ts={end}"
)
TEMPO = (  # docs/web.md's
    "https://GRAFANA/explore?schemaVersion=1&orgId=1&panes=%7B%22t%22:%7B%22datasource%22:"
    "%22TEMPO_UID%22,%22queries%22:%5B%7B%22refId%22:%22A%22,%22datasource%22:%7B%22type%22:"
    "%22tempo%22,%22uid%22:%22TEMPO_UID%22%7D,%22queryType%22:%22traceql%22,%22query%22:"
    "%22{trace_id}%22%7D%5D,%22range%22:%7B%22from%22:%22{start_ms}%22,%22to%22:%22{end_ms}"
    "%22%7D%7D%7D"
)


def test_a_honeycomb_link_spans_the_job_with_a_minute_each_side() -> None:
    """{start} and {end} are epoch seconds from a minute before enqueue to a minute after finish."""
    links = Links(trace_template(HONEYCOMB))
    url = links.trace("abc", NIGHT, NIGHT + timedelta(minutes=5), now=NIGHT + timedelta(days=1))
    start = int((NIGHT - MARGIN).timestamp())
    end = int((NIGHT + timedelta(minutes=6)).timestamp())
    assert url == (
        "https://ui.honeycomb.io/acme/environments/prod/datasets/jobs/trace"
        f"?trace_id=abc&trace_start_ts={start}&trace_end_ts={end}"
    )


def test_milliseconds_and_naive_times_are_utc() -> None:
    """{start_ms}/{end_ms} are the same range in ms; a naive time (SQLite's) counts as UTC."""
    naive = NIGHT.replace(tzinfo=None)
    url = Links(TEMPO).trace("t1", naive, naive, now=NIGHT)
    start_ms = int((NIGHT - MARGIN).timestamp()) * 1000
    end_ms = int((NIGHT + MARGIN).timestamp()) * 1000
    assert f"%22from%22:%22{start_ms}%22" in url
    assert f"%22to%22:%22{end_ms}%22" in url
    assert "%22query%22:%22t1%22" in url


def test_a_job_still_running_ends_its_range_now() -> None:
    """No finish time: the range ends at the page's moment (plus the margin)."""
    now = NIGHT + timedelta(hours=3)
    url = Links("/t/{trace_id}?from={start}&to={end}").trace("x", NIGHT, None, now=now)
    assert url == (
        f"/t/x?from={int((NIGHT - MARGIN).timestamp())}&to={int((now + MARGIN).timestamp())}"
    )


def test_service_fills_its_placeholder_percent_encoded() -> None:
    """{service} is the configured name, encoded as one segment; without one the template fails."""
    links = Links(
        trace_template("http://jaeger:16686/search?service={service}&t={trace_id}"), "a b/c"
    )
    assert links.trace("t", NIGHT, NIGHT) == "http://jaeger:16686/search?service=a%20b%2Fc&t=t"
    with pytest.raises(ValueError, match=r"\{service\}"):
        Links("http://jaeger/search?service={service}&t={trace_id}")
    with pytest.raises(ValueError, match=r"\{service\}"):
        Links("/{service}/{trace_id}", "")  # an empty service would make it //{trace_id}


def test_create_app_takes_the_service_from_its_option_or_the_environment(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trace_service=... or JOBTRACE_TRACE_SERVICE; neither, and a {service} template is refused."""
    template = "http://jaeger/search?service={service}&trace={trace_id}"
    store = LineageStore(sqlite_url)
    try:
        assert create_app(store, trace_url=template, trace_service="api").links.service == "api"
        monkeypatch.setenv("JOBTRACE_TRACE_SERVICE", "worker")
        assert create_app(store, trace_url=template).links.service == "worker"
        monkeypatch.delenv("JOBTRACE_TRACE_SERVICE")
        with pytest.raises(ValueError, match="JOBTRACE_TRACE_SERVICE"):
            create_app(store, trace_url=template)
    finally:
        store.close()
    with pytest.raises(ValueError, match="control characters"):
        trace_service("api\n<script>")


@pytest.mark.parametrize("placeholder", [p for p in PLACEHOLDERS if p != "{trace_id}"])
@pytest.mark.parametrize(
    "form",
    [
        "https://{p}/x?t={trace_id}",
        "https://{p}.evil.example/x?t={trace_id}",
        "https://evil.example:{p}/x?t={trace_id}",
        "https://user{p}@evil.example/x?t={trace_id}",
    ],
)
def test_no_placeholder_may_reach_the_host(placeholder: str, form: str) -> None:
    """Every placeholder, not just {trace_id}, stays out of the host, its port and the userinfo
    (``{service}`` would pick the host; a time would turn one host into another)."""
    with pytest.raises(ValueError, match="trace URL template"):
        trace_template(form.replace("{p}", placeholder))


@pytest.mark.parametrize(
    "template",
    [
        HONEYCOMB,
        TEMPO,
        "http://localhost:16686/search?service={service}&traceID={trace_id}&start={start_ms}000&end={end_ms}000",
    ],
)
def test_ready_made_templates_are_kept_and_filled(template: str) -> None:
    """The time-ranged templates of docs/web.md are accepted as they are and leave no placeholder."""
    assert trace_template(template) == template
    url = Links(template, "svc").trace("t1", NIGHT, NIGHT)
    assert url is not None
    assert not [p for p in PLACEHOLDERS if p in url]
    assert str(int((NIGHT + MARGIN).timestamp())) in url


def test_a_live_run_s_links_end_now_without_making_its_page_redraw(sqlite_url: str) -> None:
    """A running job's link ends at the answer's moment, yet the twin's version stays the same
    from one poll to the next while the store does not change (the page does not redraw)."""
    engine = create_schema(sqlite_url)
    builder = TreeBuilder(start=datetime.now(timezone.utc) - timedelta(minutes=5))
    root = builder.job("ImportJob", state="running", started=1, heartbeat=290)
    builder.insert(engine)
    engine.dispose()
    with running(sqlite_url, trace_url=HONEYCOMB) as served:
        first = served.get(f"/api/runs/{root}").json()
        time.sleep(1.1)
        second = served.get(f"/api/runs/{root}").json()
    assert first["live"] is True
    ends = [
        int(parse_qs(urlsplit(d["trace_url"]).query)["trace_end_ts"][0]) for d in (first, second)
    ]
    as_of = datetime.fromisoformat(second["as_of"])
    assert ends[1] == math.ceil((as_of + MARGIN).timestamp())
    assert ends[1] > ends[0]
    assert first["version"] == second["version"]
