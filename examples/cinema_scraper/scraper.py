"""Scenario 1's Celery app: a nightly cinema import that fails in the middle.

    SyncJob ─── MoviePageJob (one per movie) ─┬─ MovieDetailJob (one per page)
                                              └─ ShowtimeProcessJob (one per showtime)

The incident comes from configuration and data, not from special cases in the tasks:

- ``task_routes`` sends ``MovieDetailJob`` to the queue ``details``, which no worker consumes (its
  worker was retired): detail jobs pile up there, never run (the stuck stage).
- A showtime can only be stored once its movie's details are in the catalog. Movies seen on earlier
  nights are; tonight's new movies wait for their MovieDetailJob, which never comes, so their
  showtimes are rejected with ``movie_not_ready`` (the failing stage).
- The SyncJob schedules the pages the listing marks for the second pass with a countdown: they are
  queued on ``pages`` and not run yet.

The cinema's website is a JSON file (``listing.json``) and the catalog a folder of JSON files, both
under ``$CINEMA_DATA_DIR``, written by the driver (:func:`write_site`) and read by the tasks.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.exceptions import Reject

import jobtrace

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
#: Where the second pass starts: later than any demo lasts, earlier than Redis's visibility
#: timeout (1 h), past which an unacknowledged message would be delivered again.
SECOND_PASS = 45 * 60.0
#: The queue of each job; nothing consumes ``details``.
ROUTES = {
    "SyncJob": "sync",
    "MoviePageJob": "pages",
    "MovieDetailJob": "details",
    "ShowtimeProcessJob": "showtimes",
}

app = Celery("cinema_scraper", set_as_current=False)


def is_redis(broker_url: str) -> bool:
    """Whether the broker is Redis, where one key prefix isolates a whole run."""
    return urlsplit(broker_url).scheme in ("redis", "rediss")


def queue_names(broker_url: str, run: str) -> dict[str, str]:
    """The queue of each job name for one run.

    On Redis every key of the run carries the prefix ``<run>:`` (kombu's ``global_keyprefix``), so
    queues keep their plain names; on other brokers the run's name goes into the queue names, so
    the run never touches (or deletes) a queue of somebody else's.
    """
    if is_redis(broker_url) or not run:
        return dict(ROUTES)
    return {name: f"{run}-{queue}" for name, queue in ROUTES.items()}


def configure_app(broker_url: str, run: str) -> None:
    """Point the app at ``broker_url`` with the queues of ``run``; producer and workers alike."""
    queues = queue_names(broker_url, run)
    options: dict[str, Any] = {}
    if is_redis(broker_url) and run:
        options["global_keyprefix"] = f"{run}:"
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_routes={name: {"queue": queue} for name, queue in queues.items()},
        task_default_queue=queues["SyncJob"],
        task_ignore_result=True,
        worker_enable_remote_control=False,  # no pidbox queues to leave behind
        worker_hijack_root_logger=False,
    )


# -- the website and the catalog ------------------------------------------------------------------


@dataclass(frozen=True)
class Movie:
    """One movie of tonight's listing: its page's showtimes, and when the SyncJob visits it."""

    movie_id: str
    title: str
    showtimes: tuple[str, ...]
    second_pass: bool


def data_dir() -> Path:
    """The website and catalog of this run (``$CINEMA_DATA_DIR``)."""
    return Path(os.environ["CINEMA_DATA_DIR"])


def read_listing(directory: Path | None = None) -> list[Movie]:
    """Tonight's listing, as the SyncJob and the page jobs scrape it."""
    path = (directory or data_dir()) / "listing.json"
    movies = json.loads(path.read_text(encoding="utf-8"))
    return [Movie(**{**movie, "showtimes": tuple(movie["showtimes"])}) for movie in movies]


def has_details(movie_id: str, directory: Path | None = None) -> bool:
    """Whether the catalog holds the movie's details (fetched tonight or on an earlier night)."""
    return ((directory or data_dir()) / "catalog" / f"{movie_id}.json").exists()


def store_details(movie_id: str, title: str, directory: Path | None = None) -> None:
    """Put a movie's details into the catalog."""
    path = (directory or data_dir()) / "catalog" / f"{movie_id}.json"
    path.write_text(json.dumps({"movie_id": movie_id, "title": title}), encoding="utf-8")


WORDS = ("Night", "Harbor", "Glass", "Winter", "Signal", "Orchard", "Echo", "Iron", "Paper", "Moon")


def write_site(
    directory: Path, *, movies: int, showtimes: int, later: int, new: int, seed: int
) -> list[Movie]:
    """Tonight's listing and last night's catalog, drawn from ``seed``.

    Args:
        movies: Movies in the listing, one page each.
        showtimes: Average showtimes per page (at least one each).
        later: Pages for the second pass, scheduled by the SyncJob for later.
        new: Movies first seen tonight: not in the catalog until their MovieDetailJob runs.
    """
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(1, 10_000), movies))
    slots = [f"{hour:02d}:{minute:02d}" for hour in range(10, 24) for minute in (0, 15, 30, 45)]
    listing = []
    for index, number in enumerate(ids):
        count = min(len(slots), max(1, round(rng.gauss(showtimes, showtimes / 3))))
        listing.append(
            Movie(
                movie_id=f"cx-{number:04d}",
                title=f"{rng.choice(WORDS)} {rng.choice(WORDS)}",
                showtimes=tuple(sorted(rng.sample(slots, count))),
                second_pass=index >= movies - later,
            )
        )
    (directory / "catalog").mkdir(parents=True, exist_ok=True)
    for movie in rng.sample(listing, movies - new):
        store_details(movie.movie_id, movie.title, directory)
    payload = [{**movie.__dict__, "showtimes": list(movie.showtimes)} for movie in listing]
    (directory / "listing.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return listing


def _movie(movie_id: str) -> Movie:
    """One movie's page."""
    return next(movie for movie in read_listing() if movie.movie_id == movie_id)


# -- the jobs -------------------------------------------------------------------------------------


@app.task(name="SyncJob")
def sync_job(source: str) -> int:
    """Schedule one page job per movie of the listing; second-pass pages wait for later."""
    movies = read_listing()
    jobtrace.set_attribute("cinema.source", source)
    jobtrace.count(total=len(movies))
    for movie in movies:
        countdown = SECOND_PASS if movie.second_pass else None
        movie_page_job.apply_async(kwargs={"movie_id": movie.movie_id}, countdown=countdown)
        jobtrace.count(processed=1)
    return len(movies)


@app.task(name="MoviePageJob")
def movie_page_job(movie_id: str) -> int:
    """Scrape one movie's page: its details are fetched by one job, each showtime by another."""
    movie = _movie(movie_id)
    jobtrace.count(total=len(movie.showtimes) + 1)
    movie_detail_job.delay(movie_id=movie_id)
    for starts_at in movie.showtimes:
        showtime_process_job.delay(movie_id=movie_id, starts_at=starts_at)
    jobtrace.count(processed=len(movie.showtimes) + 1)
    return len(movie.showtimes)


@app.task(name="MovieDetailJob")
def movie_detail_job(movie_id: str) -> None:
    """Fetch the movie's details into the catalog (never runs tonight: nothing serves its queue)."""
    store_details(movie_id, _movie(movie_id).title)


@app.task(name="ShowtimeProcessJob", acks_late=True)
def showtime_process_job(movie_id: str, starts_at: str) -> str:
    """Store one showtime; rejected, not retried, when its movie is not in the catalog yet.

    ``Reject`` is Celery's way to drop a message (acknowledged late, so it really is dropped);
    jobtrace records it ``discarded`` with the reason, as ``jobtrace.discard(reason)`` would.
    """
    if not has_details(movie_id):
        raise Reject("movie_not_ready", requeue=False)
    jobtrace.count(processed=1)
    return f"{movie_id}@{starts_at}"
