"""A producer without jobtrace: ``python -m tests.integrations.conformance.plain_producer`` < spec.

Reads a JSON spec on stdin, ``{"adapter", "broker_url", "queue", "messages": [{"name", "args",
"job_id", "metadata"}]}``, enqueues each message through the queue library's own API only (with
``metadata``, when given, written by hand where jobtrace's metadata travels for that library, as a
producer in another language would) and prints the job ids, one per line. jobtrace is never
imported: the process checks that before it exits.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
from typing import Any

Message = dict[str, Any]


def celery(url: str, queue: str, messages: list[Message]) -> list[str]:
    """Message headers."""
    from celery import Celery

    app = Celery("plain-producer", broker=url, set_as_current=False)
    try:
        return [
            str(
                app.send_task(
                    m["name"],
                    args=m["args"],
                    queue=queue,
                    task_id=m["job_id"],
                    headers=m["metadata"],
                ).id
            )
            for m in messages
        ]
    finally:
        app.close()


def rq(url: str, queue: str, messages: list[Message]) -> list[str]:
    """``job.meta``."""
    from redis import Redis
    from rq import Queue

    target = Queue(queue, connection=Redis.from_url(url))
    return [
        target.enqueue(m["name"], *m["args"], job_id=m["job_id"], meta=m["metadata"]).id
        for m in messages
    ]


def arq(url: str, queue: str, messages: list[Message]) -> list[str]:
    """The ``"jobtrace"`` entry of the stored job dict."""
    from arq.connections import RedisSettings, create_pool

    metadata: list[Any] = [None]

    def serialize(job: dict[str, Any]) -> bytes:
        if metadata[0] is not None:
            job = {**job, "jobtrace": metadata[0]}
        return pickle.dumps(job)

    async def send() -> list[str]:
        pool = await create_pool(
            RedisSettings.from_dsn(url), default_queue_name=queue, job_serializer=serialize
        )
        ids = []
        try:
            for m in messages:
                metadata[0] = m["metadata"]
                job = await pool.enqueue_job(m["name"], *m["args"], _job_id=m["job_id"])
                assert job is not None, f"arq refused {m['job_id']}"
                ids.append(job.job_id)
        finally:
            await pool.aclose()
        return ids

    return asyncio.run(send())


def dramatiq(url: str, queue: str, messages: list[Message]) -> list[str]:
    """``message.options["jobtrace"]``."""
    import dramatiq as library
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=url)
    broker.declare_queue(queue)
    ids = []
    try:
        for m in messages:
            options = {} if m["metadata"] is None else {"jobtrace": m["metadata"]}
            extra = {"message_id": m["job_id"]} if m["job_id"] else {}
            message = library.Message(
                queue_name=queue,
                actor_name=m["name"],
                args=tuple(m["args"]),
                kwargs={},
                options=options,
                **extra,
            )
            ids.append(broker.enqueue(message).message_id)
    finally:
        broker.close()
    return ids


def main() -> None:
    """Enqueue the spec's messages, print their ids."""
    spec = json.load(sys.stdin)
    send = {"celery": celery, "rq": rq, "arq": arq, "dramatiq": dramatiq}[spec["adapter"]]
    ids = send(spec["broker_url"], spec["queue"], spec["messages"])
    assert not [name for name in sys.modules if name.split(".")[0] == "jobtrace"], (
        "jobtrace imported"
    )
    print("\n".join(ids))


if __name__ == "__main__":
    main()
