"""Verbatim evidence: the spans a training text shares character for character with a query text.

Influence says which example *taught* the model; a verbatim span says which one it may have
*copied* from. For each returned example, :func:`find_shared_spans` reports the longest spans of
the query text (the response, or the prompt) that occur verbatim in the example's text, with
character offsets on both sides, and the share of the query text those spans cover.

It is computed for the returned top-k only, never over the corpus. For every position ``i`` of
the query, the longest substring ending at ``i`` that occurs in the example (its *matching
statistic*) and where it first occurs there are found by :class:`TextMatcher`: a short query
(up to :data:`SCAN_MAX_QUERY_CHARS`) by C string search, at most two searches of the text per
query character; a longer one by walking a suffix automaton of the text once (linear in both
lengths, :class:`SuffixAutomaton`). Both give the same statistics. From those, the maximal
matches are read off, and the longest ones that do not overlap on the query side are kept.
Everything is exact character comparison (case and whitespace included).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = [
    "SharedSpan",
    "SpanReport",
    "SuffixAutomaton",
    "TextMatcher",
    "matching_statistics",
    "scanned_matching_statistics",
    "find_shared_spans",
    "longest_common_substring",
]

DEFAULT_MIN_CHARS = 12
"""Shorter shared runs (a common word and its spaces) are not reported as verbatim evidence."""
DEFAULT_MAX_SPANS = 8
SCAN_MAX_QUERY_CHARS = 512
"""Query texts up to this long are matched by string search, longer ones by a suffix automaton:
search costs up to two scans of the text per query character, the automaton one Python step per
character of the text and of the query, so search is faster for short queries (5x for a
60-character response against an 8,000-character text) and slower for long ones."""


class SuffixAutomaton:
    """The suffix automaton of one text: every substring of it is a path from the root.

    ``first_end[s]`` is the end position (inclusive) of the first occurrence of the strings of
    state ``s``, so a match of length ``L`` that ends in state ``s`` starts at
    ``first_end[s] - L + 1``. Built online in ``O(n)`` states and transitions (Blumer et al.).
    """

    def __init__(self, text: str):
        self.text = text
        self.next: list[dict[str, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.first_end: list[int] = [-1]
        last = 0
        for pos, ch in enumerate(text):
            cur = self._new_state(self.length[last] + 1, pos)
            p = last
            while p != -1 and ch not in self.next[p]:
                self.next[p][ch] = cur
                p = self.link[p]
            if p == -1:
                self.link[cur] = 0
            else:
                q = self.next[p][ch]
                if self.length[p] + 1 == self.length[q]:
                    self.link[cur] = q
                else:
                    clone = self._new_state(self.length[p] + 1, self.first_end[q])
                    self.next[clone] = dict(self.next[q])
                    self.link[clone] = self.link[q]
                    while p != -1 and self.next[p].get(ch) == q:
                        self.next[p][ch] = clone
                        p = self.link[p]
                    self.link[q] = clone
                    self.link[cur] = clone
            last = cur

    def _new_state(self, length: int, first_end: int) -> int:
        self.next.append({})
        self.link.append(-1)
        self.length.append(length)
        self.first_end.append(first_end)
        return len(self.length) - 1

    def __contains__(self, pattern: str) -> bool:
        state = 0
        for ch in pattern:
            state = self.next[state].get(ch, -1)
            if state < 0:
                return False
        return True


def matching_statistics(automaton: SuffixAutomaton, query: str) -> tuple[list[int], list[int]]:
    """For each position ``i`` of ``query``: the length of the longest substring ending at ``i``
    that occurs in the automaton's text, and the start of its first occurrence there (``-1`` when
    0)."""
    lengths: list[int] = []
    starts: list[int] = []
    state, length = 0, 0
    nxt, link, size, first_end = (
        automaton.next,
        automaton.link,
        automaton.length,
        automaton.first_end,
    )
    for ch in query:
        while state and ch not in nxt[state]:
            state = link[state]
            length = size[state]
        if ch in nxt[state]:
            state = nxt[state][ch]
            length += 1
        else:  # the character is not in the text at all
            state, length = 0, 0
        lengths.append(length)
        starts.append(first_end[state] - length + 1 if length else -1)
    return lengths, starts


def scanned_matching_statistics(text: str, query: str) -> tuple[list[int], list[int]]:
    """:func:`matching_statistics` by string search in ``text``: a match ending at ``i + 1`` is at
    most one longer than the match ending at ``i``, so each position starts from that bound and
    shortens until the piece is found (at most ``2 * len(query)`` searches in all)."""
    lengths: list[int] = []
    starts: list[int] = []
    length, start = 0, -1
    find = text.find
    for i in range(len(query)):
        length += 1
        while length:
            start = find(query[i - length + 1 : i + 1])  # the first occurrence, as the automaton's
            if start >= 0:
                break
            length -= 1
        lengths.append(length)
        starts.append(start if length else -1)
    return lengths, starts


class TextMatcher:
    """Matching statistics of query texts against one text, by the cheaper method for each query
    (:data:`SCAN_MAX_QUERY_CHARS`); the automaton is built at most once, when first needed, and
    then serves every later query."""

    def __init__(self, text: str):
        self.text = text
        self._automaton: SuffixAutomaton | None = None

    def statistics(self, query: str) -> tuple[list[int], list[int]]:
        if self._automaton is None and len(query) <= SCAN_MAX_QUERY_CHARS:
            return scanned_matching_statistics(self.text, query)
        if self._automaton is None:
            self._automaton = SuffixAutomaton(self.text)
        return matching_statistics(self._automaton, query)


@dataclass(frozen=True)
class SharedSpan:
    """One verbatim span: ``query[query_start:query_end] == text[text_start:text_end]``."""

    query_start: int
    query_end: int
    text_start: int
    text_end: int

    @property
    def chars(self) -> int:
        return self.query_end - self.query_start


@dataclass(frozen=True)
class SpanReport:
    """What one example's text shares with one query text."""

    spans: list[SharedSpan]
    """The longest shared spans, longest first, not overlapping on the query side (at most
    ``max_spans``)."""
    coverage: float
    """Share of the query text's non-space characters inside some shared run of at least
    ``min_chars``."""
    longest: int
    """Characters of the longest shared substring (0 when none reaches ``min_chars``)."""


