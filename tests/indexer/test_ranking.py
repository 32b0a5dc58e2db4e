"""The rankings: RMS and specificity from the Fisher against the training set, copy spans,
span_gated's formula and selective core, the ranking configuration."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from tributary_indexer.config import RANKINGS, BuildConfig, RankingConfig
from tributary_indexer.data.batching import TokenizedExample
from tributary_indexer.gradients.projector import Block
from tributary_indexer.hessian.fisher import FisherAccumulator
from tributary_indexer.hessian.preconditioner import Preconditioner
from tributary_indexer.hessian.scores import ScoreTransform
from tributary_indexer.query.ranking import (
    LinearRanking,
    RankingQuery,
    SpanGatedRanking,
    TokenQuery,
    copy_spans,
    make_ranking,
    reference_rows,
)
from tributary_indexer.query.space import QuerySpace

REFERENCE_ROWS = RankingConfig.reference_rows


def gated(**config: object) -> SpanGatedRanking:
    ranking = make_ranking(RankingConfig(**config))  # type: ignore[arg-type]
    assert isinstance(ranking, SpanGatedRanking)
    return ranking


def scores(ranking: SpanGatedRanking, query: TokenQuery, stored: torch.Tensor) -> torch.Tensor:
    """The helpful scores of ``stored`` ``[N, D]``, as the re-score computes them."""
    return ranking.aggregate(query.vectors @ stored.T, query)


def one_query(
    ranking: SpanGatedRanking,
    tokens: torch.Tensor,
    weights: torch.Tensor,
    example: TokenizedExample,
    reference: torch.Tensor | None = None,
) -> TokenQuery:
    return ranking.split(
        tokens, weights, torch.zeros(len(tokens), dtype=torch.long), [example], reference
    )[0]


def _vectors(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.linspace(
        0.2, 2.0, d, dtype=torch.float64
    )


def _fitted(
    n: int, d: int, alpha: float, max_rows: int | None = None
) -> tuple[torch.Tensor, Preconditioner]:
    """``n`` training vectors of dimension ``d`` and the preconditioner of their Fisher, one dense
    block."""
    train = _vectors(n, d)
    fisher = FisherAccumulator([Block("rapidgrad", 0, d)], max_rows=max_rows)
    fisher.update(train)
    return train, Preconditioner.from_fisher(fisher, alpha)


@pytest.mark.parametrize("n, max_rows", [(40, 0), (5, None)], ids=["dense-inverse", "gram-inverse"])
@pytest.mark.parametrize("alpha", [1e-2, 1.0, 24.0])
def test_score_second_moment_is_the_mean_squared_score_over_the_training_vectors(
    n, max_rows, alpha
):
    train, pre = _fitted(n, 12, alpha, max_rows)
    v = _vectors(7, 12, seed=1)
    # oracle: every training vector's score against H^{-1} v, squared and averaged
    h = train.T @ train / n + pre.lambdas[0] * torch.eye(12, dtype=torch.float64)
    scores = torch.linalg.solve(h, v.T).T @ train.T  # [7, n]
    torch.testing.assert_close(
        pre.score_second_moment(v), scores.pow(2).mean(1), rtol=1e-9, atol=1e-12
    )


def test_score_second_moment_with_several_blocks_sums_the_blocks():
    blocks = [Block("a", 0, 5), Block("b", 5, 9)]
    train = _vectors(30, 9)
    fisher = FisherAccumulator(blocks)
    fisher.update(train)
    pre = Preconditioner.from_fisher(fisher, 0.5)
    v = _vectors(3, 9, seed=2)
    want = torch.zeros(3, dtype=torch.float64)
    for b in blocks:  # the block-diagonal model of the training set: no cross-block covariance
        tb, vb = train[:, b.start : b.stop], v[:, b.start : b.stop]
        h = tb.T @ tb / 30 + pre.lambdas[blocks.index(b)] * torch.eye(b.size, dtype=torch.float64)
        want += (torch.linalg.solve(h, vb.T).T @ tb.T).pow(2).mean(1)
    torch.testing.assert_close(pre.score_second_moment(v), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("selectivity, floor", [(1.0, 0.0), (2.0, 0.0), (2.0, 0.3), (4.0, 0.0)])
def test_selective_core_takes_the_presence_from_the_tokens_matching_the_fewest_reference_examples(
    selectivity, floor
):
    sat = gated(saturation=3.0, presence_selectivity=selectivity, presence_floor=floor)
    # tokens 1 and 4 match few reference examples, 0 and 3 many: the spans [0, 1] and [3, 4] have a
    # selective token
    tokens = (
        _vectors(6, 5, seed=10)
        * torch.tensor([2.0, 0.5, 1.0, 1.5, 0.6, 1.0], dtype=torch.float64)[:, None]
    )
    stored = _vectors(8, 5, seed=11)
    reference = _vectors(40, 5, seed=12)
    weights = torch.tensor([2.0, 0.5, 1.0, 4.0, 1.5, 3.0], dtype=torch.float64)
    # spans: [0, 1] copied, [2] new, [3, 4] copied, [5] new
    ex = TokenizedExample(
        (9, 20, 21, 30, 31, 8, 20, 21, 40, 30, 31, 41), (False,) * 6 + (True,) * 6
    )
    query = one_query(sat, tokens, weights, ex, reference)
    zr = (tokens @ reference.T).tolist()  # [6][40]
    share = {
        "helpful": [sum(x > 2.0 for x in row) / 40 for row in zr],
        "harmful": [sum(-x > 2.0 for x in row) / 40 for row in zr],
    }
    assert (
        query.shares is not None
        and query.shares[0].tolist() == share["helpful"]
        and query.shares[1].tolist() == share["harmful"]
    )
    # a batch of two queries: one product with the reference, each query its own rows
    both = sat.split(
        torch.cat([tokens, tokens.flip(0)]),
        torch.cat([weights, weights]),
        torch.tensor([0] * 6 + [1] * 6),
        [ex, ex],
        reference,
    )
    assert torch.equal(both[0].shares, query.shares) and torch.equal(
        both[1].shares, query.shares.flip(1)
    )
    trimmed = False
    for direction, sign in (("helpful", 1.0), ("harmful", -1.0)):
        z = (sign * tokens @ stored.T).tolist()  # [6][8]
        got = sat.aggregate(tokens @ stored.T, query, harmful=direction == "harmful")
        for j in range(
            8
        ):  # oracle: plain loops, C + N * (1 + P) with P from each copied span's selective core
            copied_part, new_part, presence = 0.0, 0.0, []
            for members, is_copy in (([0, 1], True), ([2], False), ([3, 4], True), ([5], False)):
                best = max(max(z[t][j], 0.0) for t in members)
                term = max(float(weights[t]) for t in members) * best / (best + 3.0)
                if not is_copy:
                    new_part += term
                    continue
                copied_part += term
                lowest = min(share[direction][t] for t in members)
                core = [
                    t for t in members if share[direction][t] <= max(selectivity * lowest, floor)
                ]
                trimmed |= len(core) < len(members)
                core_best = max(max(z[t][j], 0.0) for t in core)
                presence.append(core_best / (core_best + 2.0))
            want = copied_part + new_part * (1 + sum(presence) / len(presence))
            assert abs(float(got[j]) - want) < 1e-12
    assert trimmed, (
        "a copied span's selective core must leave a token out, or the core goes untested"
    )
    if (
        selectivity < 4.0 and floor == 0.0
    ):  # the helpful cores leave a token out here (at 4 only the harmful one does)
        whole = gated(
            saturation=3.0, presence_selectivity=1e9
        )  # every token of a copied span in its core
        assert not torch.allclose(scores(sat, query, stored), scores(whole, query, stored))
    # the two-stage re-score of a RankingQuery is the same aggregate, in both directions
    as_query = RankingQuery(tokens.sum(0), tokens.sum(0), query)
    torch.testing.assert_close(
        sat.rescore(as_query, stored), sat.aggregate(tokens @ stored.T, query)
    )
    torch.testing.assert_close(
        sat.rescore(as_query, stored, harmful=True),
        sat.aggregate(tokens @ stored.T, query, harmful=True),
    )


def test_selective_core_needs_a_reference_sample_of_the_right_width():
    sat = gated()
    ex = TokenizedExample((9, 20, 21, 20, 21), (False,) * 3 + (True,) * 2)
    tokens, weights = _vectors(2, 5), torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="needs the reference sample of stored vectors"):
        one_query(sat, tokens, weights, ex)
    with pytest.raises(ValueError, match=r"reference sample must be \[M >= 1, 5\]"):
        one_query(sat, tokens, weights, ex, _vectors(3, 4))
    no_shares = TokenQuery(tokens, weights, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="has no matched shares"):
        scores(sat, no_shares, _vectors(3, 5))
    # the linear ranking needs none, and has no second stage
    linear = make_ranking(RankingConfig(ranking="linear"))
    assert isinstance(linear, LinearRanking) and not linear.needs_reference and not linear.positions
    assert linear.fetch(7) == 7 and sat.fetch(7) == 200 and sat.fetch(500) == 500


@pytest.mark.parametrize("n", [1, 7, 4096, 4097, 10_000, 123_457])
def test_reference_rows_are_every_example_of_a_small_index_else_evenly_spaced(n):
    rows = reference_rows(n)
    assert len(rows) == min(n, REFERENCE_ROWS) and len(set(rows.tolist())) == len(rows)
    assert rows[0] == 0 and rows[-1] == n - 1 and bool((np.diff(rows) > 0).all())
    if n > REFERENCE_ROWS:  # evenly spaced: every gap within one of n / rows
        gaps = np.diff(rows)
        assert gaps.max() - gaps.min() <= 1


@pytest.mark.parametrize("presence_k", [0.0, -2.0, float("nan")])
def test_bad_ranking_constants_and_unknown_rankings_are_refused_with_the_fix(presence_k):
    with pytest.raises(ValueError, match=r"presence_k=.* \(must be a positive number; default 2\)"):
        RankingConfig(presence_k=presence_k)
    with pytest.raises(
        ValueError, match=r"presence_selectivity=.* \(must be a number >= 1; default 2\)"
    ):
        RankingConfig(presence_selectivity=presence_k + 0.5)  # 0.5, -1.5, nan
    with pytest.raises(
        ValueError, match=r"presence_floor=.* \(must be a share in \[0, 1\]; default 0.002\)"
    ):
        RankingConfig(presence_floor=presence_k - 1.5)
    with pytest.raises(ValueError, match=r"candidates=0 \(must be an integer >= 1; default 200\)"):
        RankingConfig(candidates=0)
    with pytest.raises(
        ValueError, match=r"reference_rows=1.5 \(must be an integer >= 1; default 4096\)"
    ):
        RankingConfig(reference_rows=1.5)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError,
        match=re.escape("ranking='span_saturated' (choose from ['linear', 'span_gated'])"),
    ):
        RankingConfig(ranking="span_saturated")


def test_ranking_config_round_trips_and_reads_a_manifest():
    config = RankingConfig(saturation=20.0, candidates=50)
    assert RankingConfig.from_dict(config.to_dict()) == config
    # a manifest's build_config holds other fields; one from before rankings were recorded ranks
    # linearly
    assert RankingConfig.from_dict({"score": "influence", "saturation": 40.0}) == RankingConfig(
        "linear", 40.0
    )
    assert RankingConfig.from_dict({"ranking": "span_gated", "presence_k": None}) == RankingConfig()


def test_copy_spans_chain_pairs_that_the_prompt_holds():
    # context (non-target) tokens 1 10 11 12 2; response 10 11 5 11 12 10 12
    ex = TokenizedExample((1, 10, 11, 12, 2, 10, 11, 5, 11, 12, 10, 12), (False,) * 5 + (True,) * 7)
    # (10,11) and (11,12) are prompt pairs; (11,5), (5,11), (12,10), (10,12) are not
    assert copy_spans(ex).tolist() == [0, 0, 1, 2, 2, 3, 4]
    # a pair inside the response itself does not count: only the context is copied from
    ex2 = TokenizedExample((1, 2, 7, 8, 7, 8), (False, False, True, True, True, True))
    assert copy_spans(ex2).tolist() == [0, 1, 2, 3]
    sat = gated()
    reference = torch.ones(1, 3, dtype=torch.float64)
    q = one_query(
        sat,
        torch.zeros(7, 3, dtype=torch.float64),
        torch.ones(7, dtype=torch.float64),
        ex,
        reference,
    )
    assert q.spans.tolist() == [0, 0, 1, 2, 2, 3, 4] and q.copied.tolist() == [
        True,
        False,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="7 response tokens"):
        one_query(
            sat,
            torch.zeros(6, 3, dtype=torch.float64),
            torch.ones(6, dtype=torch.float64),
            ex,
            reference,
        )


@pytest.mark.parametrize("n, max_rows", [(40, 0), (5, None)], ids=["dense-inverse", "gram-inverse"])
@pytest.mark.parametrize("alpha", [1e-2, 1.0, 24.0])
def test_specificity_is_the_damping_share_over_the_measured_mean_squared_score(n, max_rows, alpha):
    train, pre = _fitted(n, 12, alpha, max_rows)
    g = _vectors(6, 12, seed=8)
    g[2] = 0.0  # no gradient: weight 0, not a division by zero
    lam = pre.lambdas[0]
    h = train.T @ train / n + lam * torch.eye(12, dtype=torch.float64)
    u = torch.linalg.solve(h, g.T).T  # [6, 12]
    measured = (u @ train.T).pow(2).mean(1)  # E_z[s_t(z)^2] over the training vectors
    got = SpanGatedRanking.specificity(pre.inverse(g), g, pre)
    keep = [0, 1, 3, 4, 5]
    torch.testing.assert_close(
        got[keep], (lam * u.pow(2).sum(1) / measured)[keep], rtol=1e-8, atol=0
    )
    assert float(got[2]) == 0.0
    # the damping's share and the training set's share make up the self-influence
    torch.testing.assert_close(
        (got + 1)[keep] * measured[keep], pre.self_influence(g)[keep], rtol=1e-8, atol=0
    )


def test_token_queries_are_the_standardised_vectors_and_their_specificity():
    _, pre = _fitted(30, 8, 1.0)
    space = QuerySpace(ScoreTransform("influence", pre))
    terms = _vectors(3, 8, seed=9)
    owner = torch.zeros(3, dtype=torch.long)
    vec, w = gated().token_queries(space, terms, terms.sum(0, keepdim=True), owner)
    torch.testing.assert_close(w, SpanGatedRanking.specificity(pre.inverse(terms), terms, pre))
    torch.testing.assert_close(vec, SpanGatedRanking.standardized(pre.inverse(terms), terms, pre))
    with pytest.raises(ValueError, match="span_gated ranking standardises influence"):
        gated().token_queries(QuerySpace(ScoreTransform("grad_dot", None)), terms, terms, owner)


def test_standardized_tokens_have_unit_rms_over_the_training_set():
    train, pre = _fitted(50, 10, 2.0, max_rows=0)
    g = _vectors(5, 10, seed=5)
    g[3] = 0.0  # a token without gradient stays zero instead of dividing by zero
    std = SpanGatedRanking.standardized(pre.inverse(g), g, pre)
    rms = (std @ train.T).pow(2).mean(1).sqrt()
    torch.testing.assert_close(
        rms[[0, 1, 2, 4]], torch.ones(4, dtype=torch.float64), rtol=1e-9, atol=1e-12
    )
    assert bool((std[3] == 0).all())


@pytest.mark.parametrize("k", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_saturation_is_refused_with_the_fix(k):
    with pytest.raises(ValueError, match="positive number"):
        RankingConfig(saturation=k)
    with pytest.raises(ValueError, match="saturation="):
        BuildConfig(saturation=k)


def test_build_config_resolves_the_ranking_from_the_score():
    assert BuildConfig().ranking == "span_gated"
    assert BuildConfig(score="relatif").ranking == "linear"
    assert BuildConfig(ranking="linear").ranking == "linear"
    with pytest.raises(
        ValueError,
        match="ranking='span_gated' with score='cosine'.*ranking='linear' to keep 'cosine'",
    ):
        BuildConfig(score="cosine", ranking="span_gated")
    with pytest.raises(
        ValueError, match=re.escape(f"ranking='top' (choose from {list(RANKINGS)})")
    ):
        BuildConfig(ranking="top")
    # the ranking is a query-time choice: not part of the identity a resume or an add must match
    assert "ranking" not in BuildConfig().identity()
    assert BuildConfig(saturation=20.0).query_settings() == RankingConfig(saturation=20.0).to_dict()


def test_emitting_positions_are_the_ones_before_each_target():
    from tributary_indexer.data.batching import TokenizedExample, collate

    ex = TokenizedExample((5, 6, 7, 8, 9), (False, False, True, False, True))
    assert collate([ex]).emitting_mask[0].nonzero()[:, 0].tolist() == [1, 3]
