"""Our attribution methods as the index computes them, as score matrices over a workload.

A :class:`LoGraMethod` is one build configuration (projector, rank, objective, score variant,
damping, optional RapidGrad). Scores go through the indexer's own classes
(:class:`FisherAccumulator`, :class:`Preconditioner`, :class:`ScoreTransform`,
:class:`RapidGradCompressor`), in float64, so a row here is what the service would return for
that configuration up to float32 storage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from tributary_indexer.config import BuildConfig
from tributary_indexer.fisher import FisherAccumulator
from tributary_indexer.module_selection import TrackedModule, preset_modules
from tributary_indexer.preconditioner import Preconditioner
from tributary_indexer.projector import Block
from tributary_indexer.rapidgrad import RapidGradCompressor, rapidgrad_dim
from tributary_indexer.scores import ScoreTransform

from .gradients import make_projector, projected, tracked_modules
from .workload import Workload

PRESET_OF = {"all": "all", "mlp+lm_head": "mlp+output"}
"""The indexer's ``modules`` preset behind each selection name here (GPT-2's output layer is ``lm_head``)."""


@dataclass(frozen=True)
class LoGraMethod:
    projector: str = "random"
    rank: int = 16
    objective: str = "margin"
    score: str = "influence"
    damping: float = 1.0
    rapidgrad_k: int | None = None
    rapidgrad_normalize: bool = True
    modules: str = "all"
    """``all`` tracked modules, or ``mlp+lm_head`` (the ``mlp+output`` preset on GPT-2)."""

    @classmethod
    def default(cls) -> LoGraMethod:
        """The indexer's default configuration (``BuildConfig()``), whatever it is now."""
        c = BuildConfig()
        assert c.rank_in == c.rank_out, "the benchmark assumes square ranks"
        assert not c.include and not c.exclude, "the benchmark knows the module presets, not patterns"
        modules = {preset: name for name, preset in PRESET_OF.items()}[c.modules]
        return cls(c.projector, c.rank_in, c.objective, c.score, c.damping, c.rapidgrad_k, c.rapidgrad_normalize, modules)

    @property
    def name(self) -> str:
        parts = [f"LoGra {self.projector} r{self.rank}", self.objective, self.score]
        if self.modules != "all":
            parts.insert(1, self.modules)
        if self.score != "grad_dot":
            parts.append(f"α={self.damping:g}")
        if self.rapidgrad_k:
            parts.append(f"RapidGrad K={self.rapidgrad_k}" + ("" if self.rapidgrad_normalize else " (no layer norm)"))
        return " · ".join(parts)

    def replace(self, **changes: object) -> LoGraMethod:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def configuration_grid(default: LoGraMethod, pca_scores: tuple[str, ...] = ("influence", "relatif", "cosine")) -> list[LoGraMethod]:
    """The configurations around ``default`` that the quality benchmarks compare it with.

    Each row changes one knob: the score variant, α, the objective, the projector, the module
    set, RapidGrad's layer-wise normalisation and ``K`` (at the same ``α / K``: the mean
    eigenvalue of the dense ``K × K`` Fisher is its trace over ``K``), the LoGra rank under the
    same ``K``, and per-module Fisher blocks without RapidGrad (at the same ``α / r²``, which
    includes rank 32 at α = 4, the previous default).
    """
    grid = [default.replace(score=s) for s in ("relatif", "cosine", "grad_dot")]
    grid += [default.replace(damping=a) for a in (1.0, 4.0, 8.0, 32.0, 64.0) if a != default.damping]
    grid += [default.replace(objective="nll"), default.replace(objective="nll", score="relatif", damping=1e-3)]
    grid += [default.replace(projector="pca", score=s) for s in pca_scores]
    grid += [default.replace(modules="mlp+lm_head" if default.modules == "all" else "all")]
    if default.rapidgrad_k:
        k, alpha = default.rapidgrad_k, default.damping
        grid += [default.replace(rapidgrad_normalize=not default.rapidgrad_normalize)]
        grid += [default.replace(rapidgrad_k=int(k * f), damping=alpha * f) for f in (0.5, 2)]
        grid += [default.replace(rank=r) for r in (32, 128) if r != default.rank]
        per_module = default.replace(rapidgrad_k=None, damping=alpha * default.rank**2 / k)
    else:
        per_module = default
    # per-module Fisher at the same α / r² (64×64 at α = 16 is the LoGra paper's 1 at 16×16)
    grid += [per_module.replace(rank=r, damping=per_module.damping * r * r / per_module.rank**2) for r in (16, 32, 64)]
    return [m for m in dict.fromkeys(grid) if m != default]


class GradientCache:
    """Projected gradients of a workload's training set and queries, per (projector, rank, objective, modules).

    Each entry hooks exactly the modules its method selects, as a build with that selection
    would: a method's first ``logra_scores`` call (the ``seconds`` the LDS table reports) times
    the gradient pass the index would run, not a superset of it. Projections are seeded per
    module name, so a module's block is the same whichever other modules are tracked.
    """

    def __init__(self, workload: Workload):
        self.workload = workload
        self.modules = tracked_modules(workload.model)
        self._store: dict[tuple[str, int, str, str], tuple[torch.Tensor, torch.Tensor, list[Block]]] = {}

    def modules_of(self, which: str) -> list[TrackedModule]:
        """The tracked modules of a selection (:data:`PRESET_OF`), by the indexer's own preset rule."""
        if which not in PRESET_OF:
            raise ValueError(f"unknown module selection {which!r}; choose from {list(PRESET_OF)}")
        return self.modules if which == "all" else preset_modules(self.workload.model, PRESET_OF[which])

    def get(self, method: LoGraMethod) -> tuple[torch.Tensor, torch.Tensor, list[Block]]:
        key = (method.projector, method.rank, method.objective, method.modules)
        if key not in self._store:
            w = self.workload
            modules = self.modules_of(method.modules)
            proj = make_projector(w.model, modules, method.projector, method.rank, w.examples, w.pad_id,
                                  objective=method.objective)
            train = projected(w.model, modules, proj, w.examples, w.pad_id, objective=method.objective)
            queries = projected(w.model, modules, proj, [q.example for q in w.queries], w.pad_id,
                                objective=method.objective)
            self._store[key] = (train, queries, proj.blocks)
        return self._store[key]


def logra_scores(method: LoGraMethod, cache: GradientCache) -> np.ndarray:
    """``[Q, N]`` scores of every query against every training example under ``method``."""
    train, queries, blocks = cache.get(method)
    k = rapidgrad_dim(method.rapidgrad_k, blocks[-1].stop)  # the indexer's rule: K capped at D
    if k:
        compressor = RapidGradCompressor(blocks, k, seed=0, normalize_layers=method.rapidgrad_normalize)
        train, queries, blocks = compressor.compress(train), compressor.compress(queries), compressor.out_blocks
    preconditioner = None
    if method.score != "grad_dot":
        fisher = FisherAccumulator(blocks)
        fisher.update(train)
        preconditioner = Preconditioner.from_fisher(fisher, method.damping)
    transform = ScoreTransform(method.score, preconditioner)
    stored, _ = transform.train(train)
    query, _ = transform.query(queries)
    return (query @ stored.T).numpy()
