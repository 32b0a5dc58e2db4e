"""The token_saturated ranking: its RMS from the Fisher against the training set, its formula, its config."""

from __future__ import annotations

import pytest
import torch
from tributary_indexer.config import BuildConfig
from tributary_indexer.fisher import FisherAccumulator
from tributary_indexer.preconditioner import Preconditioner
from tributary_indexer.projector import Block
from tributary_indexer.token_ranking import TokenSaturation


def _vectors(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 2.0, d, dtype=torch.float64)


@pytest.mark.parametrize("n, max_rows", [(40, 0), (5, None)], ids=["dense-inverse", "gram-inverse"])
@pytest.mark.parametrize("alpha", [1e-2, 1.0, 24.0])
def test_score_second_moment_is_the_mean_squared_score_over_the_training_vectors(n, max_rows, alpha):
    block = [Block("rapidgrad", 0, 12)]
    train = _vectors(n, 12)
    fisher = FisherAccumulator(block, max_rows=max_rows)
    fisher.update(train)
    pre = Preconditioner.from_fisher(fisher, alpha)
    v = _vectors(7, 12, seed=1)
    # oracle: every training vector's score against H^{-1} v, squared and averaged
    h = train.T @ train / n + pre.lambdas[0] * torch.eye(12, dtype=torch.float64)
    scores = torch.linalg.solve(h, v.T).T @ train.T  # [7, n]
    torch.testing.assert_close(pre.score_second_moment(v), scores.pow(2).mean(1), rtol=1e-9, atol=1e-12)


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


def test_saturated_scores_follow_the_formula_and_the_first_stage_sums_tokens():
    sat = TokenSaturation(k=3.0)
    tokens = _vectors(4, 6, seed=3)
    stored = _vectors(9, 6, seed=4)
    z = tokens @ stored.T  # [4, 9]
    want = sum(max(float(x), 0.0) / (max(float(x), 0.0) + 3.0) for x in z[:, 2])
    got = sat.scores(tokens, stored)
    assert got.shape == (9,) and abs(float(got[2]) - want) < 1e-12
    assert bool((got >= 0).all()) and bool((got < 4).all())  # each token adds less than 1
    torch.testing.assert_close(sat.first_stage_query(tokens), tokens.sum(0))
    harmful = sat.aggregate(-z)  # the harmful direction: negated token scores
    assert abs(float(harmful[2]) - sum(max(-float(x), 0.0) / (max(-float(x), 0.0) + 3.0) for x in z[:, 2])) < 1e-12


def test_standardized_tokens_have_unit_rms_over_the_training_set():
    block = [Block("rapidgrad", 0, 10)]
    train = _vectors(50, 10)
    fisher = FisherAccumulator(block, max_rows=0)
    fisher.update(train)
    pre = Preconditioner.from_fisher(fisher, 2.0)
    g = _vectors(5, 10, seed=5)
    g[3] = 0.0  # a token without gradient stays zero instead of dividing by zero
    std = TokenSaturation().standardized(pre.inverse(g), g, pre)
    rms = (std @ train.T).pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms[[0, 1, 2, 4]], torch.ones(4, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert bool((std[3] == 0).all())


@pytest.mark.parametrize("k", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_saturation_is_refused_with_the_fix(k):
    with pytest.raises(ValueError, match="positive number"):
        TokenSaturation(k)
    with pytest.raises(ValueError, match="saturation="):
        BuildConfig(saturation=k)


def test_build_config_resolves_the_ranking_from_the_score():
    assert BuildConfig().ranking == "token_saturated"
    assert BuildConfig(score="relatif").ranking == "linear"
    assert BuildConfig(ranking="linear").ranking == "linear"
    with pytest.raises(ValueError, match="ranking='linear' to keep 'cosine'"):
        BuildConfig(score="cosine", ranking="token_saturated")
    with pytest.raises(ValueError, match=r"ranking='top' \(choose from \['linear', 'token_saturated'\]\)"):
        BuildConfig(ranking="top")
    # the ranking is a query-time choice: not part of the identity a resume or an add must match
    assert "ranking" not in BuildConfig().identity() and BuildConfig().query_settings() == {
        "ranking": "token_saturated", "saturation": 30.0}


def test_emitting_positions_are_the_ones_before_each_target():
    from tributary_indexer.batching import TokenizedExample

    ex = TokenizedExample((5, 6, 7, 8, 9), (False, False, True, False, True))
    assert ex.emitting_positions == [1, 3]
