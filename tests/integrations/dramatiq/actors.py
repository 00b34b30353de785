"""The actors of the Dramatiq tests: scenario 1's pipeline, and jobs that fail, retry, hang or expire.

Both the worker app and the test process declare them, on a queue named per test, with
:func:`declare_actors`; :func:`make_broker` picks Redis (database 4) or RabbitMQ.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.broker import Broker

import jobtrace

REDIS_URL = os.environ.get("JOBTRACE_DRAMATIQ_REDIS_URL", "redis://127.0.0.1:6379/4")
RABBITMQ_URL = os.environ.get("JOBTRACE_DRAMATIQ_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
BROKERS = ("redis", "rabbitmq")


def make_broker(kind: str) -> Broker:
    """A Redis or RabbitMQ broker with Dramatiq's default middleware."""
    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=REDIS_URL)
    if kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=RABBITMQ_URL)
    raise ValueError(f"unknown broker {kind!r}")


@dataclass(frozen=True)
class Actors:
    """The actors declared on one queue of one broker."""

    sync: Any
    page: Any
    detail: Any
    failing: Any
    flaky: Any
    hang: Any
    quick: Any
    expired: Any


def declare_actors(broker: Broker, queue: str) -> Actors:
    """Declare every test actor on ``queue``; job names are the actor names."""

    def actor(name: str, **options: Any) -> Any:
        return dramatiq.actor(actor_name=name, queue_name=queue, broker=broker, **options)

    @actor("SyncJob", max_retries=0)
    def sync_job(pages: int, details: int) -> None:
        jobtrace.count(total=pages)
        for page in range(pages):
            movie_page.send(page, details)
            jobtrace.count(processed=1)

    @actor("MoviePageJob", max_retries=0)
    def movie_page(page: int, details: int) -> None:
        for detail in range(details):
            movie_detail.send(page, detail)

    @actor("MovieDetailJob", max_retries=0)
    def movie_detail(page: int, detail: int) -> None:
        jobtrace.set_attribute("movie.page", page)
        jobtrace.count(processed=1)

    @actor("FailingJob", max_retries=0)
    def failing(reason: str) -> None:
        raise ValueError(reason)

    @actor("FlakyJob", max_retries=2, min_backoff=50, max_backoff=200)
    def flaky(service: str) -> None:
        raise ConnectionError(f"{service} unavailable")

    @actor("HangJob", max_retries=0)
    def hang(seconds: float) -> None:
        jobtrace.progress(0, 1)
        time.sleep(seconds)

    @actor("QuickJob", max_retries=0)
    def quick(number: int) -> None:
        jobtrace.set_attribute("number", number)

    @actor("ExpiredJob", max_age=1)
    def expired() -> None:
        raise AssertionError("an expired message must never run")

    return Actors(
        sync=sync_job,
        page=movie_page,
        detail=movie_detail,
        failing=failing,
        flaky=flaky,
        hang=hang,
        quick=quick,
        expired=expired,
    )
