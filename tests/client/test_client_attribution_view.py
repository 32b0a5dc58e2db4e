"""The terminal rendering of an attribution: token highlighting and one-line cells."""

from __future__ import annotations

import tributary_client.types as tc
from tributary_client.attribution_view import highlight, one_line


def test_highlight_ignores_bad_offsets() -> None:
    scores = [tc.TokenScore(token="x", token_id=1, start=5, end=99, score=1.0)]
    assert highlight("short", scores) == "short"


def test_one_line_flattens_and_cuts_with_an_ellipsis() -> None:
    assert one_line("a\n b\t c", 10) == "a b c"
    assert one_line("abcdefghij", 5) == "abcd…"
