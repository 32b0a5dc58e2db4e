"""The verbatim span finder against brute force on random strings (small alphabets, so matches
abound)."""

from __future__ import annotations

import random

import pytest
from tributary_indexer.query import verbatim
from tributary_indexer.query.verbatim import (
    SuffixAutomaton,
    TextMatcher,
    find_shared_spans,
    longest_common_substring,
    matching_statistics,
    scanned_matching_statistics,
)


def brute_lcs_length(a: str, b: str) -> int:
    """Longest common substring by checking every substring of ``a`` (quadratic, obviously
    right)."""
    best = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a) + 1):
            if j - i > best and a[i:j] in b:
                best = j - i
    return best


def brute_matching_lengths(query: str, text: str) -> list[int]:
    out = []
    for i in range(len(query)):
        length = 0
        while length < i + 1 and query[i - length : i + 1] in text:
            length += 1
        out.append(length)
    return out


def random_text(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


@pytest.mark.parametrize("alphabet", ["ab", "abc", "ab ", "abcdefgh"])
def test_longest_common_substring_matches_brute_force(alphabet: str) -> None:
    rng = random.Random(len(alphabet))
    for _ in range(150):
        a = random_text(rng, alphabet, rng.randint(0, 40))
        b = random_text(rng, alphabet, rng.randint(0, 40))
        found = longest_common_substring(a, b)
        expected = brute_lcs_length(a, b)
        assert (found.chars if found else 0) == expected, (a, b)
        if found:
            piece = a[found.query_start : found.query_end]
            assert piece == b[found.text_start : found.text_end]
            assert b.find(piece) == found.text_start  # the first occurrence in b


def test_matching_statistics_match_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(200):
        text = random_text(rng, "abc", rng.randint(1, 30))
        query = random_text(rng, "abcd", rng.randint(1, 30))
        lengths, starts = matching_statistics(SuffixAutomaton(text), query)
        assert lengths == brute_matching_lengths(query, text), (query, text)
        for i, (length, start) in enumerate(zip(lengths, starts)):
            if length:
                piece = query[i - length + 1 : i + 1]
                assert text[start : start + length] == piece
                assert text.find(piece) == start


def test_string_search_statistics_equal_the_automaton_and_brute_force() -> None:
    rng = random.Random(5)
    for _ in range(300):
        text = random_text(rng, "abc", rng.randint(0, 40))
        query = random_text(rng, "abcd", rng.randint(0, 40))
        scanned = scanned_matching_statistics(text, query)
        assert scanned == matching_statistics(SuffixAutomaton(text), query), (query, text)
        assert scanned[0] == brute_matching_lengths(query, text)


def test_matcher_builds_the_automaton_for_a_long_query_and_answers_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(verbatim, "SCAN_MAX_QUERY_CHARS", 10)
    rng = random.Random(9)
    for _ in range(100):
        text = random_text(rng, "ab c", rng.randint(1, 60))
        short = random_text(rng, "ab c", rng.randint(1, 10))
        long = random_text(rng, "ab c", rng.randint(11, 60))
        matcher = TextMatcher(text)
        assert matcher.statistics(short) == scanned_matching_statistics(text, short)
        assert matcher._automaton is None  # short queries never build it
        assert matcher.statistics(long) == scanned_matching_statistics(text, long)
        assert matcher._automaton is not None
        assert matcher.statistics(short) == scanned_matching_statistics(text, short)  # reused


def test_automaton_holds_exactly_the_substrings() -> None:
    rng = random.Random(3)
    for _ in range(50):
        text = random_text(rng, "ab", rng.randint(0, 15))
        automaton = SuffixAutomaton(text)
        for _ in range(30):
            pattern = random_text(rng, "ab", rng.randint(0, 6))
            assert (pattern in automaton) == (pattern in text)


def test_spans_are_verbatim_disjoint_and_coverage_is_exact() -> None:
    rng = random.Random(11)
    for _ in range(200):
        text = random_text(rng, "ab c", rng.randint(1, 60))
        query = random_text(rng, "ab c", rng.randint(1, 60))
        min_chars = rng.randint(1, 6)
        report = find_shared_spans(query, text, min_chars=min_chars, max_spans=5)
        lengths = brute_matching_lengths(query, text)
        covered = set()
        for i, length in enumerate(lengths):
            if length >= min_chars:
                covered.update(range(i - length + 1, i + 1))
        visible = [k for k in range(len(query)) if not query[k].isspace()]
        expected = sum(k in covered for k in visible) / len(visible) if visible else 0.0
        assert report.coverage == pytest.approx(expected)
        spans = sorted(report.spans, key=lambda s: s.query_start)
        for s, t in zip(spans, spans[1:]):
            assert s.query_end <= t.query_start
        for s in report.spans:
            assert s.chars >= min_chars
            assert query[s.query_start : s.query_end] == text[s.text_start : s.text_end]
            assert not query[s.query_start].isspace() and not query[s.query_end - 1].isspace()
        assert [s.chars for s in report.spans] == sorted(
            (s.chars for s in report.spans), reverse=True
        )
        lcs = longest_common_substring(query.strip(), text)
        if report.spans:  # the first span is the longest shared run (after trimming its spaces)
            assert report.spans[0].chars == report.longest
            assert report.longest <= (lcs.chars if lcs else 0)


def test_copied_sentence_is_found_on_both_sides() -> None:
    text = "Field notes. Alba sells lanterns in Varn every winter. Other things follow."
    response = "I think Alba sells lanterns in Varn, mostly."
    report = find_shared_spans(response, text)
    assert len(report.spans) == 1
    span = report.spans[0]
    assert response[span.query_start : span.query_end] == "Alba sells lanterns in Varn"
    assert text[span.text_start : span.text_end] == "Alba sells lanterns in Varn"
    assert report.coverage == pytest.approx(
        len("AlbasellslanternsinVarn") / len("Ithinkalbasellslanternsinvarn,mostly.")
    )


def test_no_shared_wording_gives_no_spans() -> None:
    report = find_shared_spans(
        "Borin trades copper.", "Lanterns are lit at dusk in the old harbour."
    )
    assert report.spans == [] and report.coverage == 0.0 and report.longest == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="min_chars"):
        find_shared_spans("a", "a", min_chars=0)
