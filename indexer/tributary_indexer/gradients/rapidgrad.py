"""RapidGrad compression (RapidIn): a dense-matrix-free random projection to ``K`` dims.

Steps, all seeded and stored as the seed alone: (1) optional layer-wise L2 normalisation of each
module block, (2) a random permutation of the ``D`` coordinates, (3) element-wise Rademacher
signs, (4) sums over consecutive groups of ``ceil(D/K)`` coordinates (zero-padded) down to ``K``.
Steps 2–4 are a sparse sign projection ``C`` with ``E_signs[⟨C a, C b⟩] = ⟨a, b⟩``: the
cross terms of a group cancel in expectation, the diagonal ones add up to the inner product.
Layer-wise normalisation is *not* an inner-product-preserving step: it equalises the
modules' weight in the score (RapidIn's choice); turn it off to keep plain inner products.

Use it on top of LoGra (compress the projected vector further) or instead of it (compress the
full per-example gradient from the ``identity`` projector).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .projector import Block


def rapidgrad_dim(requested: int | None, dim_in: int) -> int | None:
    """The ``K`` a build uses: ``requested`` capped at the projected dimension ``D`` (None = off).

    A fixed ``K`` bounds the index size and the dense ``K × K`` Fisher whatever the model; a model
    whose projected vector is already shorter keeps all ``D`` dims (``K = D`` is a signed
    permutation: inner products and the Fisher's spectrum are unchanged).
    """
    if requested is None:
        return None
    return min(requested, dim_in)


class RapidGradCompressor:
    """Seeded RapidGrad map from ``D`` to ``K`` dims."""

    def __init__(
        self, blocks: Sequence[Block], k: int, seed: int = 0, normalize_layers: bool = True
    ):
        self.blocks = list(blocks)
        self.dim_in = self.blocks[-1].stop
        if not 1 <= k <= self.dim_in:
            raise ValueError(
                f"RapidGrad K must be in [1, {self.dim_in}] (the input dimension), got {k}"
            )
        self.k = k
        self.seed = seed
        self.normalize_layers = normalize_layers
        gen = torch.Generator().manual_seed(seed)
        self.permutation = torch.randperm(self.dim_in, generator=gen)  # [D]
        self.signs = (
            torch.randint(0, 2, (self.dim_in,), generator=gen).to(torch.float64) * 2 - 1
        )  # [D] ±1
        self.group = -(-self.dim_in // k)  # ceil(D / K) coordinates per output dim
        block_of = torch.cat(
            [
                torch.full((b.stop - b.start,), i, dtype=torch.long)
                for i, b in enumerate(self.blocks)
            ]
        )  # [D]
        self._block_of = block_of
        self._block_of_permuted = block_of[
            self.permutation
        ]  # [D]: the block of the coordinate landing at j
        # the same map in the input's own order, for the scatter-add path: coordinate i lands in
        # output column column_of[i] with sign sign_of[i]
        self._column_of = torch.empty(self.dim_in, dtype=torch.long)
        self._column_of[self.permutation] = torch.arange(self.dim_in) // self.group
        self._sign_of = torch.empty(self.dim_in, dtype=torch.float64)
        self._sign_of[self.permutation] = self.signs

    @property
    def out_blocks(self) -> list[Block]:
        """The compressed vector is one dense block for the Fisher."""
        return [Block("rapidgrad", 0, self.k)]

    def layer_scales(self, g: torch.Tensor) -> torch.Tensor:
        """Per-example, per-block ``1/‖g_m‖`` ``[N, n_blocks]`` (ones when not normalising)."""
        if not self.normalize_layers:
            return torch.ones(g.shape[0], len(self.blocks), dtype=g.dtype, device=g.device)
        sq = torch.zeros(g.shape[0], len(self.blocks), dtype=g.dtype, device=g.device)
        sq.index_add_(1, self._block_of.to(g.device), g * g)  # [N, n_blocks]: ‖g_m‖² in one pass
        norm = sq.sqrt()
        return torch.where(
            norm > 0, 1.0 / norm.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(norm)
        )

    def compress(self, g: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, D] → [N, K]``, or per-position terms ``[N, T, D] → [N, T, K]``.

        ``scales`` ``[N, n_blocks]`` defaults to :meth:`layer_scales` of ``g`` for 2-D input;
        per-position terms must pass their example totals' scales so the terms still sum to the
        compressed total.
        """
        if g.shape[-1] != self.dim_in:
            raise ValueError(f"expected vectors with {self.dim_in} dims, got {g.shape[-1]}")
        if scales is None:
            if g.ndim != 2:
                raise ValueError(
                    "per-position terms need the scales of their totals: pass layer_scales(totals)"
                )
            scales = self.layer_scales(g)
        # CPU: scatter-add (no permuted [N, D] copy; 5× faster for a few hundred rows here, and
        # CPU index_add_ runs in order, so it stays deterministic). CUDA: gather and a fixed-order
        # sum, because index_add_ there uses atomics whose order varies between runs.
        return self._scatter(g, scales) if g.device.type == "cpu" else self._gather(g, scales)

    def _scatter(self, g: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        sign = self._sign_of.to(g.dtype)
        if self.normalize_layers:
            weight = scales.to(g.dtype)[:, self._block_of] * sign  # [N, D]
            weight = weight.reshape(weight.shape[0], *(1,) * (g.ndim - 2), weight.shape[1])
        else:
            weight = sign  # unit scales: the same signs for every row
        out = torch.zeros(*g.shape[:-1], self.k, dtype=g.dtype, device=g.device)
        return out.index_add_(-1, self._column_of.to(g.device), g * weight)

    def _gather(self, g: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        # coordinate j of the permuted vector is g[perm[j]] · sign_j · scale of perm[j]'s block
        factor = scales.to(g.dtype)[:, self._block_of_permuted.to(g.device)] * self.signs.to(
            g.device, g.dtype
        )  # [N, D]
        factor = factor.reshape(
            factor.shape[0], *(1,) * (g.ndim - 2), factor.shape[1]
        )  # [N, 1, ..., D]
        x = g[..., self.permutation.to(g.device)] * factor  # [..., D]
        pad = self.group * self.k - self.dim_in
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))
        return x.reshape(*x.shape[:-1], self.k, self.group).sum(-1)  # [..., K]

    def transpose(self, u: torch.Tensor) -> torch.Tensor:
        """``Rᵀ u``: ``[N, K] → [N, D]`` for the sign-permute-sum part ``R`` (no layer scaling).

        ``⟨compress(g), u⟩ = Σ_blocks scale_b · ⟨g_b, (Rᵀ u)_b⟩`` — the dual map token-wise
        scoring uses instead of compressing every per-position term.
        """
        expanded = u.repeat_interleave(self.group, dim=-1)[
            ..., : self.dim_in
        ]  # [N, D]: y_i = u[i // group]
        out = torch.empty_like(expanded)
        out[..., self.permutation.to(u.device)] = expanded * self.signs.to(u.device, u.dtype)
        return out
