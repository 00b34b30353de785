"""The result types live in jobtrace.lineage.results and stay importable from queries."""

from __future__ import annotations

from jobtrace.lineage import queries, results


def test_every_result_name_is_re_exported_by_queries() -> None:
    """Users' ``from jobtrace.lineage.queries import JobRow`` (and every other name) still works."""
    for name in results.__all__:
        assert getattr(queries, name) is getattr(results, name), name
        assert name in queries.__all__, name
    assert "LineageStore" in queries.__all__
    assert queries.JOBS.name == "jobtrace_jobs"  # scripts read the table from here too


def test_a_placeholder_row_is_neither_a_root_nor_lost() -> None:
    """A row the store only knows by name (attempt 0, unknown) is a placeholder, not lost track."""
    fields = dict.fromkeys(results.JobRow.__dataclass_fields__)
    row = results.JobRow(**{**fields, "job_id": "p", "name": "?", "state": "unknown", "attempt": 0})
    assert (row.is_placeholder, row.lost_track, row.is_root, row.duration) == (
        True,
        False,
        False,
        None,
    )
