"""How a training example's influence on each response token becomes its rank: the rankings.

An ``influence`` score is linear in the query gradient, so it splits exactly over the positions
that emit the response tokens (DESIGN §2): ``score(z) = Σ_t s_t(z)`` with
``s_t(z) = ⟨H^{-1} g_q^{(t)}, g(z)⟩`` (plus the prompt positions' small share). Three rankings:

=====================  =====================================================================
``linear``             rank by ``score(z)``: the influence on the whole response.
``token_saturated``    rank by ``Σ_t φ(z_t(z))`` with ``z_t = s_t / rms_t`` the token's score
                       over its root-mean-square over the training set, and the saturating
                       ``φ(z) = max(z, 0) / (max(z, 0) + k)`` (BM25's term-frequency curve).
``span_saturated``     rank by ``Σ_s w_s φ(max_{t∈s} z_t(z))`` over the response's *copy spans*
                       ``s`` (:func:`copy_spans`), each weighted by its tokens' largest
                       *specificity* ``w_t = λ‖u_t‖² / rms_t²`` (``u_t = H^{-1} g_q^{(t)}``).
``span_gated``         ``span_saturated``'s sum ``C + N``, split into the copied spans' part
                       ``C`` and the new spans' part ``N``, plus ``N · P``: the new content
                       counts up to twice as much in an example *about* what the prompt names,
                       ``P = mean_{copied s} φ_p(max_{t∈core(s)} z_t)`` with ``φ_p`` saturating
                       at ``presence_k`` (default 2, in RMS units): ``C + N · (1 + P)``. A
                       span's *core* is its *selective* tokens: those whose share ``f_t`` of a
                       reference sample of stored vectors with ``z_t > presence_k`` is at most
                       ``max(presence_selectivity · min_s f, presence_floor)`` (2×, 0.2 %).
=====================  =====================================================================

Why saturate: in a linear sum one response token can carry a document. For "Zurvae Pialdaley
lives in Stenholm." every post that repeats the subject's name matches the response's (copied)
name tokens so strongly that it outranks the document stating where the subject lives, which
matches the name once and every other token too. Standardising each token (``rms_t``) puts the
tokens on one scale, and saturation caps what any one of them adds, so a document has to explain
*several* response tokens to rank first. ``rms_t`` needs no pass over the training set: it is
``E_z[s_t(z)²]`` under the index's own Fisher
(:meth:`~tributary_indexer.hessian.preconditioner.Preconditioner.score_second_moment`).

Why spans and weights: a name of two tokens copied from the prompt is one piece of
evidence, but ``token_saturated`` lets a document that repeats the name collect it once per token;
a copy span counts once, through its best-matched token. And not every token is as telling: the
response's template words ("The", "lives", "in") point along directions the training set
exercises all the time, its names and answers along directions few examples share. The damping's
share of a token's self-influence, ``λ‖u_t‖²`` against ``rms_t² = u_tᵀ F u_t`` (their sum is
``g_q^{(t)ᵀ} H^{-1} g_q^{(t)}``), measures that without a pass over the data: roughly ``λ`` over
the Fisher's eigenvalue along the token's direction, an inverse document frequency in Fisher
terms. On the demo benchmarks this took fact recall@1 from 0.91 to 0.99 (level with BM25) and
raised LDS and backdoor AUPRC too (``benchmarks/RESULTS.md``).

A saturated score is not an inner product, so the service finds it in two stages: the index is
searched with the linear query ``Σ_t H^{-1} g_q^{(t)} / rms_t`` (the standardised tokens, each
counted once) for ``candidates`` examples, which are then re-scored exactly.

Why gate (the default): under ``span_saturated`` the copied name is one more additive term, and
a post that mentions the subject twice ("Cooking for X tonight. The favourite food of X is ...")
matches it about three times as strongly (z ≈ 20 against ≈ 7) as a document stating the fact
asked about, which names the subject once: its second mention is itself an in-context copy,
exactly what the response's name tokens are. The answer tokens, which only the stating document
matches, could not make that up; on corpora generated with other seeds this was most of the misses.
What a copied span can tell is whether a training example is *about* the prompt's entity, so
``span_gated`` asks that as a near-yes/no presence ``P`` (half credit at ``presence_k`` RMS) and
lets it multiply the evidence for the response's new content: a soft AND of "same subject" and
"same new content". An example with no new-content match gains nothing from the gate; a response
that copies nothing (``P = 0``) ranks exactly as under ``span_saturated``. On the demo and four
held-out generated corpora it raised fact recall@1 on every one (pooled over their 1,950
questions 0.972 → 0.984: 28 gained, 4 lost), and LDS from 0.521 to 0.564, so the examples it
lifts, about the subject and carrying the answer, are also ones the model needed
(``benchmarks/RESULTS.md``, "Session 9").

Why a core: a copy span is a run the response copies from the prompt, so it often joins template
words to a name ("favourite food of Soto Drunfis"), and its best-matched token can be a template
word that a document about *another* subject in the same template matches as well as the
stating document matches the name. The presence is then taken from the span's tokens whose
specificity is at least ``presence_core`` (½) of the span's largest, the ones that tell the entity
apart; the span's own term ``C`` keeps its best token over the whole span (the stating documents
often share the template too: taking ``C`` from the core as well lost 0–9 questions a corpus). Over the
demo and ten generated corpora it gained 18 questions and lost 6 (sign test p = 0.02), worse on
none (``benchmarks/RESULTS.md``, "Session 10").

Why selective: the weight only estimates, from the Fisher, how common a token's direction is. The
question the core asks is which of the span's tokens *tell examples apart*, and that can be
counted: the share of training examples a token matches (``z_t > presence_k``, where the presence
gives half credit), a document frequency in gradient space. The core keeps the span's most
selective token and those matching at most twice as many examples (or 0.2 % of them, so that two
rare tokens both count). The shares are counted on a fixed reference sample of the index
(:func:`reference_rows`: every example up to 4,096, else 4,096 evenly spaced), so an example's score
stays its own, never dependent on which others are candidates; it costs one ``[n_t, 4096]`` product
per query and the sample in memory. Over the demo and thirteen generated corpora it gained 24
questions and lost 5 against the weight core (+8 / −2 on the three corpora trained to check it),
and LDS rose from 0.566 to 0.571 (``benchmarks/RESULTS.md``, "Session 11").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.batching import TokenizedExample
from ..gradients.rapidgrad import RapidGradCompressor
from ..hessian.preconditioner import Preconditioner
from ..hessian.scores import ScoreTransform, safe_reciprocal

RANKINGS = ("linear", "token_saturated", "span_saturated", "span_gated")
SATURATED_RANKINGS = RANKINGS[1:]
"""The rankings that re-score per response token (``influence`` indexes only)."""


def copy_spans(example: TokenizedExample) -> torch.Tensor:
    """``[n_targets]`` long: the copy span of each target (response) token, numbered from 0 in order.

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


