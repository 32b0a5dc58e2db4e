"""The benchmarks' ablations of ``span_gated``: the formulas against plain loops, and what each
takes away (``benchmarks/quality/ablations.py``)."""

from __future__ import annotations

import pytest
import torch
from tributary_indexer.config import RankingConfig
from tributary_indexer.data.batching import TokenizedExample
from tributary_indexer.query.ranking import SpanGatedRanking, TokenQuery

from benchmarks.quality.ablations import (
    SpanSaturatedRanking,
    TokenSaturatedRanking,
    WeightCoreRanking,
    benchmark_ranking,
)


def _vectors(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.linspace(
        0.2, 2.0, d, dtype=torch.float64
    )


def _scores(ranking: SpanGatedRanking, query: TokenQuery, stored: torch.Tensor) -> torch.Tensor:
    return ranking.aggregate(query.vectors @ stored.T, query)


def _query(
    ranking: SpanGatedRanking, tokens: torch.Tensor, weights: torch.Tensor, ex: TokenizedExample
) -> TokenQuery:
    return ranking.split(tokens, weights, torch.zeros(len(tokens), dtype=torch.long), [ex])[0]


def _each_token(vectors: torch.Tensor) -> TokenQuery:
    return TokenQuery(
        vectors, torch.ones(len(vectors), dtype=torch.float64), torch.arange(len(vectors))
    )


def test_token_saturated_scores_follow_the_formula_and_the_first_stage_sums_tokens():
    sat = TokenSaturatedRanking(RankingConfig(saturation=3.0))
    tokens = _vectors(4, 6, seed=3)
    stored = _vectors(9, 6, seed=4)
    z = tokens @ stored.T  # [4, 9]
    want = sum(max(float(x), 0.0) / (max(float(x), 0.0) + 3.0) for x in z[:, 2])
    got = _scores(sat, _each_token(tokens), stored)
    assert got.shape == (9,) and abs(float(got[2]) - want) < 1e-12
    assert bool((got >= 0).all()) and bool((got < 4).all())  # each token adds less than 1
    harmful = sat.aggregate(z, _each_token(tokens), harmful=True)  # the negated token scores
    assert (
        abs(
            float(harmful[2])
            - sum(max(-float(x), 0.0) / (max(-float(x), 0.0) + 3.0) for x in z[:, 2])
        )
        < 1e-12
    )
    ex = TokenizedExample((1, 10, 11, 12, 2, 10, 11, 5), (False,) * 5 + (True,) * 3)
    q = _query(sat, tokens[:3], torch.ones(3, dtype=torch.float64), ex)
    assert (
        q.spans.tolist() == [0, 1, 2] and q.shares is None
    )  # every token its own span, no reference


def test_span_scores_take_each_span_best_token_and_largest_weight():
    sat = SpanSaturatedRanking(RankingConfig(saturation=2.0))
    tokens = _vectors(5, 6, seed=6)
    stored = _vectors(7, 6, seed=7)
    weights = torch.tensor([0.5, 3.0, 1.0, 2.0, 0.25], dtype=torch.float64)
    spans = torch.tensor([0, 0, 1, 2, 2])
    got = _scores(sat, TokenQuery(tokens, weights, spans), stored)
    z = (tokens @ stored.T).tolist()  # [5][7]
    for j in range(7):  # oracle: plain loops over the spans
        want = 0.0
        for members in ([0, 1], [2], [3, 4]):
            best = max(max(z[t][j], 0.0) for t in members)
            want += max(float(weights[t]) for t in members) * best / (best + 2.0)
        assert abs(float(got[j]) - want) < 1e-12
    # one token per span and unit weights: exactly token_saturated
    zc = (tokens @ stored.T).clamp_min(0)
    torch.testing.assert_close(_scores(sat, _each_token(tokens), stored), (zc / (zc + 2.0)).sum(0))


@pytest.mark.parametrize(
    "presence_k, presence_core", [(0.5, 0.5), (2.0, 0.5), (2.0, 0.0), (2.0, 0.3)]
)
def test_weight_core_gate_adds_the_new_spans_times_the_copied_spans_presence(
    presence_k, presence_core
):
    sat = WeightCoreRanking(RankingConfig(saturation=3.0, presence_k=presence_k), presence_core)
    tokens = _vectors(6, 5, seed=10)
    stored = _vectors(8, 5, seed=11)
    weights = torch.tensor([2.0, 0.5, 1.0, 4.0, 1.5, 3.0], dtype=torch.float64)
    # spans: [0, 1] copied, [2] new, [3, 4] copied, [5] new
    ex = TokenizedExample(
        (9, 20, 21, 30, 31, 8, 20, 21, 40, 30, 31, 41), (False,) * 6 + (True,) * 6
    )
    query = _query(sat, tokens, weights, ex)
    assert query.spans.tolist() == [0, 0, 1, 2, 2, 3] and query.copied.tolist() == [
        True,
        False,
        True,
        False,
    ]
    got = _scores(sat, query, stored)
    z = (tokens @ stored.T).tolist()  # [6][8]
    for j in range(8):  # oracle: plain loops, C + N * (1 + P)
        copied_part, new_part, presence = 0.0, 0.0, []
        for members, is_copy in (([0, 1], True), ([2], False), ([3, 4], True), ([5], False)):
            best = max(max(z[t][j], 0.0) for t in members)
            largest = max(float(weights[t]) for t in members)
            term = largest * best / (best + 3.0)
            if is_copy:
                copied_part += term
                core = [t for t in members if float(weights[t]) >= presence_core * largest]
                core_best = max(max(z[t][j], 0.0) for t in core)
                presence.append(core_best / (core_best + presence_k))
            else:
                new_part += term
        want = copied_part + new_part * (1 + sum(presence) / len(presence))
        assert abs(float(got[j]) - want) < 1e-12
    if (
        presence_core > 0
    ):  # the core changes the presence of these vectors: the parameter is exercised
        whole = WeightCoreRanking(RankingConfig(saturation=3.0, presence_k=presence_k), 0.0)
        assert not torch.allclose(got, _scores(whole, query, stored))
    # never below span_saturated
    plain = _scores(SpanSaturatedRanking(RankingConfig(saturation=3.0)), query, stored)
    assert bool((got >= plain - 1e-12).all())
    # a response that copies nothing ranks exactly as under span_saturated
    ex_new = TokenizedExample(
        (9, 20, 21, 30, 31, 8, 50, 51, 52, 53, 54, 55), (False,) * 6 + (True,) * 6
    )
    q_new = _query(sat, tokens, weights, ex_new)
    assert not bool(q_new.copied.any())
    torch.testing.assert_close(
        _scores(sat, q_new, stored),
        _scores(SpanSaturatedRanking(RankingConfig(saturation=3.0)), q_new, stored),
        rtol=0,
        atol=0,
    )


def test_benchmark_ranking_names_each_row_and_refuses_the_rest():
    config = RankingConfig()
    assert type(benchmark_ranking("span_gated", config)) is SpanGatedRanking
    assert type(benchmark_ranking("span_saturated", config)) is SpanSaturatedRanking
    assert type(benchmark_ranking("token_saturated", config)) is TokenSaturatedRanking
    assert benchmark_ranking("span_gated", config, 0.5) == WeightCoreRanking(config, 0.5)
    assert benchmark_ranking("span_gated", config, 0.5) != WeightCoreRanking(config, 0.0)
    with pytest.raises(ValueError, match="unknown ranking 'top'"):
        benchmark_ranking("top", config)
    with pytest.raises(ValueError, match=r"presence_core must be a fraction in \[0, 1\]"):
        WeightCoreRanking(config, 1.5)
