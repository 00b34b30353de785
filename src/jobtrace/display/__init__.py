"""What the CLI and the dashboard show, decided once: words, marks, formats, health, shortened args.

No I/O and no front end here: ``jobtrace.cli`` renders it as text and ``jobtrace.web`` as HTML, so
the two never disagree on what a state is called, when a run is stuck or how a duration reads.
"""

from jobtrace.display.health import (
    FAILING_SHARE,
    HEALTH_STATES,
    Health,
    HealthState,
    run_health,
    stuck_stage_count,
)
from jobtrace.display.text import (
    FAILING,
    STATE_ORDER,
    STUCK,
    short,
    shorten_args,
    span,
    state_order,
    when,
)

__all__ = [
    "FAILING",
    "FAILING_SHARE",
    "HEALTH_STATES",
    "STATE_ORDER",
    "STUCK",
    "Health",
    "HealthState",
    "run_health",
    "short",
    "shorten_args",
    "span",
    "state_order",
    "stuck_stage_count",
    "when",
]
