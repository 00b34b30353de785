"""The hourly sync example (scenario 4): sections, per-user spans and fields in one root trace."""

from __future__ import annotations

from examples.hourly_sync import sync
from opentelemetry.trace import SpanKind

import jobtrace
from jobtrace.testing import capture_telemetry


def test_sections_nest_users_under_the_cron_job() -> None:
    """Each service is a section under the job span, each user a span under its section."""
    with capture_telemetry() as telemetry:
        with jobtrace.trace_job(None, name="HourlySync", queue="cron"):
            sync.hourly_sync(users=4, seed=1)
        spans = telemetry.spans()
    (job,) = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert job.parent is None
    sections = [s for s in spans if s.name.startswith("sync ")]
    assert sorted(s.name for s in sections) == ["sync billing", "sync crm", "sync support"]
    assert all(s.parent.span_id == job.context.span_id for s in sections)
    users = [s for s in spans if s.name == "push user"]
    assert len(users) == 12
    section_ids = {s.context.span_id for s in sections}
    assert all(s.parent.span_id in section_ids for s in users)
    assert {s.attributes["user.email"] for s in users} == {
        f"user{n:03d}@example.com" for n in range(4)
    }
    counted = job.attributes.get("jobtrace.items.processed", 0) + job.attributes.get(
        "jobtrace.items.failed", 0
    )
    assert counted == 12
    assert job.attributes["jobtrace.items.total"] == 12
