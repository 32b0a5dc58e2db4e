"""The rankings: how the examples an index finds for a query are ordered.

An ``influence`` score is linear in the query gradient, so it splits exactly over the positions
that emit the response tokens: ``score(z) = Σ_t s_t(z)`` with ``s_t(z) = ⟨u_t, g(z)⟩``,
``u_t = H^{-1} g_q^{(t)}`` (plus the prompt positions' small share). Two rankings:

``linear``
    ``score(z)``, the influence on the whole response (any score variant). One search.
``span_gated`` (influence indexes)
    Each token's score is standardised, ``z_t = s_t / rms_t`` with ``rms_t² = E_z[s_t(z)²]``
    computed from the index's Fisher (no pass over the data), and saturated,
    ``φ(z) = max(z, 0) / (max(z, 0) + k)`` (BM25's term curve), so that no single token, such as
    a copied name, can carry a document: it must explain several parts of the response. The
    response is cut into *copy spans* (:func:`copy_spans`: a run copied from the prompt is one
    span, every other token its own), and a span counts once, through its best token, weighted
    by its *specificity* ``w_t = λ‖u_t‖² / rms_t²`` (the damping's share of the token's
    self-influence: an inverse document frequency in Fisher terms, high for names and answers,
    low for template words). With ``C`` the copied spans' part and ``N`` the new spans' part of
    ``Σ_s w_s φ(max_{t∈s} z_t)``, the score is ``C + N · (1 + P)``: the *presence*
    ``P = mean_{copied s} φ_p(max_{t∈core(s)} z_t)`` (``φ_p`` saturating at ``presence_k``) asks
    whether the example is about what the prompt names, and lets the evidence for the new
    content count up to twice there, a soft AND. A span's *core* is its selective tokens: those
    matching (``z_t > presence_k``) at most ``presence_selectivity`` times the share of a fixed
    reference sample of stored vectors (:func:`reference_rows`) that its most selective token
    matches, or ``presence_floor`` of it; template words copied beside a name thus cannot stand
    in for it. A response that copies nothing ranks by ``C + N``.

A saturated score is not an inner product, so it is found in two stages: the index is searched
with ``Σ_t u_t / rms_t`` for ``candidates`` examples per direction, which are re-scored exactly.
A harmful query ranks by the negated scores (and counts its shares on them). Every constant is a
field of :class:`~tributary_indexer.config.RankingConfig`; the measurements behind the defaults
are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..config import RANKINGS, RankingConfig
from ..data.batching import TokenizedExample
from ..hessian.preconditioner import Preconditioner
from ..hessian.scores import safe_reciprocal
from .space import QuerySpace

__all__ = [
    "RANKINGS",
    "Ranking",
    "LinearRanking",
    "SpanGatedRanking",
    "RankingQuery",
    "TokenQuery",
    "copy_spans",
    "make_ranking",
    "reference_rows",
]


def copy_spans(example: TokenizedExample) -> torch.Tensor:
    """``[n_targets]`` long: the copy span of each response token, numbered from 0 in order.

    A token continues the previous token's span when the two occur next to each other, in that
    order, among the example's non-target tokens (the prompt, the chat template, earlier turns):
    the response is copying a run of the prompt there. Every other token starts a span.
    """
    context = [t for t, target in zip(example.input_ids, example.target_mask) if not target]
    pairs = set(zip(context, context[1:]))
    response = [t for t, target in zip(example.input_ids, example.target_mask) if target]
    spans, current = [], -1
    for j, token in enumerate(response):
        if j == 0 or (response[j - 1], token) not in pairs:
            current += 1
        spans.append(current)
    return torch.tensor(spans, dtype=torch.long)


def reference_rows(n_examples: int, rows: int = RankingConfig.reference_rows) -> np.ndarray:
    """``[min(rows, n_examples)]`` int64 example ids, evenly spaced over the index: its reference
    sample."""
    if n_examples <= rows:
        return np.arange(n_examples, dtype=np.int64)
    return np.unique(np.linspace(0, n_examples - 1, rows).round().astype(np.int64))


@dataclass(frozen=True)
class TokenQuery:
    """One query's response tokens as a saturated ranking scores them (rows aligned)."""

    vectors: torch.Tensor
    """``[n_t, D]`` float64: the standardised vectors ``u_t / rms_t``."""
    weights: torch.Tensor
    """``[n_t]`` float64: each token's weight (its specificity)."""
    spans: torch.Tensor
    """``[n_t]`` long: each token's span (``0..n_s-1``)."""
    shares: torch.Tensor | None = None
    """``[2, n_t]`` float64 or ``None``: the share of the reference sample each token matches, in
    the helpful (row 0) and harmful (row 1) direction; the selective core needs it."""

    @property
    def copied(self) -> torch.Tensor:
        """``[n_s]`` bool: the span is a run of two or more tokens copied from the prompt."""
        n_spans = int(self.spans.max()) + 1 if len(self.spans) else 0
        return torch.bincount(self.spans, minlength=n_spans) >= 2


