"""The valuation report's chart: influence share against corpus share per group, as plain SVG.

Written by hand (no plotting library, so the SDK stays light): one row per group, a grey bar
for its share of the corpus and a coloured bar for its share of positive influence, with the
ratio of the two at the end of the row. Output depends only on the bars given (byte-stable).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

logger = logging.getLogger(__name__)

__all__ = ["MAX_ROWS", "ShareBar", "render_share_chart"]

MAX_ROWS = 30
"""Rows drawn at most (the largest influence shares); the rest are named in a footnote."""

_WIDTH = 760
_LABEL_W = 170
_BAR_W = 440
_ROW_H = 40
_TOP = 64
_CORPUS_COLOUR = "#9aa5b1"
_INFLUENCE_COLOUR = "#2563eb"
_FONT = "font-family='system-ui, -apple-system, Segoe UI, sans-serif'"


@dataclass(frozen=True)
class ShareBar:
    """One group of the chart."""

    label: str
    corpus_share: float | None
    """Share of the indexed examples in [0, 1]; None when the composition is unknown."""
    influence_share: float
    """Share of the positive influence in [0, 1]."""


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _clip(text: str, n: int = 26) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def render_share_chart(bars: Sequence[ShareBar], title: str) -> str:
    """An SVG document comparing each group's influence share with its corpus share."""
    shown = list(bars[:MAX_ROWS])
    hidden = len(bars) - len(shown)
    scale_max = max(
        [b.influence_share for b in shown] + [b.corpus_share or 0.0 for b in shown] + [0.0]
    )
    scale_max = min(1.0, max(0.05, _nice_ceiling(scale_max)))
    height = _TOP + max(len(shown), 1) * _ROW_H + 40 + (18 if hidden else 0)
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{_WIDTH}' height='{height}' viewBox='0 0 "
        f"{_WIDTH} {height}' role='img' aria-label='{escape(title, {chr(39): '&apos;'})}'>",
        f"<rect width='{_WIDTH}' height='{height}' fill='#ffffff'/>",
        f"<text x='16' y='24' font-size='16' font-weight='600' {_FONT} "
        f"fill='#111827'>{escape(title)}</text>",
        f"<rect x='{_LABEL_W}' y='36' width='12' height='12' fill='{_CORPUS_COLOUR}'/>",
        f"<text x='{_LABEL_W + 18}' y='46' font-size='12' {_FONT} fill='#374151'>share of the "
        "corpus</text>",
        f"<rect x='{_LABEL_W + 160}' y='36' width='12' height='12' fill='{_INFLUENCE_COLOUR}'/>",
        f"<text x='{_LABEL_W + 178}' y='46' font-size='12' {_FONT} fill='#374151'>share of "
        "positive influence</text>",
        f"<text x='{_LABEL_W + _BAR_W + 16}' y='46' font-size='12' {_FONT} "
        "fill='#374151'>influence / corpus</text>",
    ]
    axis_y = _TOP + max(len(shown), 1) * _ROW_H
    for step in range(5):  # grid lines at 0, 25, 50, 75, 100 % of the scale
        value = scale_max * step / 4
        x = _LABEL_W + _BAR_W * step / 4
        out.append(
            f"<line x1='{x:.1f}' y1='{_TOP - 6}' x2='{x:.1f}' y2='{axis_y}' stroke='#e5e7eb'/>"
        )
        out.append(
            f"<text x='{x:.1f}' y='{axis_y + 16}' font-size='11' text-anchor='middle' {_FONT} "
            f"fill='#6b7280'>{_pct(value)}</text>"
        )
    if not shown:
        out.append(
            f"<text x='{_LABEL_W}' y='{_TOP + 24}' font-size='13' {_FONT} fill='#6b7280'>no "
            "attributed examples</text>"
        )
    for row, bar in enumerate(shown):
        y = _TOP + row * _ROW_H
        out.append(
            f"<text x='{_LABEL_W - 10}' y='{y + 21}' font-size='13' text-anchor='end' {_FONT} "
            f"fill='#111827'>{escape(_clip(bar.label))}</text>"
        )
        if bar.corpus_share is not None:
            w = _BAR_W * min(bar.corpus_share / scale_max, 1.0)
            out.append(
                f"<rect x='{_LABEL_W}' y='{y + 4}' width='{w:.1f}' height='13' "
                f"fill='{_CORPUS_COLOUR}'><title>{escape(bar.label)}: {_pct(bar.corpus_share)} of "
                "the corpus</title></rect>"
            )
        w = _BAR_W * min(bar.influence_share / scale_max, 1.0)
        out.append(
            f"<rect x='{_LABEL_W}' y='{y + 19}' width='{w:.1f}' height='13' "
            f"fill='{_INFLUENCE_COLOUR}'><title>{escape(bar.label)}: {_pct(bar.influence_share)} "
            "of the positive influence</title></rect>"
        )
        ratio = f"×{bar.influence_share / bar.corpus_share:.2f}" if bar.corpus_share else "n/a"
        out.append(
            f"<text x='{_LABEL_W + _BAR_W + 16}' y='{y + 23}' font-size='13' {_FONT} "
            f"fill='#111827'>{ratio}</text>"
        )
    if hidden:
        out.append(
            f"<text x='16' y='{height - 10}' font-size='11' {_FONT} fill='#6b7280'>{hidden} more "
            "groups with smaller influence shares are in the CSV</text>"
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _nice_ceiling(value: float) -> float:
    """The smallest of 5 %, 10 %, 20 %, 25 %, 40 %, 50 %, 60 %, 80 %, 100 % at or above
    ``value``."""
    for candidate in (0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 0.6, 0.8, 1.0):
        if value <= candidate + 1e-12:
            return candidate
    return 1.0
