"""`jobtrace demo`: scenario 1 on the local queue, one trace, and the same story in the store."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from jobtrace.lineage.queries import LineageStore

OPTIONS = ["--pages", "12", "--showtimes", "3", "--unrun-pages", "2"]
OPTIONS += ["--stuck-rate", "0.5", "--fail-rate", "0.3", "--seed", "5"]


def run_demo(url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "jobtrace", "demo", *OPTIONS, "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def span_table(out: str) -> dict[str, tuple[int, int]]:
    """The demo's "job spans failures" table."""
    rows = re.findall(r"^(\w+Job)\s+(\d+)\s+(\d+)$", out, flags=re.MULTILINE)
    return {name: (int(spans), int(failures)) for name, spans, failures in rows}


def test_demo_is_one_trace_and_agrees_with_the_lineage_store(tmp_path: Path) -> None:
    """Span counts per job match the store's stage table; stuck and failing stages are marked."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    out = run_demo(url)
    assert "traces:   1 (one per pipeline run)" in out
    root = re.search(r"^root job: (\w+)$", out, flags=re.MULTILINE)
    assert root is not None
    with LineageStore(url) as store:
        stages = store.stage_stats(root.group(1)).by_stage()
    spans = span_table(out)
    assert spans["SyncJob"] == (1, 0)
    assert stages[(1, "MoviePageJob")] == {"scheduled": 2, "succeeded": 10}  # the next pass
    assert spans["MoviePageJob"] == (10, 0)
    details = stages[(2, "MovieDetailJob")]
    assert spans["MovieDetailJob"] == (details["succeeded"], 0)
    assert sum(details.values()) == 10  # one detail job per page that ran
    assert details.get("queued", 0) > 0  # those on the queue nobody serves
    showtimes = stages[(2, "ShowtimeProcessJob")]
    assert spans["ShowtimeProcessJob"] == (sum(showtimes.values()), showtimes["discarded"])
    assert re.search(r"MovieDetailJob .*⚠ stuck", out)
    assert re.search(r"ShowtimeProcessJob .*✗ failing", out)
    assert "movie_not_ready" in out


def test_the_same_seed_replays_the_same_run(tmp_path: Path) -> None:
    """Counts depend on the seed alone, not on the order threads ran the jobs in."""
    first = span_table(run_demo(f"sqlite:///{tmp_path / 'a.db'}"))
    second = span_table(run_demo(f"sqlite:///{tmp_path / 'b.db'}"))
    assert first == second


def test_a_split_run_names_its_root_trace_and_counts_the_rest() -> None:
    """759 trace ids on one line labelled "one per pipeline run" was the old output."""
    from jobtrace.demo import TRACES_SHOWN, JobSpanCounter, _trace_lines

    counter = JobSpanCounter()
    counter.traces = {f"{n:032x}" for n in range(759)}
    counter.root_trace = f"{7:032x}"
    lines = _trace_lines(counter)
    assert lines[0] == f"trace id: {7:032x} (the root job's)\n"
    assert lines[1].startswith("traces:   759: the run is split")
    assert len(lines) == 2 + TRACES_SHOWN - 1 + 1
    assert lines[-1].strip() == "… and 754 more"  # the root trace and 4 shown
    assert "one per pipeline run" not in "".join(lines)
