"""What every instrumentor does the same way: switch lineage recording on, find out what is on."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("jobtrace")


def recording_enabled(record: bool | None) -> bool:
    """An explicit choice wins; otherwise ``JOBTRACE_RECORD=0`` switches recording off."""
    if record is not None:
        return record
    return os.environ.get("JOBTRACE_RECORD", "1") != "0"


def start_recording(record: bool | None = None, database_url: str | None = None) -> None:
    """Start the lineage recorder (once per process); a store that fails costs a warning."""
    if not recording_enabled(record):
        return
    try:
        from jobtrace.lineage.recorder import start_recorder

        start_recorder(database_url)
    except Exception as error:
        logger.warning("jobtrace: lineage recording is off: %s", error)
