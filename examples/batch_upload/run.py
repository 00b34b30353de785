"""Scenario 2 end to end: a batch upload whose worker dies, watched through the lineage store.

    python -m examples.batch_upload.run [--documents 23] [--batch-size 5]

Starts two ``rq worker`` processes (one for the upload, one for its batches), enqueues the upload,
and plays the reaper, as ``jobtrace reap`` from cron would, until the upload job reports. Needs Redis
(``--redis-url``, default ``$REDIS_URL`` or ``redis://127.0.0.1:6379/0``); the lineage store is
``--database-url``, else ``$JOBTRACE_DATABASE_URL``, else a new SQLite file in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

import jobtrace
from examples.batch_upload.upload import process_upload, write_upload
from jobtrace.integrations.rq import instrument_rq
from jobtrace.lineage import upgrade
from jobtrace.lineage.reaper import reap

ROOT = Path(__file__).resolve().parents[2]
WORKER_CLASS = "examples.batch_upload.worker.Worker"
DONE = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
#: The workers heartbeat every second, so three missed heartbeats (the reaper's rule) take 3 s.
HEARTBEAT_INTERVAL = "1"


def start_worker(redis_url: str, queue: str, database_url: str) -> subprocess.Popen[bytes]:
    """An ``rq worker`` process of its own (and its own process group) on one queue."""
    env = {
        **os.environ,
        "JOBTRACE_DATABASE_URL": database_url,
        "JOBTRACE_HEARTBEAT_INTERVAL": HEARTBEAT_INTERVAL,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "rq.cli", "worker", "--quiet", "--url", redis_url]
    command += ["--worker-class", WORKER_CLASS, queue]
    return subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown of a worker and its work horse; SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def reap_until_done(
    parent: Job, database_url: str, heartbeat_timeout: float, timeout: float
) -> None:
    """The reaper's loop: declare silent jobs crashed until the upload job has finished."""
    deadline = time.monotonic() + timeout
    while parent.get_status() not in DONE:
        for job_id in reap(database_url, heartbeat_timeout=heartbeat_timeout).crashed:
            print(f"reaper: job {job_id} sent no heartbeat for {heartbeat_timeout:g}s: crashed")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the upload job did not finish in {timeout:g}s")
        time.sleep(0.5)


def delete_keys(connection: Redis, queues: Sequence[Queue]) -> None:
    """Remove what the run left in Redis: its queues, registries, jobs and results."""
    job_ids: set[str] = set()
    for queue in queues:
        job_ids.update(queue.job_ids)
        for registry in (
            queue.finished_job_registry,
            queue.failed_job_registry,
            queue.started_job_registry,
            queue.canceled_job_registry,
            queue.deferred_job_registry,
            queue.scheduled_job_registry,
        ):
            job_ids.update(registry.get_job_ids())
    patterns = [f"*{queue.name}*" for queue in queues] + [f"*{job_id}*" for job_id in job_ids]
    for pattern in patterns:
        keys = list(connection.scan_iter(match=pattern))
        if keys:
            connection.delete(*keys)


def run(
    *,
    documents: int,
    batch_size: int,
    redis_url: str,
    database_url: str,
    heartbeat_timeout: float,
    timeout: float,
    workdir: Path,
) -> dict[str, Any]:
    """Upload, watch, reap; returns the upload job's report."""
    os.environ["JOBTRACE_DATABASE_URL"] = database_url
    upload = write_upload(workdir / "annotations.jsonl", documents)
    upgrade(database_url)  # the tables exist before the workers write or this process reads
    jobtrace.configure(service_name="batch-upload", database_url=database_url, console=False)
    instrument_rq(database_url=database_url)
    connection = Redis.from_url(redis_url)
    name = f"batch-upload-{uuid.uuid4().hex[:8]}"
    uploads = Queue(name, connection=connection)
    batches = Queue(f"{name}-batches", connection=connection)
    workers = [start_worker(redis_url, queue.name, database_url) for queue in (uploads, batches)]
    try:
        parent = uploads.enqueue(
            process_upload, str(upload), batch_size, batches.name, timeout, job_timeout=timeout + 30
        )
        print(f"enqueued upload job {parent.id}: {documents} documents, batches of {batch_size}")
        reap_until_done(parent, database_url, heartbeat_timeout, timeout)
        report = parent.return_value()
        if not isinstance(report, dict):
            raise RuntimeError(f"the upload job ended {parent.get_status()}: {parent.exc_info}")
        return report
    finally:
        for worker in workers:
            stop_worker(worker)
        delete_keys(connection, (uploads, batches))
        connection.close()
        jobtrace.flush(5.0)


def describe(report: dict[str, Any], database_url: str) -> list[str]:
    """The report as the person who uploaded wants to read it."""
    lines = [
        f"upload of {report['documents']} documents in {report['batches']} batches: "
        f"{report['done']}/{report['batches']} done, {report['succeeded']} succeeded, "
        f"{report['failed']} failed, {len(report['crashed'])} crashed",
    ]
    for batch in report["crashed"]:
        lines.append(f"  batch {batch['batch']} crashed (job {batch['job_id']}); it held:")
        lines += [f"    {document}" for document in batch["documents"]]
    lines.append(
        f"see it again: jobtrace --database-url {database_url} children {report['upload_job_id']}"
    )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario; exit 0 when the upload reported every batch as done."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=23, help="documents in the upload (23)")
    parser.add_argument("--batch-size", type=int, default=5, help="documents per batch (5)")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--database-url", default=os.environ.get("JOBTRACE_DATABASE_URL"))
    parser.add_argument(
        "--heartbeat-timeout", type=float, default=3.0, help="seconds of silence = crashed (3)"
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="give up after (90 s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="batch-upload-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'lineage.db'}"
    report = run(
        documents=args.documents,
        batch_size=args.batch_size,
        redis_url=args.redis_url,
        database_url=database_url,
        heartbeat_timeout=args.heartbeat_timeout,
        timeout=args.timeout,
        workdir=workdir,
    )
    if args.json:
        print(json.dumps(report))
    else:
        print("\n".join(describe(report, database_url)))
    return 0 if report["done"] == report["batches"] else 1


if __name__ == "__main__":
    sys.exit(main())
