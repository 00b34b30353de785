"""The run's stages as they were spawned, drawn as an SVG graph: no script, no library.

A column per depth, a box per stage (its job name and how many jobs it has, taller for more
jobs, marked stuck or failing), an arrow from each stage to the stages its jobs spawned (the
stage's parents by name, one level up). Every box links to the stage's job list. The picture is
made on the server from the same stage tree as the table, so it says nothing the table does not;
it shows the shape of a pipeline at a glance, which no queue's dashboard draws for jobs spawned at
run time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from html import escape

from markupsafe import Markup

from jobtrace.lineage.queries import UNKNOWN_DEPTH, Overview, Stage, StageTree
from jobtrace.web.links import Urls

#: Stages drawn at most; a bigger tree gets the table alone (and a sentence saying so).
MAX_STAGES = 120
COLUMN = 210
BOX_WIDTH = 170
ROW_GAP = 14
MARGIN = 10
MIN_HEIGHT = 44
MAX_HEIGHT = 84

Key = tuple[int, str]


def stage_graph(
    tree: StageTree,
    *,
    stuck: Collection[Key],
    failing: Collection[Key],
    href: Callable[[Stage], str],
) -> Markup | None:
    """The SVG of ``tree``'s stages, or ``None`` when there are too many (or none) to draw.

    Args:
        stuck: ``(depth, name)`` of the stages the page marks stuck.
        failing: Those it marks failing.
        href: The link of a stage's box (its job list).
    """
    stages = [stage for stage in tree.stages if stage.depth != UNKNOWN_DEPTH]
    if not stages or len(stages) > MAX_STAGES:
        return None
    biggest = max(stage.total for stage in stages) or 1
    columns: dict[int, list[Stage]] = {}
    for stage in sorted(stages, key=lambda s: (s.depth, -s.total, s.name)):
        columns.setdefault(stage.depth, []).append(stage)
    depths = sorted(columns)
    place: dict[Key, tuple[float, float, float]] = {}  # x, y, height
    tallest = 0.0
    for column, depth in enumerate(depths):
        y = float(MARGIN)
        for stage in columns[depth]:
            height = _height(stage.total, biggest)
            place[(stage.depth, stage.name)] = (MARGIN + column * COLUMN, y, height)
            y += height + ROW_GAP
        tallest = max(tallest, y)
    width = MARGIN * 2 + (len(depths) - 1) * COLUMN + BOX_WIDTH
    parts = [
        f'<svg class="stage-graph" xmlns="http://www.w3.org/2000/svg" role="img"'
        f' viewBox="0 0 {width} {tallest + MARGIN:.0f}" width="{width}"'
        f' height="{tallest + MARGIN:.0f}" aria-label="The run\'s stages as they were spawned">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6"'
        ' markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    for stage in stages:
        x, y, height = place[(stage.depth, stage.name)]
        for parent_name in stage.parent_names:
            above = place.get((stage.depth - 1, parent_name))
            if above is None:
                continue
            px, py, ph = above
            parts.append(
                f'<line class="edge" x1="{px + BOX_WIDTH:.0f}" y1="{py + ph / 2:.0f}"'
                f' x2="{x:.0f}" y2="{y + height / 2:.0f}" marker-end="url(#arrow)"/>'
            )
    for stage in stages:
        key = (stage.depth, stage.name)
        x, y, height = place[key]
        health = "failing" if key in failing else "stuck" if key in stuck else "ok"
        mark = {"failing": " ✗", "stuck": " ⚠", "ok": ""}[health]
        label = _fit(stage.name, 22)
        title = f"{stage.name}: {stage.total:,} jobs at depth {stage.depth}"
        parts.append(
            f'<a href="{escape(href(stage))}" class="node {health}">'
            f"<title>{escape(title)}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_WIDTH}" height="{height:.0f}" rx="4"/>'
            f'<text x="{x + 8:.0f}" y="{y + 18:.0f}">{escape(label)}{mark}</text>'
            f'<text class="count" x="{x + 8:.0f}" y="{y + height - 8:.0f}">'
            f"{stage.total:,} jobs</text></a>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _height(total: int, biggest: int) -> float:
    """Taller for more jobs, by the logarithm: a stage of 10 is visible beside one of 100,000."""
    share = math.log1p(total) / math.log1p(biggest) if biggest > 0 else 0.0
    return MIN_HEIGHT + (MAX_HEIGHT - MIN_HEIGHT) * share


def _fit(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def run_graph(overview: Overview, urls: Urls) -> Markup | None:
    """:func:`stage_graph` of a run page's overview, each box linking to its stage's job list."""
    root = overview.tree.root.job_id
    return stage_graph(
        overview.tree,
        stuck={(item.depth, item.name) for item in overview.stuck},
        failing={(item.depth, item.name) for item in overview.failing},
        href=lambda stage: urls.jobs({"run": root, "depth": stage.depth, "name": stage.name}),
    )
