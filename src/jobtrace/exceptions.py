"""Errors jobtrace raises to its callers (never into a job: the job's hot path only logs)."""

from __future__ import annotations


class JobtraceError(Exception):
    """Base of every error jobtrace raises on purpose."""


class StoreError(JobtraceError):
    """The lineage store cannot be used: a bad URL, a missing driver, or a database out of reach."""
