"""Damped inverse-Fisher preconditioning, exact per module block (DESIGN §2).

Per block ``H_m = F_m + λ_m I`` with ``λ_m = α · mean eig(F_m)``; applied through the
eigendecomposition ``F_m = V Λ Vᵀ``, so ``H^{-1} v = V (Λ+λ)^{-1} Vᵀ v`` and
``H^{-1/2} v = V (Λ+λ)^{-1/2} Vᵀ v``. Smaller α trusts the Fisher more: on memorised examples
(tiny gradients) that is what separates them from high-loss outliers; too small amplifies
noise in poorly estimated directions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .fisher import FisherAccumulator
from .projector import Block


class Preconditioner:
    """Eigendecomposed, damped block-diagonal Fisher."""

    def __init__(self, blocks: Sequence[Block], eigenvalues: Sequence[torch.Tensor], eigenvectors: Sequence[torch.Tensor], lambdas: Sequence[float], alpha: float):
        self.blocks = list(blocks)
        self.eigenvalues = [e.to(torch.float64) for e in eigenvalues]  # [D_m] each
        self.eigenvectors = [v.to(torch.float64) for v in eigenvectors]  # [D_m, D_m] each, columns
        self.lambdas = [float(x) for x in lambdas]
        self.alpha = float(alpha)

    @classmethod
    def from_fisher(cls, fisher: FisherAccumulator, alpha: float) -> Preconditioner:
        """Damping ``λ_m = α · mean eig(F_m)`` (``α`` itself if the block's Fisher is zero)."""
        if alpha <= 0:
            raise ValueError(f"damping alpha must be > 0 (got {alpha}); typical values 1e-3 … 1")
        evals, evecs, lambdas = [], [], []
        for f in fisher.means():
            f = (f + f.T) / 2
            e, v = torch.linalg.eigh(f)
            e = e.clamp_min(0.0)  # PSD up to round-off
            mean_eig = float(e.mean())
            lambdas.append(alpha * mean_eig if mean_eig > 0 else alpha)
            evals.append(e)
            evecs.append(v)
        return cls(fisher.blocks, evals, evecs, lambdas, alpha)

    @property
    def dim(self) -> int:
        return self.blocks[-1].stop

    def _apply(self, v: torch.Tensor, power: float) -> torch.Tensor:
        """``H^{power} v`` for ``v`` of shape ``[..., D]``, blockwise, in float64."""
        out = torch.empty(v.shape, dtype=torch.float64, device=v.device)
        v64 = v.to(torch.float64)
        for block, e, vec, lam in zip(self.blocks, self.eigenvalues, self.eigenvectors, self.lambdas):
            vec = vec.to(v.device)
            scale = (e.to(v.device) + lam) ** power  # [D_m]
            part = v64[..., block.start : block.stop]  # [..., D_m]
            out[..., block.start : block.stop] = ((part @ vec) * scale) @ vec.T
        return out

    def inverse(self, v: torch.Tensor) -> torch.Tensor:
        """``(F + λI)^{-1} v``."""
        return self._apply(v, -1.0)

    def inverse_sqrt(self, v: torch.Tensor) -> torch.Tensor:
        """``(F + λI)^{-1/2} v``."""
        return self._apply(v, -0.5)

    def self_influence(self, v: torch.Tensor) -> torch.Tensor:
        """``vᵀ (F + λI)^{-1} v`` per row ``[...]``."""
        return (v.to(torch.float64) * self.inverse(v)).sum(-1)

    def describe(self) -> dict:
        return {"alpha": self.alpha, "lambdas": {b.name: lam for b, lam in zip(self.blocks, self.lambdas)}}

    def save(self, path: str | Path) -> None:
        tensors = {}
        for i, (e, v) in enumerate(zip(self.eigenvalues, self.eigenvectors)):
            tensors[f"eigenvalues.{i}"] = e.cpu().contiguous()
            tensors[f"eigenvectors.{i}"] = v.cpu().contiguous()
        meta = {"blocks": [[b.name, b.start, b.stop] for b in self.blocks], "lambdas": self.lambdas, "alpha": self.alpha}
        save_file(tensors, str(path), metadata={"tributary.preconditioner": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> Preconditioner:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["tributary.preconditioner"])
        tensors = load_file(str(path))
        n = len(meta["blocks"])
        return cls(
            [Block(name, s, e) for name, s, e in meta["blocks"]],
            [tensors[f"eigenvalues.{i}"] for i in range(n)],
            [tensors[f"eigenvectors.{i}"] for i in range(n)],
            meta["lambdas"],
            meta["alpha"],
        )
