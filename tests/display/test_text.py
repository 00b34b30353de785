"""Shortened args: what tells the jobs of a list apart stays on screen, in any width."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from jobtrace.display import short, shorten_args

UPLOAD = "s3://bucket/uploads/2024/11/23/customer-4411/batch.csv"


def batch_args(n: int) -> str:
    ids = ",".join(str(n * 100 + i) for i in range(1, 5))
    return f'{{"upload":"{UPLOAD}","document_ids":[{ids}]}}'


def test_crashed_batches_show_their_document_ids_not_the_shared_upload_path() -> None:
    """Scenario 2: the upload path comes first and is the same; the ids after it differ."""
    texts = [batch_args(n) for n in (1, 2, 3)]
    shown = shorten_args(texts, 60)
    assert shown == [
        '{"upload":"s…"document_ids":[101,102,103,104]}',
        '{"upload":"s…"document_ids":[201,202,203,204]}',
        '{"upload":"s…"document_ids":[301,302,303,304]}',
    ]
    # Cut at the end, all three would read the same.
    assert len({short(text, 60) for text in texts}) == 1


def test_a_difference_inside_a_long_value_keeps_a_little_context() -> None:
    texts = [UPLOAD.replace("4411", str(n)) + "/" + "x" * 80 for n in (4411, 4412)]
    first, second = shorten_args(texts, 50)
    assert "customer-4411" in first
    assert "customer-4412" in second


def test_texts_that_fit_or_differ_early_are_cut_at_the_end() -> None:
    assert shorten_args(["short", None], 20) == ["short", "-"]
    texts = ['{"movie_id":41,' + "z" * 90, '{"movie_id":42,' + "z" * 90]
    assert shorten_args(texts, 40) == [short(text, 40) for text in texts]
    assert shorten_args(["a" * 100], 30) == [short("a" * 100, 30)]


texts_strategy = st.lists(
    st.one_of(st.none(), st.text(alphabet='ab{}[],":0123456789 ', max_size=200)), max_size=6
)


@given(texts=texts_strategy, width=st.integers(min_value=8, max_value=120))
def test_every_line_fits_and_what_fits_is_kept(texts: list[str | None], width: int) -> None:
    shown = shorten_args(texts, width)
    assert len(shown) == len(texts)
    for text, line in zip(texts, shown, strict=True):
        assert len(line) <= width
        if text is None:
            assert line == "-"
        elif len(" ".join(text.split())) <= width:
            assert line == " ".join(text.split())


@given(
    shared=st.text(alphabet='abc{}[],":0123456789', min_size=1, max_size=150),
    tails=st.lists(st.text(alphabet="xyz0123456789", min_size=1, max_size=40), min_size=2),
    width=st.integers(min_value=20, max_value=100),
)
def test_where_the_texts_start_to_differ_is_shown(
    shared: str, tails: list[str], width: int
) -> None:
    """Each cut line shows the first character in which the texts differ."""
    texts = sorted({shared + tail for tail in tails})
    if len(texts) < 2:
        return
    differ_at = len(os.path.commonprefix(texts))  # noqa: RUF071 - character by character
    for text, line in zip(texts, shorten_args(texts, width), strict=True):
        if len(text) <= width or differ_at >= len(text):
            continue
        visible = line.removesuffix("…")
        tail = visible.split("…", 1)[-1]
        start = text.find(tail, 0 if "…" not in visible else 1)
        assert start >= 0, (text, line)
        assert start <= differ_at < start + len(tail), (text, line, differ_at)