def longest_common_substring(a: str, b: str) -> SharedSpan | None:
    """The longest substring of ``a`` that occurs in ``b`` (first such in ``a``), or None if they
    share nothing."""
    if not a or not b:
        return None
    lengths, starts = matching_statistics(SuffixAutomaton(b), a)
    best = max(range(len(a)), key=lambda i: (lengths[i], -i))
    if lengths[best] == 0:
        return None
    return SharedSpan(
        best - lengths[best] + 1, best + 1, starts[best], starts[best] + lengths[best]
    )


def find_shared_spans(
    query: str,
    text: str,
    min_chars: int = DEFAULT_MIN_CHARS,
    max_spans: int = DEFAULT_MAX_SPANS,
    matcher: TextMatcher | None = None,
) -> SpanReport:
    """The longest spans of ``query`` that occur verbatim in ``text`` (see the module docstring).

    ``matcher`` is ``TextMatcher(text)`` when one is kept (several queries, one text).
    A span is reported once, at its first occurrence in ``text``. Leading and trailing
    whitespace is trimmed from each span, so a shared space never counts on its own.
    """
    if min_chars < 1 or max_spans < 0:
        raise ValueError(
            f"min_chars must be >= 1 and max_spans >= 0, got {min_chars} and {max_spans}"
        )
    if not query or not text:
        return SpanReport([], 0.0, 0)
    lengths, starts = (matcher or TextMatcher(text)).statistics(query)
    n = len(query)
    covered = [False] * n
    candidates: list[SharedSpan] = []
    low = n  # position i is covered iff some run ending at or after i starts at or before i
    for i in range(n - 1, -1, -1):
        if lengths[i] >= min_chars:
            low = min(low, i - lengths[i] + 1)
        covered[i] = low <= i
    for i, length in enumerate(lengths):
        if length < min_chars:
            continue
        lo = i - length + 1
        if i + 1 < n and lengths[i + 1] == length + 1:
            continue  # not right-maximal: the same match continues
        span = _trim(query, SharedSpan(lo, i + 1, starts[i], starts[i] + length))
        if span.chars >= min_chars:
            candidates.append(span)
    candidates.sort(key=lambda s: (-s.chars, s.query_start))
    chosen: list[SharedSpan] = []
    for span in candidates:
        if len(chosen) >= max_spans:
            break
        if all(span.query_end <= c.query_start or span.query_start >= c.query_end for c in chosen):
            chosen.append(span)
    visible = [k for k in range(n) if not query[k].isspace()]
    coverage = sum(covered[k] for k in visible) / len(visible) if visible else 0.0
    longest = max((s.chars for s in candidates), default=0)
    return SpanReport(chosen, coverage, longest)


def _trim(query: str, span: SharedSpan) -> SharedSpan:
    """Drop leading and trailing whitespace from both sides of a span (they are the same
    characters)."""
    lo, hi = span.query_start, span.query_end
    while lo < hi and query[lo].isspace():
        lo += 1
    while hi > lo and query[hi - 1].isspace():
        hi -= 1
    shift = lo - span.query_start
    return SharedSpan(lo, hi, span.text_start + shift, span.text_start + shift + (hi - lo))
