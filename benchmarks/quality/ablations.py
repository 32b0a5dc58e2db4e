"""Rankings the benchmarks compare the product's with: ``span_gated`` with one part taken away.

=========================  ==================================================================
``span_saturated``         ``C + N``: the copy spans and weights without the presence gate.
``token_saturated``        every response token its own span, weight 1, no gate.
``span_gated`` core=w      the gate with a copied span's core chosen by weight: its tokens of at
                           least ``presence_core`` times the span's largest weight (0: every
                           token of the span), instead of by matched share.
=========================  ==================================================================

They reuse :class:`~tributary_indexer.query.ranking.SpanGatedRanking`'s code and change only the
part named, so a row's difference from the default's is that part's contribution.
"""

from __future__ import annotations

import torch
from tributary_indexer.config import RankingConfig
from tributary_indexer.data.batching import TokenizedExample
from tributary_indexer.hessian.preconditioner import Preconditioner
from tributary_indexer.query.ranking import LinearRanking, Ranking, SpanGatedRanking, TokenQuery

ABLATIONS = ("token_saturated", "span_saturated")
"""Ranking names that exist only here."""

WEIGHT_CORE = 0.5
"""The weight core's default: a copied span's tokens of at least half its largest weight."""


class SpanSaturatedRanking(SpanGatedRanking):
    """``C + N``: copy spans weighted by specificity, without the presence gate."""

    name = "span_saturated"
    gated = False


class TokenSaturatedRanking(SpanSaturatedRanking):
    """Every response token its own span, each of weight 1."""

    name = "token_saturated"

    def token_weights(
        self,
        token_queries: torch.Tensor,
        token_gradients: torch.Tensor,
        preconditioner: Preconditioner,
    ) -> torch.Tensor:
        return torch.ones(len(token_gradients), dtype=torch.float64, device=token_gradients.device)

    def spans(self, example: TokenizedExample, n_tokens: int) -> torch.Tensor:
        return torch.arange(n_tokens)


class WeightCoreRanking(SpanGatedRanking):
    """``span_gated`` whose copied spans' core is chosen by weight, not by matched share."""

    def __init__(self, config: RankingConfig, presence_core: float = WEIGHT_CORE):
        super().__init__(config)
        if not 0.0 <= presence_core <= 1.0:
            raise ValueError(f"presence_core must be a fraction in [0, 1] (got {presence_core})")
        self.presence_core = presence_core

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and other.presence_core == self.presence_core  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.config, self.presence_core))

    @property
    def needs_reference(self) -> bool:
        return False

    def core(
        self,
        query: TokenQuery,
        index: torch.Tensor,
        n_spans: int,
        weight: torch.Tensor,
        harmful: bool,
    ) -> torch.Tensor:
        return query.weights.to(weight) >= self.presence_core * weight[index]  # >= core · largest


def benchmark_ranking(
    name: str, config: RankingConfig, presence_core: float | None = None
) -> Ranking:
    """The product's ranking ``name``, an ablation, or (``presence_core`` set) ``span_gated``
    with the core by weight."""
    if presence_core is not None:
        if name != "span_gated":
            raise ValueError(f"presence_core applies to span_gated, not {name!r}")
        return WeightCoreRanking(config, presence_core)
    classes = {
        c.name: c
        for c in (LinearRanking, SpanGatedRanking, SpanSaturatedRanking, TokenSaturatedRanking)
    }
    if name not in classes:
        raise ValueError(f"unknown ranking {name!r}; choose from {list(classes)}")
    return classes[name](config)
