"""What the delivery tests share: a collector that counts requests, worker environments, job notes.

The workers are real (``celery worker``, ``rq worker``) with jobtrace's own OTLP HTTP exporters
pointed at a fault proxy (:mod:`tests.faults`) in front of a fake collector
(:mod:`tests.collector`). Each job pushes when it started and ended to a Redis list, so a test
can tell what the end of one job cost from the gap until the next one started.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import redis

import jobtrace
from tests.collector import FakeCollector

#: The Redis database of the delivery tests. Runs may overlap (one checkout, several people):
#: each test cleans up its own keys (:func:`forget`), never the whole database.
REDIS_URL = "redis://127.0.0.1:6379/6"
#: The folder of the jobtrace under test, first on the workers' path (the harness adds the rest).
SRC = Path(jobtrace.__file__).resolve().parents[1]


class CountingCollector(FakeCollector):
    """A fake collector that also counts the span export requests it got."""

    def __init__(self) -> None:
        self.trace_requests = 0
        super().__init__()

    def _receive(self, path: str, body: bytes) -> None:
        if path.endswith("/v1/traces"):
            self.trace_requests += 1  # one handler thread per connection: close enough
        super()._receive(path, body)

    def process_spans(self, name: str) -> int:
        """How many ``process <name>`` spans arrived."""
        return self.span_names.count(f"process {name}")


def worker_env(otlp_port: int, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a worker exporting to 127.0.0.1:``otlp_port``, recording to the store."""
    env = dict(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        JOBTRACE_DATABASE_URL=database_url,
        JOBTRACE_DELIVERY_REDIS=REDIS_URL,
        PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    )
    return {**env, **extra}


@dataclass(frozen=True)
class Note:
    """One job's run as the job itself noted it (``time.time()`` seconds)."""

    index: int
    pid: int
    started: float
    ended: float


def read_notes(client: redis.Redis, key: str) -> list[Note]:
    """The notes pushed to ``key``, in the order the jobs started."""
    raws = cast(list[bytes], client.lrange(key, 0, -1))
    notes = [Note(**json.loads(raw)) for raw in raws]
    return sorted(notes, key=lambda note: note.started)


def forget(client: redis.Redis, name: str) -> None:
    """Delete the keys whose name holds ``name`` (a test's queue and notes)."""
    keys = list(client.scan_iter(match=f"*{name}*"))
    if keys:
        client.delete(*keys)


def count_notes(client: redis.Redis, key: str) -> int:
    """How many jobs noted their run in ``key`` so far."""
    return cast(int, client.llen(key))


def gaps(notes: list[Note]) -> list[float]:
    """Seconds from each job's end to the next job's start (one worker running one at a time)."""
    return [after.started - before.ended for before, after in itertools.pairwise(notes)]
