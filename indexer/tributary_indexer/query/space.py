"""The query side of an index's vector space: from projected gradients to query vectors.

A stored vector is ``T_train(Φ g)`` and a query vector ``T_query(Φ g_q)``, with ``Φ`` RapidGrad's
compression (or the identity) and ``T`` the score variant's transforms
(:class:`~tributary_indexer.hessian.scores.ScoreTransform`): a score is their inner product.
Each side is ``c(Φ g) · M Φ g`` with a symmetric linear map ``M`` and a scalar ``c`` of the whole
vector, so the per-position terms of a gradient map with the same scalar and still sum to the
mapped total; token-wise scores use that in the dual form (:meth:`QuerySpace.dual_weights`,
:meth:`QuerySpace.combine_position_scores`), never materialising per-position vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..gradients.rapidgrad import RapidGradCompressor
from ..hessian.scores import ScoreTransform


@dataclass(frozen=True)
class QuerySpace:
    """An index's RapidGrad compressor (``None``: none) and score transform."""

    transform: ScoreTransform
    compressor: RapidGradCompressor | None = None

    def query(self, gradients: torch.Tensor) -> torch.Tensor:
        """Projected query gradients ``[B, D_proj]`` → query vectors ``[B, D]`` float64."""
        g = gradients.to(torch.float64)
        if self.compressor is not None:
            g = self.compressor.compress(g)
        return self.transform.query(g)[0]

    def query_terms(
        self, terms: torch.Tensor, totals: torch.Tensor, owner: torch.Tensor
    ) -> torch.Tensor:
        """Per-position terms ``[n, D_proj]`` compressed as their queries' totals ``[B, D_proj]``
        are (``owner`` ``[n]``: each term's query), float64 ``[n, K]``; not yet transformed."""
        g = terms
        if self.compressor is not None:
            scales = self.compressor.layer_scales(totals.to(torch.float64))  # [B, M]
            per_term = scales[owner.to(scales.device)].to(g.dtype)
            g = self.compressor.compress(g[:, None, :], per_term)[:, 0]  # [n, K]
        return g.to(torch.float64)

    def dual_weights(self, side: str, v: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``Φᵀ M v`` ``[n, D_proj]`` for final-space vectors ``v`` ``[n, D]``: scoring a
        position's projected term against it gives the position's share (before ``c``)."""
        w = self.transform.linear(side, torch.as_tensor(np.asarray(v), dtype=torch.float64))
        return self.compressor.transpose(w) if self.compressor is not None else w

    def combine_position_scores(
        self, side: str, totals: torch.Tensor, module_scores: torch.Tensor
    ) -> np.ndarray:
        """``[N, R, T, M]`` per-module position scores → ``[N, R, T]`` scores of positions.

        ``totals`` ``[N, D_proj]`` are the examples' whole gradients (for the scalars).
        """
        g = totals.to(torch.float64)
        scores = module_scores.to(torch.float64)
        if self.compressor is not None:
            layer = self.compressor.layer_scales(g)  # [N, M]
            scores = scores * layer[:, None, None, :]
            g = self.compressor.compress(g)
        c = self.transform.scale(side, g)  # [N]
        return (scores.sum(-1) * c[:, None, None]).cpu().numpy()
