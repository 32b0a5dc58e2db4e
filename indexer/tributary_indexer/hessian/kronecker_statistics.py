"""Activation and output-gradient covariances of tracked modules (the KFAC factors).

``A_m = E[x xᵀ]`` ``[d_in, d_in]`` and ``S_m = E[δ δᵀ]`` ``[d_out, d_out]``, averaged over the real
(non-padded) token positions of sample batches. Their top eigenvectors initialise the ``pca``
projector. Sides wider than ``max_dim`` are not estimated (a ``d²`` float64 matrix:
8192 → 512 MiB) and the projector falls back to random projections there; GPT-2's ``lm_head``
output (the vocabulary) is the usual example.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..data.batching import TokenBatch
from ..gradients.computer import forward_backward
from ..gradients.hooks import ModuleHooks
from ..gradients.module_selection import TrackedModule

logger = logging.getLogger(__name__)


class KroneckerStatisticsHooks(ModuleHooks):
    """Accumulates ``Σ x xᵀ`` and ``Σ δ δᵀ`` in float64 over real positions."""

    def __init__(self, modules: Sequence[TrackedModule], max_dim: int = 8192):
        super().__init__(modules)
        self.max_dim = max_dim
        self.activation_sums: list[torch.Tensor | None] = [None] * len(self.modules)
        self.gradient_sums: list[torch.Tensor | None] = [None] * len(self.modules)
        self.n_positions = 0

    def _valid_rows(self, t: torch.Tensor) -> torch.Tensor:
        assert self.position_mask is not None
        keep = self.position_mask.reshape(-1) > 0  # [B*T]
        return t.reshape(-1, t.shape[-1])[keep].to(torch.float64)  # [N, d]

    def on_forward(self, index: int, x: torch.Tensor) -> None:
        if self.modules[index].d_in > self.max_dim:
            return
        rows = self._valid_rows(x)
        acc = self.activation_sums[index]
        self.activation_sums[index] = rows.T @ rows if acc is None else acc.addmm_(rows.T, rows)

    def on_backward(self, index: int, state: None, grad: torch.Tensor) -> None:
        if self.modules[index].d_out > self.max_dim:
            return
        rows = self._valid_rows(grad)
        acc = self.gradient_sums[index]
        self.gradient_sums[index] = rows.T @ rows if acc is None else acc.addmm_(rows.T, rows)

    def covariances(self) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
        """``{module: (E[x xᵀ], E[δ δᵀ])}``; None for sides wider than ``max_dim``."""
        if self.n_positions == 0:
            raise RuntimeError(
                "no positions seen: run estimate_covariances on at least one non-empty batch"
            )
        n = float(self.n_positions)
        out = {}
        for m, a, s in zip(self.modules, self.activation_sums, self.gradient_sums):
            out[m.name] = (None if a is None else a / n, None if s is None else s / n)
        return out


def estimate_covariances(
    model: nn.Module,
    modules: Sequence[TrackedModule],
    batches: Iterable[TokenBatch],
    max_dim: int = 8192,
    autocast_dtype: torch.dtype | None = None,
    objective: str = "margin",
) -> dict[str, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """Estimate the KFAC factors of ``modules`` over ``batches`` (one forward/backward each).

    ``objective`` must be the one the gradients will use (see :mod:`..gradients.objectives`): the
    output-gradient covariance is a covariance of *its* gradients.
    """
    device = next(model.parameters()).device
    hooks = KroneckerStatisticsHooks(modules, max_dim=max_dim)
    with hooks:
        for batch in batches:
            batch = batch.to(device)
            with hooks.capture(batch.attention_mask):
                forward_backward(model, batch, autocast_dtype, objective)
            hooks.n_positions += int(batch.attention_mask.sum())
        return hooks.covariances()