@dataclass(frozen=True)
class RankingQuery:
    """One query as a ranking searches and re-scores with it."""

    influence: torch.Tensor
    """``[D]`` float64: the linear query vector (the score variant's ``q``); token-wise shares and
    the ``linear`` ranking use it."""
    search: torch.Tensor
    """``[D]`` float64: the vector the index is searched with (the first stage of a two-stage
    ranking)."""
    tokens: TokenQuery | None = None
    """The response tokens a two-stage ranking re-scores with (``None``: one stage)."""


class Ranking(ABC):
    """How a query's examples are ordered (one implementation per ranking name)."""

    name: ClassVar[str]
    positions: ClassVar[bool]
    """The query gradient must keep the terms of the positions that emit the response tokens."""

    def __init__(self, config: RankingConfig):
        self.config = config

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config == self.config  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    @property
    def needs_reference(self) -> bool:
        """The ranking counts shares on the index's reference sample (:func:`reference_rows`)."""
        return False

    def fetch(self, top_k: int) -> int:
        """Results wanted from the search per direction for a ``top_k`` answer."""
        return top_k

    @abstractmethod
    def queries(
        self,
        space: QuerySpace,
        totals: torch.Tensor,
        terms: torch.Tensor | None,
        owner: torch.Tensor | None,
        examples: Sequence[TokenizedExample],
        reference: torch.Tensor | None = None,
    ) -> list[RankingQuery]:
        """One :class:`RankingQuery` per query of a batch.

        ``totals`` ``[B, D_proj]`` are the queries' projected gradients; ``terms`` ``[n, D_proj]``
        the per-position terms of the positions emitting their response tokens (when
        :attr:`positions`), ``owner`` ``[n]`` each term's query, ``examples`` the queries'
        tokenised examples and ``reference`` ``[M, D]`` the reference sample (when
        :attr:`needs_reference`).
        """

    def rescore(
        self, query: RankingQuery, stored: torch.Tensor, harmful: bool = False
    ) -> torch.Tensor | None:
        """``[C]`` float64 scores of the candidates' stored vectors ``[C, D]`` in the query's
        direction (larger ranks first), or ``None`` when the search order is final."""
        return None


class LinearRanking(Ranking):
    """``linear``: the influence on the whole response, as the search returns it."""

    name = "linear"
    positions = False

    def queries(
        self,
        space: QuerySpace,
        totals: torch.Tensor,
        terms: torch.Tensor | None,
        owner: torch.Tensor | None,
        examples: Sequence[TokenizedExample],
        reference: torch.Tensor | None = None,
    ) -> list[RankingQuery]:
        influence = space.query(totals)  # [B, D]
        return [RankingQuery(row, row) for row in influence]


