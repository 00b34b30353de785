"""Scenario 2's jobs: a parent that cuts an upload into batches and watches them, and the batches.

The parent, :func:`process_upload`, enqueues one :func:`import_batch` per batch and then waits,
reading its children's progress from the lineage store: each child is pending, running or done
(succeeded, failed or crashed), so ``done / total`` stays exact even when a child's process dies
without a word. A document with a corrupt figure "segfaults" the batch that serializes it: the
work horse kills itself, no exception handler runs, and only the reaper can tell it crashed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rq import Queue, get_current_job

import jobtrace
from jobtrace.lineage.queries import LineageStore, Progress

#: The document that brings its batch down, as in the incident.
POISON = {"source": "PMC", "id": "4402192"}
LABELS = ("gene", "disease", "chemical", "species", "variant")


def write_upload(path: Path, documents: int, *, seed: int = 7) -> Path:
    """A JSONL upload of annotated documents, one of them carrying a corrupt figure."""
    rng = random.Random(seed)
    ids = rng.sample(range(1_000_000, 9_999_999), documents - 1)
    poison_at = rng.randrange(documents)
    with path.open("w", encoding="utf-8") as stream:
        for index in range(documents):
            if index == poison_at:
                document: dict[str, Any] = {**POISON, "figure": "corrupt-tiff"}
            else:
                document = {"source": rng.choice(("PMC", "PubMed")), "id": str(ids.pop())}
            document["annotations"] = [
                {"label": rng.choice(LABELS), "start": start, "end": start + rng.randint(3, 12)}
                for start in sorted(rng.sample(range(0, 2000), rng.randint(1, 4)))
            ]
            stream.write(json.dumps(document) + "\n")
    return path


def read_upload(path: str | Path) -> Iterator[dict[str, Any]]:
    """The documents of an upload, in order."""
    with Path(path).open(encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def serialize(document: dict[str, Any]) -> bytes:
    """Serialize one document; a corrupt figure takes the process down, as the C library did."""
    if document.get("figure") == "corrupt-tiff":
        os.kill(os.getpid(), signal.SIGKILL)  # a segfault: no exception, no handler, no report
    return json.dumps(document, sort_keys=True).encode()


def import_batch(upload: str, batch: int, documents: list[dict[str, str]]) -> int:
    """Import one batch: the documents it names, by source and id (recorded with the job)."""
    wanted = {(doc["source"], doc["id"]) for doc in documents}
    found = [doc for doc in read_upload(upload) if (doc["source"], doc["id"]) in wanted]
    jobtrace.count(total=len(found))
    for document in found:
        serialize(document)
        time.sleep(0.05)  # the database write
        jobtrace.count(processed=1)
    return len(found)


def process_upload(
    upload: str, batch_size: int, batch_queue: str, wait_timeout: float = 120.0
) -> dict[str, Any]:
    """Cut the upload into batches, enqueue one child each, and wait for all of them to be done."""
    job = get_current_job()
    assert job is not None, "process_upload runs as an RQ job"
    me = jobtrace.current_job()
    assert me is not None, "process_upload runs with jobtrace instrumenting RQ"
    refs = [{"source": doc["source"], "id": doc["id"]} for doc in read_upload(upload)]
    batches = [refs[start : start + batch_size] for start in range(0, len(refs), batch_size)]
    queue = Queue(batch_queue, connection=job.connection)
    for number, documents in enumerate(batches, 1):
        queue.enqueue(import_batch, upload=upload, batch=number, documents=documents)
    jobtrace.set_attributes({"upload.documents": len(refs), "upload.batches": len(batches)})

    progress = _wait_for_children(me.job_id, len(batches), wait_timeout)
    crashed = [_crashed_batch(row) for row in progress.problems if row.state == "crashed"]
    jobtrace.count(processed=progress.succeeded, failed=progress.failed + progress.crashed)
    return {
        "upload_job_id": me.job_id,
        "documents": len(refs),
        "batches": len(batches),
        "done": progress.done,
        "succeeded": progress.succeeded,
        "failed": progress.failed,
        "crashed": crashed,
    }


def _wait_for_children(parent_id: str, expected: int, timeout: float) -> Progress:
    """Poll the lineage store until every child is done; each poll also reports our progress."""
    deadline = time.monotonic() + timeout
    shown = None
    with LineageStore() as store:  # JOBTRACE_DATABASE_URL, as the recorder writes it
        while True:
            progress = store.progress(parent_id)
            total = max(progress.total, expected)  # the last enqueues may not be written yet
            jobtrace.progress(progress.done, total)  # also this job's heartbeat
            line = (
                f"upload progress: {progress.done}/{total} batches done "
                f"({progress.succeeded} succeeded, {progress.failed} failed, "
                f"{progress.crashed} crashed, {progress.running} running, "
                f"{progress.pending} pending)"
            )
            if line != shown:
                print(line, flush=True)
                shown = line
            if progress.total >= expected and progress.complete:
                return progress
            if time.monotonic() > deadline:
                raise TimeoutError(f"children of {parent_id} not done after {timeout:g}s: {line}")
            time.sleep(0.3)


def _crashed_batch(row: Any) -> dict[str, Any]:
    """What a crashed child held, from the arguments the lineage store recorded for it."""
    try:
        args = json.loads(row.args or "{}")
        documents = [f"{doc['source']} {doc['id']}" for doc in args["documents"]]
        batch = args["batch"]
    except (ValueError, KeyError, TypeError):  # arguments not recorded, or cut short
        documents, batch = [], None
    return {"job_id": row.job_id, "batch": batch, "documents": documents}
