"""The stage graph of a run page: a box per stage, an arrow per spawn, marks, links, escaping."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

from jobtrace.lineage.queries import JobRow, LineageStore, Stage, StageTree
from jobtrace.web.graph import MAX_STAGES, run_graph, stage_graph
from jobtrace.web.links import Urls
from tests.web.support import HOSTILE_NAME, HOSTILE_ROOT, build

SVG = "{http://www.w3.org/2000/svg}"


def nodes(svg: str) -> dict[str, ElementTree.Element]:
    """Each box's ``<a>``, by the job name in its title."""
    root = ElementTree.fromstring(svg)
    found = {}
    for link in root.iter(f"{SVG}a"):
        title = link.find(f"{SVG}title")
        assert title is not None
        assert title.text is not None
        found[title.text.split(":", 1)[0]] = link
    return found


def test_the_cinema_run_draws_every_stage_linked_and_marked(sqlite_url: str) -> None:
    stored = build(sqlite_url)
    with LineageStore(sqlite_url) as store:
        overview = store.overview(stored.run.root)
    svg = run_graph(overview, Urls("/ops"))
    assert svg is not None
    boxes = nodes(str(svg))
    assert set(boxes) == {stage.name for stage in overview.tree.stages}
    assert "stuck" in boxes["MovieDetailJob"].attrib["class"]
    assert "failing" in boxes["ShowtimeProcessJob"].attrib["class"]
    assert boxes["PriceJob"].attrib["class"] == "node ok"
    href = urlsplit(boxes["MovieDetailJob"].attrib["href"])
    assert href.path == "/ops/list"
    assert parse_qs(href.query) == {
        "run": [stored.run.root],
        "depth": ["2"],
        "name": ["MovieDetailJob"],
    }
    edges = list(ElementTree.fromstring(str(svg)).iter(f"{SVG}line"))
    spawned = sum(
        1
        for stage in overview.tree.stages
        for parent in stage.parent_names
        if any(s.depth == stage.depth - 1 and s.name == parent for s in overview.tree.stages)
    )
    assert len(edges) == spawned > 0


def test_hostile_names_are_text_not_markup(sqlite_url: str) -> None:
    build(sqlite_url)
    with LineageStore(sqlite_url) as store:
        svg = str(run_graph(store.overview(HOSTILE_ROOT), Urls()))
    assert "<b " not in svg
    assert HOSTILE_NAME[:10] in "".join(ElementTree.fromstring(svg).itertext())


def test_too_many_stages_are_left_to_the_table() -> None:
    root = JobRow(
        **{
            field.name: None
            for field in dataclasses.fields(JobRow)
            if field.default is dataclasses.MISSING
        }
        | {"job_id": "root", "name": "Root", "state": "succeeded", "attempt": 1}
    )
    stages = tuple(
        Stage(depth=1, name=f"Job{n}", total=1, states={"succeeded": 1}, parents=1, parent_names=())
        for n in range(MAX_STAGES + 1)
    )
    tree = StageTree(root=root, stages=stages)
    assert stage_graph(tree, stuck=(), failing=(), href=lambda stage: "#") is None