class SpanGatedRanking(Ranking):
    """``span_gated``: standardised, saturated copy spans with the presence gate (module docstring).

    Subclasses (the benchmarks' ablations) change the spans, the weights, the core or the gate.
    """

    name = "span_gated"
    positions = True
    gated: ClassVar[bool] = True
    """``C + N · (1 + P)``; ``False`` ranks by ``C + N``."""

    @property
    def needs_reference(self) -> bool:
        return self.gated

    def fetch(self, top_k: int) -> int:
        return max(top_k, self.config.candidates)

    # ---------------------------------------------------------------- the query's tokens
    @staticmethod
    def standardized(
        token_queries: torch.Tensor, token_gradients: torch.Tensor, preconditioner: Preconditioner
    ) -> torch.Tensor:
        """``[n, D]`` the tokens' query vectors ``u_t`` divided by their score's RMS.

        ``token_gradients`` are the ``[n, D]`` per-position query gradients ``g_q^{(t)}`` in the
        preconditioner's space and ``token_queries`` their vectors ``u_t = H^{-1} g_q^{(t)}``.
        """
        second = preconditioner.score_second_moment(token_gradients, token_queries)
        rms = second.sqrt()  # [n]; 0: the token adds nothing
        return token_queries.to(torch.float64) * safe_reciprocal(rms)[:, None]

    @staticmethod
    def specificity(
        token_queries: torch.Tensor, token_gradients: torch.Tensor, preconditioner: Preconditioner
    ) -> torch.Tensor:
        """``[n]`` ``λ‖u_t‖² / E_z[s_t(z)²]`` (0 for a token without gradient)."""
        second = preconditioner.score_second_moment(token_gradients, token_queries)  # [n]
        return preconditioner.damped_norm(token_queries) * safe_reciprocal(second)

    def token_weights(
        self,
        token_queries: torch.Tensor,
        token_gradients: torch.Tensor,
        preconditioner: Preconditioner,
    ) -> torch.Tensor:
        """``[n]`` float64: each token's weight (its :meth:`specificity`)."""
        return self.specificity(token_queries, token_gradients, preconditioner)

    def spans(self, example: TokenizedExample, n_tokens: int) -> torch.Tensor:
        """``[n_tokens]`` the spans of ``example``'s response tokens (:func:`copy_spans`)."""
        spans = copy_spans(example)
        if len(spans) != n_tokens:
            raise ValueError(
                f"{n_tokens} token vectors for an example with {len(spans)} response tokens"
            )
        return spans

    def token_queries(
        self, space: QuerySpace, terms: torch.Tensor, totals: torch.Tensor, owner: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised vectors ``[n, D]`` and weights ``[n]`` (float64) of per-position terms.

        ``terms`` ``[n, D_proj]`` are projected terms ``g^{(t)}`` of response positions,
        ``totals`` ``[B, D_proj]`` their queries' whole gradients (RapidGrad's layer scales come
        from the total, as for the stored vectors), ``owner`` ``[n]`` each row's query. One
        compression, one preconditioning and one second moment for the whole batch.
        """
        transform = space.transform
        if transform.variant != "influence" or transform.preconditioner is None:
            raise ValueError(
                f"the {self.name} ranking standardises influence scores; got score "
                f"variant {transform.variant!r}"
            )
        g = space.query_terms(terms, totals, owner)  # [n, K] float64
        u = transform.linear("query", g)  # [n, D]: H^{-1} g
        pre = transform.preconditioner
        return self.standardized(u, g, pre), self.token_weights(u, g, pre)

    def matched_shares(self, vectors: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``[2, n]`` float64: the share of ``reference`` ``[M, D]`` stored vectors that each
        standardised token vector ``[n, D]`` matches (score above ``presence_k``), in the helpful
        and the harmful (negated) direction."""
        if reference.ndim != 2 or reference.shape[0] == 0 or reference.shape[1] != vectors.shape[1]:
            raise ValueError(
                f"the reference sample must be [M >= 1, {vectors.shape[1]}] stored "
                f"vectors; got {list(reference.shape)}"
            )
        z = vectors.to(reference.dtype) @ reference.to(vectors.device).T  # [n, M]
        k = self.config.presence_k
        return torch.stack([(z > k).to(torch.float64).mean(1), (-z > k).to(torch.float64).mean(1)])

    def split(
        self,
        vectors: torch.Tensor,
        weights: torch.Tensor,
        owner: torch.Tensor,
        examples: Sequence[TokenizedExample],
        reference: torch.Tensor | None = None,
    ) -> list[TokenQuery]:
        """:meth:`token_queries`' rows of a batch as one :class:`TokenQuery` per query (``owner``
        ``[n]``: row → query); the matched shares come from one product with ``reference``."""
        shares = None
        if self.needs_reference:
            if reference is None:
                raise ValueError(
                    f"{self.name} needs the reference sample of stored vectors "
                    "(reference_rows); pass reference="
                )
            shares = self.matched_shares(vectors, reference)  # [2, n]
        out = []
        for row, example in enumerate(examples):
            mine = owner == row
            mine_vectors = vectors[mine]
            spans = self.spans(example, len(mine_vectors)).to(vectors.device)
            out.append(
                TokenQuery(
                    mine_vectors,
                    weights[mine],
                    spans,
                    None if shares is None else shares[:, mine.to(shares.device)],
                )
            )
        return out

    def queries(
        self,
        space: QuerySpace,
        totals: torch.Tensor,
        terms: torch.Tensor | None,
        owner: torch.Tensor | None,
        examples: Sequence[TokenizedExample],
        reference: torch.Tensor | None = None,
    ) -> list[RankingQuery]:
        if terms is None or owner is None:
            raise ValueError(
                f"the {self.name} ranking needs the per-position terms of the response "
                "tokens (compute the gradients with positions=)"
            )
        totals = totals.reshape(-1, totals.shape[-1])
        influence = space.query(totals)  # [B, D]
        vectors, weights = self.token_queries(space, terms, totals, owner.to(terms.device))
        tokens = self.split(vectors, weights, owner.to(vectors.device), examples, reference)
        return [RankingQuery(influence[row], t.vectors.sum(0), t) for row, t in enumerate(tokens)]

    # ---------------------------------------------------------------- scoring
    def rescore(
        self, query: RankingQuery, stored: torch.Tensor, harmful: bool = False
    ) -> torch.Tensor | None:
        if query.tokens is None:
            raise ValueError(
                f"a {self.name} query needs its response tokens (build it with queries())"
            )
        tokens = query.tokens
        return self.aggregate(
            tokens.vectors @ stored.to(tokens.vectors.device, torch.float64).T, tokens, harmful
        )

    def aggregate(
        self, token_scores: torch.Tensor, query: TokenQuery, harmful: bool = False
    ) -> torch.Tensor:
        """``[n_tokens, n_examples]`` standardised token scores → ``[n_examples]`` scores.

        ``harmful``: rank by the negated scores, with the shares counted on them (the result stays
        ``>= 0``; negate it for a harmful example's signed score).
        """
        sign = -1.0 if harmful else 1.0
        z = (sign * token_scores.to(torch.float64)).clamp_min(0.0)  # [n_t, N]
        n_spans = int(query.spans.max()) + 1 if len(query.spans) else 0
        index = query.spans.to(z.device)
        spread = index[:, None].expand_as(z)
        best = torch.zeros(n_spans, z.shape[1], dtype=torch.float64, device=z.device)
        best = best.scatter_reduce(0, spread, z, "amax")  # [n_s, N]: a span's best token
        weight = torch.zeros(n_spans, dtype=torch.float64, device=z.device)
        weight = weight.scatter_reduce(0, index, query.weights.to(z), "amax")  # [n_s]
        terms = weight[:, None] * best / (best + self.config.saturation)  # [n_s, N]
        if not self.gated:
            return terms.sum(0)
        copied = query.copied.to(z.device)  # [n_s]
        if not bool(copied.any()):
            return terms.sum(0)
        core = self.core(query, index, n_spans, weight, harmful)  # [n_t] bool
        core_best = torch.zeros_like(best).scatter_reduce(0, spread, z * core[:, None], "amax")
        k = self.config.presence_k
        presence = (core_best[copied] / (core_best[copied] + k)).mean(0)  # [N]: P, in [0, 1)
        return terms.sum(0) + terms[~copied].sum(0) * presence  # C + N · (1 + P)

    def core(
        self,
        query: TokenQuery,
        index: torch.Tensor,
        n_spans: int,
        weight: torch.Tensor,
        harmful: bool,
    ) -> torch.Tensor:
        """``[n_t]`` bool: the tokens a copied span's presence is taken from (its core)."""
        if query.shares is None:
            raise ValueError(
                "this TokenQuery has no matched shares; build it with a reference "
                f"sample for {self.name}'s selective core"
            )
        share = query.shares[int(harmful)].to(weight)  # [n_t]
        above = torch.full((n_spans,), 2.0, dtype=share.dtype, device=share.device)  # > any share
        lowest = above.scatter_reduce(0, index, share, "amin")  # [n_s]: the most selective share
        limit = (self.config.presence_selectivity * lowest[index]).clamp_min(
            self.config.presence_floor
        )
        return share <= limit  # [n_t]


_RANKING_CLASSES: dict[str, type[Ranking]] = {c.name: c for c in (LinearRanking, SpanGatedRanking)}
assert tuple(_RANKING_CLASSES) == RANKINGS


def make_ranking(config: RankingConfig) -> Ranking:
    """The :class:`Ranking` that ``config.ranking`` names."""
    return _RANKING_CLASSES[config.ranking](config)
