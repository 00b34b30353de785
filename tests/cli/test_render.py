"""Fitting lines to a terminal: columns counted as a terminal draws them, cuts marked with …."""

from __future__ import annotations

import pytest

from jobtrace.cli.render import Style, columns, fit

PAINT = Style(color=True, aligned=True)


@pytest.mark.parametrize(
    ("text", "width"),
    [
        ("abc", 3),
        ("├── MoviePageJob", 16),
        ("日本語", 6),
        ("e\u0301te\u0301", 3),
        ("\x1b[1mbold\x1b[0m", 4),
        ("⚠ stuck ✗ failing", 17),
        ("🚀", 2),
    ],
)
def test_columns_count_what_a_terminal_draws(text: str, width: int) -> None:
    """Wide characters take two columns, combining marks and colour codes none."""
    assert columns(text) == width


def test_fit_leaves_short_lines_and_cuts_long_ones_with_an_ellipsis() -> None:
    """A line of the width stays whole; a longer one keeps its start and ends in … at the width."""
    lines = ["x" * 20, "│   " + "y" * 40, "日本" * 10]
    fitted = fit(lines, 20)
    assert fitted[0] == lines[0]
    assert fitted[1] == "│   " + "y" * 15 + "…"
    assert fitted[2] == "日本" * 4 + "日…"
    assert [columns(line) for line in fitted] == [20, 20, 19], "no half of a wide character"


def test_fit_never_splits_a_wide_character() -> None:
    """A wide character that would cross the edge goes whole, the line one column short."""
    (line,) = fit(["a" + "日" * 20], 11)
    assert line == "a" + "日" * 4 + "…"
    assert columns(line) == 10


def test_fit_closes_a_colour_open_at_the_cut() -> None:
    """The cut inside a painted span keeps its codes and resets them after the ellipsis."""
    text = "ok " + PAINT.paint("stuck " * 10, "yellow")
    (line,) = fit([text], 12)
    assert line.endswith("…\x1b[0m")
    assert columns(line) == 12
    (line,) = fit([PAINT.paint("abc", "red") + "d" * 30], 10)
    assert line == "\x1b[31mabc\x1b[0m" + "d" * 6 + "…"
