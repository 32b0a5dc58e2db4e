"""Score variants: how training and query vectors are transformed before the inner product.

``score(z, query) = ⟨stored(z), q(query)⟩``. **Sign**: positive means training on ``z`` made the
query response *more* likely (it lowered the response loss); negative means less likely.

=============  ===========================================  =================================
variant        stored training vector                        query vector
=============  ===========================================  =================================
``influence``  ``g``                                         ``H^{-1} g_q``
``relatif``    ``g / sqrt(gᵀ H^{-1} g)``                     ``H^{-1} g_q``
``cosine``     ``H^{-1/2} g / ‖H^{-1/2} g‖``                 ``H^{-1/2} g_q / ‖H^{-1/2} g_q‖``
``grad_dot``   ``g``                                         ``g_q`` (no Hessian; TracIn)
=============  ===========================================  =================================

``H = F + λI`` (see :mod:`.preconditioner`). ``influence`` is the build default (with log-odds
gradients it ranked best on the quality benchmarks); ``relatif`` (the LoGra paper's choice for
LLMs) discounts examples that are influential on everything (high self-influence outliers);
``cosine`` additionally ignores the query's magnitude, so scores are in ``[-1, 1]``.

Every transform is linear in ``g`` up to one scalar computed from the whole vector, so
per-position terms ``g^{(t)}`` are transformed with the same scalar and still sum exactly to the
transformed total (token-wise attribution).
"""

from __future__ import annotations

import torch

from .preconditioner import Preconditioner

SCORE_VARIANTS = ("influence", "relatif", "cosine", "grad_dot")


def safe_reciprocal(norm: torch.Tensor) -> torch.Tensor:
    """``1/norm``, and 0 where the norm is 0 (an example with no gradient scores 0)."""
    return torch.where(
        norm > 0, 1.0 / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm)
    )


class ScoreTransform:
    """Applies one score variant's training-side and query-side transforms."""

    def __init__(self, variant: str, preconditioner: Preconditioner | None):
        if variant not in SCORE_VARIANTS:
            raise ValueError(
                f"unknown score variant {variant!r}; choose from {list(SCORE_VARIANTS)}"
            )
        if variant != "grad_dot" and preconditioner is None:
            raise ValueError(
                f"score variant {variant!r} needs a preconditioner (fit the Fisher first)"
            )
        self.variant = variant
        self.preconditioner = preconditioner

    # Each side is ``c(g) · M g`` with a symmetric linear map ``M`` and a scalar ``c`` of the total.
    def linear(self, side: str, v: torch.Tensor) -> torch.Tensor:
        """``M v`` for ``side`` in ``("train", "query")`` (``M`` is symmetric, so also ``Mᵀ v``)."""
        v = v.to(torch.float64)
        if self.variant == "grad_dot" or (
            side == "train" and self.variant in ("influence", "relatif")
        ):
            return v
        assert self.preconditioner is not None
        if self.variant == "cosine":
            return self.preconditioner.inverse_sqrt(v)
        return self.preconditioner.inverse(v)  # query side of influence / relatif

    def scale(self, side: str, g: torch.Tensor) -> torch.Tensor:
        """The scalar ``c`` ``[N]`` of totals ``g`` ``[N, D]`` (1 where the variant has none)."""
        g = g.to(torch.float64)
        ones = torch.ones(g.shape[0], dtype=torch.float64, device=g.device)
        if self.variant == "relatif" and side == "train":
            assert self.preconditioner is not None
            return safe_reciprocal(self.preconditioner.self_influence(g).clamp_min(0).sqrt())
        if self.variant == "cosine":
            return safe_reciprocal(self.linear(side, g).norm(dim=-1))
        return ones

    def _apply(
        self, side: str, g: torch.Tensor, per_position: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = self.scale(side, g)  # [N]
        out = self.linear(side, g) * c[:, None]
        if per_position is None:
            return out, None
        return out, self.linear(side, per_position) * c[:, None, None]

    def train(
        self, g: torch.Tensor, per_position: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stored vectors for training gradients ``g`` ``[N, D]`` (and their per-position terms
        ``[N, T, D]``)."""
        return self._apply("train", g, per_position)

    def query(
        self, g: torch.Tensor, per_position: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Query vectors for query gradients ``g`` ``[N, D]`` (and per-position terms
        ``[N, T, D]``)."""
        return self._apply("query", g, per_position)
