"""The lineage side of jobtrace: every job run in SQL, the questions it answers, its upkeep.

Data flows recorder → store → queries: :mod:`~jobtrace.lineage.recorder` writes what jobs report,
:mod:`~jobtrace.lineage.store` owns the database and its schema, :mod:`~jobtrace.lineage.queries`
answers the questions, :mod:`~jobtrace.lineage.reaper` declares silent jobs crashed and
:mod:`~jobtrace.lineage.export` writes trees out.
"""

from jobtrace.lineage.queries import JobNotFoundError, LineageStore
from jobtrace.lineage.reaper import ReapResult, reap
from jobtrace.lineage.recorder import Recorder, get_recorder, start_recorder, stop_recorder
from jobtrace.lineage.store import default_url, upgrade

__all__ = [
    "JobNotFoundError",
    "LineageStore",
    "ReapResult",
    "Recorder",
    "default_url",
    "get_recorder",
    "reap",
    "start_recorder",
    "stop_recorder",
    "upgrade",
]
