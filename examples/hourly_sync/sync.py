"""Scenario 4: an hourly sync started by cron, pushing users to three SaaS services in turn.

The run is the root of its own trace and lineage (cron gives it no parent). Each service is a
section span, each user pushed is a span under it, and errors and response details are fields, so
the waterfall shows which section eats the hour and a query on ``user.email`` finds the runs that
touched a user. The services here are simulated: latency and failures are drawn at random.

    python -m examples.hourly_sync.sync --users 25
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import jobtrace


class ServiceError(Exception):
    """A SaaS API answered with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status


@dataclass(frozen=True)
class Service:
    """A simulated SaaS API: how slow it is and how often it fails."""

    name: str
    latency: float
    failure_rate: float

    def push(self, email: str, rng: random.Random) -> int:
        """Push one user; returns the HTTP status, raises ServiceError on failure."""
        time.sleep(rng.uniform(0.5, 1.5) * self.latency)
        if rng.random() < self.failure_rate:
            raise ServiceError(429 if rng.random() < 0.5 else 502, f"{self.name} refused {email}")
        return 200


SERVICES = (
    Service("crm", latency=0.010, failure_rate=0.05),
    Service("support", latency=0.001, failure_rate=0.02),
    Service("billing", latency=0.001, failure_rate=0.02),
)


def sync_section(service: Service, emails: Sequence[str], rng: random.Random) -> None:
    """Push every user to one service; a failing user is recorded and the section goes on."""
    with jobtrace.section(f"sync {service.name}", {"saas.service": service.name}) as section:
        failed = 0
        for email in emails:
            with jobtrace.section("push user", {"user.email": email}) as user_span:
                try:
                    status = service.push(email, rng)
                    user_span.set_attribute("http.response.status_code", status)
                    jobtrace.count(processed=1)
                except ServiceError as error:
                    failed += 1
                    user_span.set_attribute("http.response.status_code", error.status)
                    user_span.set_attribute("error.type", str(error.status))
                    jobtrace.record_error(error, {"user.email": email})
                    jobtrace.count(failed=1)
        section.set_attribute("saas.users_failed", failed)


def hourly_sync(users: int, seed: int) -> None:
    """The cron job's body: every service in turn."""
    rng = random.Random(seed)
    emails = [f"user{n:03d}@example.com" for n in range(users)]
    jobtrace.count(total=users * len(SERVICES))
    jobtrace.set_attributes({"sync.users": users, "sync.seed": seed})
    for index, service in enumerate(SERVICES):
        sync_section(service, emails, rng)
        jobtrace.progress(index + 1, len(SERVICES))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sync, as cron would; prints the job id and trace id."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=25)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    jobtrace.configure(service_name="hourly-sync", console=False)
    with jobtrace.trace_job(None, name="HourlySync", queue="cron") as run:
        hourly_sync(args.users, seed)
    jobtrace.flush(10.0)
    assert run.info is not None
    print(f"job {run.info.job_id} {run.state}: trace {run.info.trace_id}")
    print(f"see it: jobtrace tree {run.info.job_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
