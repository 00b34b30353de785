"""jobtrace beside python-contrib's Celery instrumentation, with a real worker: one span each, one trace.

The producer (this process) instruments contrib first; the worker instruments jobtrace at import and
contrib in ``worker_process_init``, the way contrib's guide says, which connects it after jobtrace.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from opentelemetry.instrumentation.celery import CeleryInstrumentor as ContribInstrumentor

from jobtrace.integrations.celery import instrument_celery
from tests.integrations.celery.conftest import Cluster, Span, flush_redis
from tests.integrations.celery.conftest import make_cluster as new_cluster
from tests.integrations.harness import export_test_spans

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Both instrumentations in this process and in a prefork worker on Redis database 1."""
    cluster = new_cluster("redis", tmp_path_factory.mktemp("celery-contrib"))
    export_test_spans(cluster.spans_path)
    contrib = ContribInstrumentor()
    contrib.instrument()
    jobtrace = instrument_celery(record=False)
    try:
        cluster.start_worker(JOBTRACE_CELERY_INSTRUMENT="both")
        yield cluster
    finally:
        jobtrace.uninstrument()
        contrib.uninstrument()
        export_test_spans(None)
        cluster.close()
        flush_redis()


def by_job_id(spans: list[Span], kind: str) -> dict[str, Span]:
    return {s["attributes"]["jobtrace.job.id"]: s for s in spans if s["kind"] == kind}


def test_one_span_per_send_and_run_in_one_trace(cluster: Cluster) -> None:
    """1 → 2 → 2: contrib's spans only, carrying jobtrace's attributes, parented across processes."""
    root = cluster.send("SyncJob", 2, 1)
    cluster.wait_for_tree(root, 7)
    cluster.wait_for_spans(lambda _: len(cluster.tree_spans(root, "PRODUCER")) >= 7, "7 sends")
    spans = cluster.spans()
    runs = by_job_id(cluster.tree_spans(root, "CONSUMER"), "CONSUMER")
    sends = by_job_id(cluster.tree_spans(root, "PRODUCER"), "PRODUCER")

    assert not [s["name"] for s in spans if s["name"].startswith(("process ", "send "))]
    assert len(spans) == len(runs) + len(sends) == 14
    assert len({s["trace_id"] for s in spans}) == 1
    for job_id, run in runs.items():
        attributes = run["attributes"]
        assert run["name"] == f"run/{attributes['jobtrace.job.name']}"
        assert sends[job_id]["name"] == f"apply_async/{attributes['jobtrace.job.name']}"
        assert run["parent_span_id"] == sends[job_id]["span_id"]
        assert attributes["jobtrace.job.outcome"] == "succeeded"
        assert attributes["messaging.system"] == "celery"
        if parent_id := attributes.get("jobtrace.job.parent_id"):
            assert sends[job_id]["parent_span_id"] == runs[parent_id]["span_id"]
    assert Counter(
        (r["attributes"]["jobtrace.job.depth"], r["attributes"]["jobtrace.job.name"])
        for r in runs.values()
    ) == {
        (0, "SyncJob"): 1,
        (1, "MoviePageJob"): 2,
        (2, "MovieDetailJob"): 2,
        (2, "ShowtimeProcessJob"): 2,
    }

    jobs = cluster.wait_for_jobs(
        lambda jobs: len(jobs) == 7 and all(j.state == "succeeded" for j in jobs),
        "7 succeeded jobs in the store",
        root=root,
    )
    assert {job.span_id for job in jobs} == {run["span_id"] for run in runs.values()}


def test_a_failure_is_recorded_once(cluster: Cluster) -> None:
    """A failing task: contrib's span is the error, with one exception event and jobtrace's outcome."""
    job_id = cluster.send("FailingJob", "movie_not_ready")
    (span,) = cluster.wait_for_job_spans(job_id)

    assert span["name"] == "run/FailingJob"
    assert span["status"] == "ERROR"
    assert [e["name"] for e in span["events"]].count("exception") == 1
    assert span["attributes"]["jobtrace.job.outcome"] == "failed"
    assert span["attributes"]["error.type"] == "ValueError"
