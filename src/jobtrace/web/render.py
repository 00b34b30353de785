"""From a view to HTML: the Jinja2 environment the templates in ``templates/`` render with.

Autoescape is on for every template, so a value from the store (ids, names, args, errors: hostile
until escaped) only reaches a page as text, and URLs only through :mod:`jobtrace.web.links`. No
HTML is built in Python: this module only hands the templates formatting filters. Jinja2 is
imported when a renderer is made, so ``jobtrace.web`` imports without the ``web`` extra and says
what to install instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from jobtrace.display import (
    FAILING,
    STATE_ORDER,
    STUCK,
    short,
    shorten_args,
    span,
    state_order,
    when,
)
from jobtrace.lineage.queries import FAILURES, JobRow
from jobtrace.web.graph import run_graph

if TYPE_CHECKING:
    import jinja2

__all__ = ["MISSING_JINJA2", "Renderer"]

MISSING_JINJA2 = "the dashboard needs Jinja2: pip install 'jobtrace[web]'"
#: Fields of a job shown as a block of text rather than inline.
LONG_FIELDS = frozenset({"args", "error_message", "reason"})
#: What the cause of a job is to it, in words.
RELATIONS = {
    "self": "the job itself",
    "ancestor": "an ancestor",
    "descendant": "a descendant",
    "sibling": "an earlier sibling, as a failed dependency would be",
}


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a job as the fields table shows it; ``kind`` picks how."""

    name: str
    value: Any
    kind: str  # "none", "job", "trace", "long", "time" or "text"


class Renderer:
    """The templates, loaded once; thread-safe (Jinja2 environments are).

    Raises:
        ValueError: Jinja2 is not installed (the message says how to install it).
    """

    def __init__(self) -> None:
        try:
            import jinja2
        except ImportError:
            raise ValueError(MISSING_JINJA2) from None
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("jobtrace.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters.update(
            num=_num,
            when=when,
            span=span,
            short=short,
            percent=_percent,
            state_class=_state_class,
            state_order=state_order,
        )
        self.env.globals.update(
            STUCK=STUCK,
            FAILING=FAILING,
            FAILURES=FAILURES,
            RELATIONS=RELATIONS,
            job_fields=job_fields,
            counts_in_order=counts_in_order,
            args_cut=_args_cut,
            stage_graph=run_graph,
            zip=zip,
        )

    def render(self, template: str, **context: Any) -> str:
        """One page: ``template`` (a file in ``templates/``) with ``context``."""
        return self.template(template).render(**context)

    def template(self, name: str) -> jinja2.Template:
        """A template by file name."""
        return self.env.get_template(name)


def job_fields(job: JobRow) -> Iterator[Field]:
    """Every column of a job, with how to show it (ids link to their job, trace ids to the trace)."""
    for column in dataclasses.fields(job):
        value = getattr(job, column.name)
        if value is None:
            kind = "none"
        elif column.name in ("parent_job_id", "root_job_id"):
            kind = "job"
        elif column.name == "trace_id":
            kind = "trace"
        elif column.name in LONG_FIELDS:
            kind = "long"
        elif isinstance(value, datetime):
            kind = "time"
        else:
            kind = "text"
        yield Field(column.name, value, kind)


_KNOWN_STATES = frozenset(STATE_ORDER) | {"unknown"}


def _state_class(state: str) -> str:
    """The CSS class of a state; an unknown state (a newer jobtrace's) gets a neutral one."""
    return f"s-{state}" if state in _KNOWN_STATES else "s-other"


def _num(value: int) -> str:
    return f"{value:,}"


def _percent(value: float, digits: int = 0) -> str:
    return f"{value:.{digits}%}"


def counts_in_order(states: Mapping[str, int]) -> list[tuple[str, int]]:
    """A state → count mapping in reading order."""
    return [(state, states[state]) for state in state_order(states)]


def _args_cut(texts: Iterable[str | None], width: int) -> list[str]:
    """The args of the jobs a page lists together, each cut where they differ (as the CLI does)."""
    return shorten_args(list(texts), width)
