"""The batch upload example (scenario 2) runs end to end on real RQ workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from redis import Redis

from tests.integrations.harness import ROOT
from tests.integrations.rq.conftest import REDIS_URL


def test_batch_upload_reports_the_crashed_batch_and_its_documents(
    redis_conn: Redis, tmp_path: Path
) -> None:
    """One child kills its horse: it is recorded crashed and the parent names its documents."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.batch_upload.run",
            "--documents",
            "12",
            "--batch-size",
            "4",
            "--heartbeat-timeout",
            "2",
            "--timeout",
            "60",
            "--redis-url",
            REDIS_URL,
            "--database-url",
            f"sqlite:///{tmp_path / 'lineage.db'}",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["batches"], report["done"], report["succeeded"]) == (3, 3, 2)
    (crashed,) = report["crashed"]
    assert "PMC 4402192" in crashed["documents"]
    assert len(crashed["documents"]) == 4
    assert "1 crashed" in result.stdout
    assert list(redis_conn.scan_iter(match="*batch-upload-*")) == []  # it cleaned up
