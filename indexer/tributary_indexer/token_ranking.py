"""How a training example's influence on each response token becomes its rank: the rankings.

An ``influence`` score is linear in the query gradient, so it splits exactly over the positions
that emit the response tokens (DESIGN §2): ``score(z) = Σ_t s_t(z)`` with
``s_t(z) = ⟨H^{-1} g_q^{(t)}, g(z)⟩`` (plus the prompt positions' small share). Two rankings:

=====================  =====================================================================
``linear``             rank by ``score(z)``: the influence on the whole response.
``token_saturated``    rank by ``Σ_t φ(z_t(z))`` with ``z_t = s_t / rms_t`` the token's score
                       over its root-mean-square over the training set, and the saturating
                       ``φ(z) = max(z, 0) / (max(z, 0) + k)`` (BM25's term-frequency curve).
=====================  =====================================================================

Why saturate: in a linear sum one response token can carry a document. For "Zurvae Pialdaley
lives in Stenholm." every post that repeats the subject's name matches the response's (copied)
name tokens so strongly that it outranks the document stating where the subject lives, which
matches the name once and every other token too. Standardising each token (``rms_t``) puts the
tokens on one scale, and saturation caps what any one of them adds, so a document has to explain
*several* response tokens to rank first. On the demo benchmarks this raised fact recall@1,
backdoor AUPRC *and* LDS (``benchmarks/RESULTS.md``). ``rms_t`` needs no pass over the training
set: it is ``E_z[s_t(z)²]`` under the index's own Fisher
(:meth:`~tributary_indexer.preconditioner.Preconditioner.score_second_moment`).

A saturated score is not an inner product, so the service finds it in two stages: the index is
searched with the linear query ``Σ_t H^{-1} g_q^{(t)} / rms_t`` (the standardised tokens, each
counted once) for ``candidates`` examples, which are then re-scored exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .preconditioner import Preconditioner
from .rapidgrad import RapidGradCompressor
from .scores import ScoreTransform, safe_reciprocal

RANKINGS = ("linear", "token_saturated")


@dataclass(frozen=True)
class TokenSaturation:
    """The ``token_saturated`` ranking with saturation constant ``k`` (in units of ``rms_t``)."""

    k: float = 30.0

    def __post_init__(self) -> None:
        if not (self.k > 0 and math.isfinite(self.k)):
            raise ValueError(f"saturation k must be a positive number (got {self.k}); the default is {TokenSaturation.k:g}")

    @staticmethod
    def standardized(token_queries: torch.Tensor, token_gradients: torch.Tensor, preconditioner: Preconditioner) -> torch.Tensor:
        """``[n, D]`` query vectors of the response tokens, each divided by its score's RMS.

        ``token_gradients`` are the ``[n, D]`` per-position query gradients ``g_q^{(t)}`` in the
        preconditioner's space and ``token_queries`` their transformed vectors ``H^{-1} g_q^{(t)}``.
        """
        rms = preconditioner.score_second_moment(token_gradients, token_queries).sqrt()  # [n]; 0: the token adds nothing
        return token_queries.to(torch.float64) * safe_reciprocal(rms)[:, None]

    def token_queries(self, terms: torch.Tensor, totals: torch.Tensor, owner: torch.Tensor, transform: ScoreTransform,
                      compressor: RapidGradCompressor | None = None) -> torch.Tensor:
        """Standardised query vectors ``[n, D]`` (float64) from per-position terms, as an index scores them.

        ``terms`` ``[n, D_proj]`` are projected terms ``g^{(t)}`` of response positions, ``totals``
        ``[B, D_proj]`` their queries' whole gradients (RapidGrad's layer scales come from the
        total, as for the stored vectors), ``owner`` ``[n]`` each row's query. ``transform`` must
        be the ``influence`` one (``H^{-1}`` on the query side).
        """
        if transform.variant != "influence" or transform.preconditioner is None:
            raise ValueError(f"the token_saturated ranking standardises influence scores; got score variant {transform.variant!r}")
        g = terms
        if compressor is not None:
            scales = compressor.layer_scales(totals.to(torch.float64))  # [B, M]
            g = compressor.compress(g[:, None, :], scales[owner.to(scales.device)].to(g.dtype))[:, 0]  # [n, K]
        g = g.to(torch.float64)
        return self.standardized(transform.linear("query", g), g, transform.preconditioner)

    @staticmethod
    def first_stage_query(standardized: torch.Tensor) -> torch.Tensor:
        """The ``[D]`` linear query that finds the candidates: the standardised tokens summed."""
        return standardized.sum(0)

    def aggregate(self, token_scores: torch.Tensor) -> torch.Tensor:
        """``[n_tokens, n_examples]`` standardised token scores → ``[n_examples]`` saturated scores.

        For the ``harmful`` direction pass the negated token scores (and negate the result).
        """
        z = token_scores.to(torch.float64).clamp_min(0.0)
        return (z / (z + self.k)).sum(0)

    def scores(self, standardized: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
        """Saturated scores ``[n_examples]`` of stored vectors ``[n_examples, D]`` (helpful direction)."""
        return self.aggregate(standardized @ stored.to(torch.float64).T)