@dataclass(frozen=True)
class TokenQuery:
    """One query's response tokens as a saturated ranking scores them (rows aligned)."""

    vectors: torch.Tensor
    """``[n_t, D]`` float64: the standardised vectors ``H^{-1} g_q^{(t)} / rms_t``."""
    weights: torch.Tensor
    """``[n_t]`` float64: each token's weight (its specificity; 1 under ``token_saturated``)."""
    spans: torch.Tensor
    """``[n_t]`` long: each token's span (``0..n_s-1``; every token its own under ``token_saturated``)."""
    shares: torch.Tensor | None = None
    """``[2, n_t]`` float64 or ``None``: the share of the reference sample each token matches, in the
    helpful (row 0) and harmful (row 1) direction (:meth:`TokenSaturation.matched_shares`);
    ``span_gated``'s selective core needs it."""

    @property
    def copied(self) -> torch.Tensor:
        """``[n_s]`` bool: the span is a run of two or more tokens copied from the prompt (:func:`copy_spans`)."""
        n_spans = int(self.spans.max()) + 1 if len(self.spans) else 0
        return torch.bincount(self.spans, minlength=n_spans) >= 2


@dataclass(frozen=True)
class TokenSaturation:
    """A saturated ranking (one of :data:`SATURATED_RANKINGS`) with constant ``k`` (in units of ``rms_t``).

    ``presence_k``: ``span_gated``'s saturation constant for the copied spans' presence ``P``; a
    token *matches* an example where its standardised score exceeds it (half credit or more).
    ``presence_selectivity``: ``span_gated`` takes a copied span's presence from its *core*, the
    tokens that match at most ``presence_selectivity`` times the share of the reference sample
    that the span's most selective token matches, or ``presence_floor`` (a share) if that is larger.
    ``None`` chooses the core by weight instead: the tokens whose weight is at least
    ``presence_core`` times the span's largest (``presence_core`` 0: every token of the span).
    """

    k: float = 30.0
    ranking: str = "token_saturated"
    presence_k: float = 2.0
    presence_core: float = 0.5
    presence_selectivity: float | None = 2.0
    presence_floor: float = 0.002

    def __post_init__(self) -> None:
        if not (self.k > 0 and math.isfinite(self.k)):
            raise ValueError(f"saturation k must be a positive number (got {self.k}); the default is {TokenSaturation.k:g}")
        if not (self.presence_k > 0 and math.isfinite(self.presence_k)):
            raise ValueError(f"presence_k must be a positive number (got {self.presence_k}); "
                             f"the default is {TokenSaturation.presence_k:g}")
        if not 0.0 <= self.presence_core <= 1.0:
            raise ValueError(f"presence_core must be a fraction in [0, 1] (got {self.presence_core}); "
                             f"the default is {TokenSaturation.presence_core:g}, 0 takes every token of a copied span")
        if self.presence_selectivity is not None and not (self.presence_selectivity >= 1 and math.isfinite(self.presence_selectivity)):
            raise ValueError(f"presence_selectivity must be a number >= 1 or None (got {self.presence_selectivity}); the "
                             f"default is {TokenSaturation.presence_selectivity:g}, None chooses the core by weight")
        if not 0.0 <= self.presence_floor <= 1.0:
            raise ValueError(f"presence_floor must be a share in [0, 1] (got {self.presence_floor}); "
                             f"the default is {TokenSaturation.presence_floor:g}")
        if self.ranking not in SATURATED_RANKINGS:
            raise ValueError(f"{self.ranking!r} is not a saturated ranking; choose one of {list(SATURATED_RANKINGS)}")

    @property
    def selective(self) -> bool:
        """The presence's core is chosen by the tokens' matched shares (needs a reference sample)."""
        return self.ranking == "span_gated" and self.presence_selectivity is not None

    def matched_shares(self, vectors: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``[2, n]`` float64: the share of ``reference`` ``[M, D]`` stored vectors that each of the standardised
        token ``vectors`` ``[n, D]`` matches (score above ``presence_k``), helpful and harmful (negated) direction."""
        if reference.ndim != 2 or reference.shape[0] == 0 or reference.shape[1] != vectors.shape[1]:
            raise ValueError(f"the reference sample must be [M >= 1, {vectors.shape[1]}] stored vectors; got {list(reference.shape)}")
        z = vectors.to(reference.dtype) @ reference.to(vectors.device).T  # [n, M]
        return torch.stack([(z > self.presence_k).to(torch.float64).mean(1), (-z > self.presence_k).to(torch.float64).mean(1)])

    @property
    def by_span(self) -> bool:
        """Copy spans and specificity weights (``span_saturated``, ``span_gated``), or every token alone."""
        return self.ranking != "token_saturated"

    @staticmethod
    def standardized(token_queries: torch.Tensor, token_gradients: torch.Tensor, preconditioner: Preconditioner) -> torch.Tensor:
        """``[n, D]`` query vectors of the response tokens, each divided by its score's RMS.

        ``token_gradients`` are the ``[n, D]`` per-position query gradients ``g_q^{(t)}`` in the
        preconditioner's space and ``token_queries`` their transformed vectors ``H^{-1} g_q^{(t)}``.
        """
        rms = preconditioner.score_second_moment(token_gradients, token_queries).sqrt()  # [n]; 0: the token adds nothing
        return token_queries.to(torch.float64) * safe_reciprocal(rms)[:, None]

    @staticmethod
    def specificity(token_queries: torch.Tensor, token_gradients: torch.Tensor, preconditioner: Preconditioner) -> torch.Tensor:
        """``[n]`` ``λ‖u_t‖² / E_z[s_t(z)²]`` with ``u_t`` = ``token_queries`` (0 for a token without gradient)."""
        second = preconditioner.score_second_moment(token_gradients, token_queries)  # [n]
        return preconditioner.damped_norm(token_queries) * safe_reciprocal(second)

    def token_queries(self, terms: torch.Tensor, totals: torch.Tensor, owner: torch.Tensor, transform: ScoreTransform,
                      compressor: RapidGradCompressor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised query vectors ``[n, D]`` and token weights ``[n]`` (float64) from per-position terms.

        ``terms`` ``[n, D_proj]`` are projected terms ``g^{(t)}`` of response positions, ``totals``
        ``[B, D_proj]`` their queries' whole gradients (RapidGrad's layer scales come from the
        total, as for the stored vectors), ``owner`` ``[n]`` each row's query. ``transform`` must
        be the ``influence`` one (``H^{-1}`` on the query side). Split the rows per query with
        :meth:`split`.
        """
        if transform.variant != "influence" or transform.preconditioner is None:
            raise ValueError(f"the {self.ranking} ranking standardises influence scores; got score variant {transform.variant!r}")
        g = terms
        if compressor is not None:
            scales = compressor.layer_scales(totals.to(torch.float64))  # [B, M]
            g = compressor.compress(g[:, None, :], scales[owner.to(scales.device)].to(g.dtype))[:, 0]  # [n, K]
        g = g.to(torch.float64)
        u = transform.linear("query", g)  # [n, D]: H^{-1} g
        pre = transform.preconditioner
        weights = self.specificity(u, g, pre) if self.by_span else torch.ones(len(g), dtype=torch.float64, device=g.device)
        return self.standardized(u, g, pre), weights

    def query(self, vectors: torch.Tensor, weights: torch.Tensor, example: TokenizedExample,
              reference: torch.Tensor | None = None) -> TokenQuery:
        """One query's rows of :meth:`token_queries`, with the spans of its response ``example``.

        ``reference``: the stored vectors ``[M, D]`` that the selective core's shares are counted
        on (:func:`reference_rows`); required when :attr:`selective`.
        """
        return TokenQuery(vectors, weights, self._spans(vectors, example), self._shares(vectors, reference))

    def split(self, vectors: torch.Tensor, weights: torch.Tensor, owner: torch.Tensor,
              examples: Sequence[TokenizedExample], reference: torch.Tensor | None = None) -> list[TokenQuery]:
        """:meth:`token_queries`' rows of a batch as one :class:`TokenQuery` per query (``owner`` ``[n]``: row → query).

        The batch's matched shares come from one product with ``reference`` (as in :meth:`query`).
        """
        shares = self._shares(vectors, reference)  # [2, n] or None
        out = []
        for row, example in enumerate(examples):
            mine = owner == row
            out.append(TokenQuery(vectors[mine], weights[mine], self._spans(vectors[mine], example),
                                  None if shares is None else shares[:, mine.to(shares.device)]))
        return out

    def _spans(self, vectors: torch.Tensor, example: TokenizedExample) -> torch.Tensor:
        """``[n_t]`` the spans of the response tokens whose ``vectors`` are given (checked against ``example``)."""
        if self.by_span:
            spans = copy_spans(example).to(vectors.device)
        else:
            spans = torch.arange(len(vectors), device=vectors.device)
        if len(spans) != len(vectors):
            raise ValueError(f"{len(vectors)} token vectors for an example with {len(spans)} response tokens")
        return spans

    def _shares(self, vectors: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor | None:
        """:meth:`matched_shares` where the selective core needs them, else ``None``."""
        if not self.selective:
            return None
        if reference is None:
            raise ValueError("span_gated with a selective presence core needs the reference sample of stored vectors "
                             "(reference_rows); pass reference=, or set presence_selectivity=None")
        return self.matched_shares(vectors, reference)

    @staticmethod
    def first_stage_query(query: TokenQuery) -> torch.Tensor:
        """The ``[D]`` linear query that finds the candidates: the standardised tokens summed."""
        return query.vectors.sum(0)

    def aggregate(self, token_scores: torch.Tensor, query: TokenQuery, harmful: bool = False) -> torch.Tensor:
        """``[n_tokens, n_examples]`` standardised token scores of ``query`` → ``[n_examples]`` saturated scores.

        ``query`` gives the tokens' weights, spans and matched shares. ``harmful``: rank by the
        negated scores, with the shares counted on them (the result stays ``>= 0``; negate it for
        a harmful example's signed score).
        """
        sign = -1.0 if harmful else 1.0
        z = (sign * token_scores.to(torch.float64)).clamp_min(0.0)  # [n_t, N]
        n_spans = int(query.spans.max()) + 1 if len(query.spans) else 0
        index = query.spans.to(z.device)
        best = torch.zeros(n_spans, z.shape[1], dtype=torch.float64, device=z.device)
        best = best.scatter_reduce(0, index[:, None].expand_as(z), z, "amax")  # [n_s, N]: a span's best token
        weight = torch.zeros(n_spans, dtype=torch.float64, device=z.device)
        weight = weight.scatter_reduce(0, index, query.weights.to(z), "amax")  # [n_s]
        terms = weight[:, None] * best / (best + self.k)  # [n_s, N]
        if self.ranking != "span_gated":
            return terms.sum(0)
        copied = query.copied.to(z.device)  # [n_s]
        if not bool(copied.any()):
            return terms.sum(0)
        core = self._core(query, index, n_spans, weight, harmful)  # [n_t] bool: the spans' core tokens
        core_best = torch.zeros_like(best).scatter_reduce(0, index[:, None].expand_as(z), z * core[:, None], "amax")  # [n_s, N]
        presence = (core_best[copied] / (core_best[copied] + self.presence_k)).mean(0)  # [N]: P, in [0, 1)
        return terms.sum(0) + terms[~copied].sum(0) * presence  # C + N · (1 + P)

    def _core(self, query: TokenQuery, index: torch.Tensor, n_spans: int, weight: torch.Tensor, harmful: bool) -> torch.Tensor:
        """``[n_t]`` bool: the tokens a copied span's presence is taken from (its core)."""
        if not self.selective:
            return query.weights.to(weight) >= self.presence_core * weight[index]  # weight >= core · the span's largest
        if query.shares is None:
            raise ValueError("this TokenQuery has no matched shares; build it with TokenSaturation.query(..., reference=) "
                             "for span_gated's selective core")
        share = query.shares[int(harmful)].to(weight)  # [n_t]
        above = torch.full((n_spans,), 2.0, dtype=share.dtype, device=share.device)  # [n_s]: above any share
        lowest = above.scatter_reduce(0, index, share, "amin")  # [n_s]: each span's most selective token's share
        assert self.presence_selectivity is not None
        return share <= (self.presence_selectivity * lowest[index]).clamp_min(self.presence_floor)  # [n_t]

    def scores(self, query: TokenQuery, stored: torch.Tensor) -> torch.Tensor:
        """Saturated scores ``[n_examples]`` of stored vectors ``[n_examples, D]`` (helpful direction)."""
        return self.aggregate(query.vectors @ stored.to(torch.float64).T, query)


REFERENCE_ROWS = 4096
"""Stored vectors in the reference sample that the selective core's matched shares are counted on:
a share is then counted in steps of 1/4096 (exactly, over the whole index, when it is smaller), for one ``[n_t, 4096]``
product per query and ``4096 · D`` floats kept in memory (64 MB at the default ``D`` = 4096)."""


def reference_rows(n_examples: int, rows: int = REFERENCE_ROWS) -> np.ndarray:
    """``[min(rows, n_examples)]`` int64 example ids, evenly spaced over the index: its reference sample."""
    if n_examples <= rows:
        return np.arange(n_examples, dtype=np.int64)
    return np.unique(np.linspace(0, n_examples - 1, rows).round().astype(np.int64))
