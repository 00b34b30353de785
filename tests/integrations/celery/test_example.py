"""The cinema scraper example (scenario 1) runs end to end on real Celery workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from redis import Redis

from tests.integrations.harness import ROOT
from tests.services import require

#: A database no other test empties: the example cleans up after itself, and the test checks it.
REDIS_URL = "redis://127.0.0.1:6379/5"


def test_cinema_scraper_shows_stuck_details_and_failing_showtimes(tmp_path: Path) -> None:
    """Details wait on their dead queue, new movies' showtimes are discarded, all counted."""
    require("redis")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.cinema_scraper.run",
            *("--movies", "6", "--showtimes", "3", "--later", "2", "--new", "3", "--seed", "11"),
            *("--broker-url", REDIS_URL, "--database-url", f"sqlite:///{tmp_path / 'lineage.db'}"),
            *("--timeout", "30", "--json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = report["expected"]
    assert (expected["pages"], expected["pages_run"], expected["details"]) == (6, 4, 4)
    # 3 of the 6 movies are new and 2 pages wait: pages of new and of known movies both ran.
    assert 0 < expected["not_ready"] < expected["showtimes"]

    stages = {stage["name"]: stage for stage in report["stages"]}
    assert stages["SyncJob"]["states"] == {"succeeded": 1}
    assert stages["MoviePageJob"]["states"] == {"succeeded": 4, "scheduled": 2}
    details, showtimes = stages["MovieDetailJob"], stages["ShowtimeProcessJob"]
    # Every page that ran spawned its detail job and its showtimes.
    assert (details["total"], details["parents"], details["states"]) == (4, 4, {"queued": 4})
    assert (showtimes["total"], showtimes["parents"]) == (expected["showtimes"], 4)
    assert showtimes["states"] == {
        "discarded": expected["not_ready"],
        "succeeded": expected["showtimes"] - expected["not_ready"],
    }

    stuck = {entry["name"]: entry for entry in report["stuck"]}
    assert stuck["MovieDetailJob"]["queue"] == "details"
    assert stuck["MovieDetailJob"]["active"] == 4
    assert set(report["stuck_stages"]) == {"MovieDetailJob"}  # later pages are scheduled
    assert report["failing_stages"] == ["ShowtimeProcessJob"]
    assert report["errors"] == {"ShowtimeProcessJob": {"movie_not_ready": expected["not_ready"]}}
    assert len(report["trace_id"]) == 32

    connection = Redis.from_url(REDIS_URL)
    try:
        assert list(connection.scan_iter(match=f"*{report['run']}*")) == []  # it cleaned up
    finally:
        connection.close()
