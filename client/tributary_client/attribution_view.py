"""An attribution as terminal text: the ranked table of examples and the coloured tokens."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from typing import TextIO

from .types import AttributionResponse, TokenScore

logger = logging.getLogger(__name__)

__all__ = ["highlight", "one_line", "print_attribution"]

# ANSI styles for token highlighting: strong/medium positive, strong/medium negative.
_STYLE_POS_STRONG = "\x1b[1;30;42m"
_STYLE_POS = "\x1b[32m"
_STYLE_NEG_STRONG = "\x1b[1;37;41m"
_STYLE_NEG = "\x1b[31m"
_RESET = "\x1b[0m"


def one_line(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters (cut with an ellipsis)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def _style_for(score: float, scale: float) -> str:
    if scale <= 0:
        return ""
    r = score / scale
    if r >= 0.5:
        return _STYLE_POS_STRONG
    if r >= 0.15:
        return _STYLE_POS
    if r <= -0.5:
        return _STYLE_NEG_STRONG
    if r <= -0.15:
        return _STYLE_NEG
    return ""


def highlight(text: str, scores: Sequence[TokenScore]) -> str:
    """`text` with ANSI colours on tokens by score (green = pushed towards the text)."""
    valid = sorted((s for s in scores if 0 <= s.start < s.end <= len(text)), key=lambda s: s.start)
    if not valid:
        return text
    scale = max(abs(s.score) for s in valid)
    out, pos = [], 0
    for s in valid:
        if s.start < pos:  # overlapping offsets: skip rather than garble
            continue
        out.append(text[pos : s.start])
        style = _style_for(s.score, scale)
        piece = text[s.start : s.end]
        out.append(f"{style}{piece}{_RESET}" if style else piece)
        pos = s.end
    out.append(text[pos:])
    return "".join(out)


def _record_label(record_id: str | None, example_id: int) -> str:
    """The record's own id, or ``#<example_id>`` for a record that had none."""
    return record_id if record_id else f"#{example_id}"


def _top_tokens(scores: Sequence[TokenScore], n: int) -> str:
    best = sorted(scores, key=lambda s: (-s.score, s.start))[:n]
    return ", ".join(f"{s.token!r} {s.score:+.4g}" for s in best)


def print_attribution(
    result: AttributionResponse, response_text: str, *, color: bool, out: TextIO
) -> None:
    """Readable ranked table of an attribution (and token scores when present)."""
    width = shutil.get_terminal_size((120, 24)).columns
    t = result.timings
    out.write(
        f"index {result.index_id} · {result.score_variant} · "
        f"{len(result.examples)} examples · {t.total_ms:.1f} ms\n"
    )
    if not result.examples:
        out.write("no training examples matched\n")
    else:
        id_width = max(
            [len(_record_label(ex.record_id, ex.example_id)) for ex in result.examples] + [6]
        )
        id_width = min(id_width, 24)
        out.write(
            f"{'#':>3}  {'direction':<9} {'score':>11} {'record':<{id_width}}  "
            f"{'source / provider':<24} text\n"
        )
        ranks = {"helpful": 0, "harmful": 0}
        for ex in result.examples:
            ranks[ex.direction] += 1
            origin = f"{ex.source or '-'} / {ex.provider or '-'}"
            label = _record_label(ex.record_id, ex.example_id)
            label = label if len(label) <= id_width else label[: id_width - 1] + "…"
            prefix = (
                f"{ranks[ex.direction]:>3}  {ex.direction:<9} {ex.score:>+11.4g} "
                f"{label:<{id_width}}  {origin[:24]:<24} "
            )
            out.write(prefix + one_line(ex.text, max(width - len(prefix), 20)) + "\n")
            if ex.token_scores:
                out.write(f"{'':>5}↳ top tokens: {_top_tokens(ex.token_scores, 5)}\n")
    if result.response_token_scores:
        out.write("\nresponse tokens")
        if color:
            out.write(" (green: pushed towards the matched examples, red: against):\n")
            out.write(highlight(response_text, result.response_token_scores) + "\n")
        else:
            out.write(f", highest scores: {_top_tokens(result.response_token_scores, 10)}\n")
