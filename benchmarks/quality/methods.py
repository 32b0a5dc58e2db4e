"""Our attribution methods as the index computes them, as score matrices over a workload.

A :class:`LoGraMethod` is one build configuration (projector, rank, objective, score variant,
damping, optional RapidGrad). Scores go through the indexer's own classes
(:class:`FisherAccumulator`, :class:`Preconditioner`, :class:`ScoreTransform`,
:class:`RapidGradCompressor`), in float64, so a row here is what the service would return for
that configuration up to float32 storage. The build side (Fisher, preconditioner, stored
vectors) is computed here as the builder does; the query side is the service's own code: the
query vectors, the ranking (:mod:`tributary_indexer.query.ranking`, or one of the benchmark-only
:mod:`.ablations`) and its re-score. With a two-stage ranking the retrieval benchmarks pass the
service's number of first-stage candidates, so their rankings are the service's; LDS uses the
exact ranking score of every example.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from tributary_indexer.config import BuildConfig, RankingConfig
from tributary_indexer.data.batching import TokenizedExample
from tributary_indexer.gradients.module_selection import TrackedModule, preset_modules
from tributary_indexer.gradients.projector import Block, LoGraProjector
from tributary_indexer.gradients.rapidgrad import RapidGradCompressor, rapidgrad_dim
from tributary_indexer.hessian.fisher import FisherAccumulator
from tributary_indexer.hessian.preconditioner import Preconditioner
from tributary_indexer.hessian.scores import ScoreTransform
from tributary_indexer.query.ranking import Ranking, reference_rows
from tributary_indexer.query.space import QuerySpace

from .ablations import WEIGHT_CORE, benchmark_ranking
from .gradients import make_projector, projected, projected_positions, tracked_modules
from .workload import Workload

SATURATED_RANKINGS = ("token_saturated", "span_saturated", "span_gated")
"""The two-stage rankings the benchmarks compare: the product's ``span_gated`` and its ablations."""

Key = tuple[
    str, int, str, str
]  # (projector, rank, objective, modules): what the gradients depend on

PRESET_OF = {"all": "all", "mlp+lm_head": "mlp+output"}
"""The indexer's ``modules`` preset behind each selection name here (GPT-2's output layer is
``lm_head``)."""


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
    ranking: str = "linear"
    saturation: float = RankingConfig.saturation
    presence_core: float = WEIGHT_CORE
    """``span_gated`` with ``presence_selectivity=None``: the core by weight (0: every token of a
    copied span)."""
    presence_selectivity: float | None = RankingConfig.presence_selectivity
    """``span_gated`` only: the core by matched share of the reference sample (``None``: by
    weight)."""

    @classmethod
    def default(cls) -> LoGraMethod:
        """The indexer's default configuration (``BuildConfig()``), whatever it is now."""
        c = BuildConfig()
        assert c.rank_in == c.rank_out, "the benchmark assumes square ranks"
        assert not c.include and not c.exclude, (
            "the benchmark knows the module presets, not patterns"
        )
        modules = {preset: name for name, preset in PRESET_OF.items()}[c.modules]
        return cls(
            c.projector,
            c.rank_in,
            c.objective,
            c.score,
            c.damping,
            c.rapidgrad_k,
            c.rapidgrad_normalize,
            modules,
            c.ranking,
            c.saturation,
        )

    @property
    def name(self) -> str:
        parts = [f"LoGra {self.projector} r{self.rank}", self.objective, self.score]
        if self.modules != "all":
            parts.insert(1, self.modules)
        if self.score != "grad_dot":
            parts.append(f"α={self.damping:g}")
        if self.rapidgrad_k:
            parts.append(
                f"RapidGrad K={self.rapidgrad_k}"
                + ("" if self.rapidgrad_normalize else " (no layer norm)")
            )
        if self.ranking in SATURATED_RANKINGS:
            ranking = f"{self.ranking.replace('_', '-')} k={self.saturation:g}"
            if self.ranking == "span_gated":
                ranking += (
                    f" core=share×{self.presence_selectivity:g}"
                    if self.presence_selectivity is not None
                    else f" core={self.presence_core:g}"
                )
            parts.append(ranking)
        return " · ".join(parts)

    def make_ranking(self) -> Ranking:
        """The ranking this row scores with: the product's, or an ablation (:mod:`.ablations`)."""
        if self.ranking == "span_gated" and self.presence_selectivity is not None:
            config = RankingConfig(
                saturation=self.saturation, presence_selectivity=self.presence_selectivity
            )
            return benchmark_ranking(self.ranking, config)
        config = RankingConfig(
            ranking="linear" if self.ranking == "linear" else "span_gated",
            saturation=self.saturation,
        )
        presence_core = self.presence_core if self.ranking == "span_gated" else None
        return benchmark_ranking(self.ranking, config, presence_core)

    def replace(self, **changes: object) -> LoGraMethod:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def ranking_variants(default: LoGraMethod) -> list[LoGraMethod]:
    """The same index under the other two-stage rankings (the ablations) and, for ``span_gated``,
    with the presence core by weight and from every token of a copied span."""
    out = [default.replace(ranking=r) for r in SATURATED_RANKINGS if r != default.ranking]
    if default.ranking == "span_gated":
        by_weight = default.replace(presence_selectivity=None)
        out += [m for m in (by_weight, by_weight.replace(presence_core=0.0)) if m != default]
    return out


def configuration_grid(
    default: LoGraMethod, pca_scores: tuple[str, ...] = ("influence", "relatif", "cosine")
) -> list[LoGraMethod]:
    """The configurations around ``default`` that the quality benchmarks compare it with.

    Each row changes one knob: the ranking (and the saturation ``k``), the score variant, α, the
    objective, the projector, the module set, RapidGrad's layer-wise normalisation and ``K`` (at
    the same ``α / K``: the mean eigenvalue of the dense ``K × K`` Fisher is its trace over
    ``K``), the LoGra rank under the same ``K``, and per-module Fisher blocks without RapidGrad
    (at the same ``α / r²``, which includes rank 32 at α = 4 with the linear ranking). Score
    variants other than ``influence`` rank linearly, as a build requires.
    """
    linear = default.replace(ranking="linear")
    grid = [linear]
    if default.ranking in SATURATED_RANKINGS:
        grid += ranking_variants(default)
        grid += [default.replace(saturation=k) for k in (20.0, 40.0) if k != default.saturation]
        grid += (
            [linear.replace(damping=16.0)] if default.damping != 16.0 else []
        )  # linear at α = 16
    grid += [linear.replace(score=s) for s in ("relatif", "cosine", "grad_dot")]
    grid += [
        default.replace(damping=a)
        for a in (1.0, 4.0, 8.0, 16.0, 32.0, 64.0)
        if a != default.damping
    ]
    grid += [
        default.replace(objective="nll"),
        linear.replace(objective="nll", score="relatif", damping=1e-3),
    ]
    grid += [
        (default if s == "influence" else linear).replace(projector="pca", score=s)
        for s in pca_scores
    ]
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
    grid += [
        per_module.replace(rank=r, damping=per_module.damping * r * r / per_module.rank**2)
        for r in (16, 32, 64)
    ]
    grid += [linear.replace(rapidgrad_k=None, rank=32, damping=4.0)]  # per-module, rank 32, linear
    return [m for m in dict.fromkeys(grid) if m != default]


class GradientCache:
    """Projected gradients of a workload's training set and queries, per (projector, rank,
    objective, modules).

    Each entry hooks exactly the modules its method selects, as a build with that selection
    would: a method's first ``logra_scores`` call (the ``seconds`` the LDS table reports) times
    the gradient pass the index would run, not a superset of it. Projections are seeded per
    module name, so a module's block is the same whichever other modules are tracked.
    """

    def __init__(self, workload: Workload, max_entries: int = 2):
        self.workload = workload
        self.modules = tracked_modules(workload.model)
        self.max_entries = max_entries
        """Keys kept at once (least recently used dropped): rank 128 with its per-position terms is
        ~7 GB."""
        self._store: OrderedDict[Key, tuple[torch.Tensor, torch.Tensor, list[Block]]] = (
            OrderedDict()
        )
        self._projectors: dict[Key, LoGraProjector] = {}
        self._positions: dict[Key, tuple[torch.Tensor, torch.Tensor]] = {}

    def modules_of(self, which: str) -> list[TrackedModule]:
        """The tracked modules of a selection (:data:`PRESET_OF`), by the indexer's own preset
        rule."""
        if which not in PRESET_OF:
            raise ValueError(f"unknown module selection {which!r}; choose from {list(PRESET_OF)}")
        return (
            self.modules
            if which == "all"
            else preset_modules(self.workload.model, PRESET_OF[which])
        )

    @staticmethod
    def key(method: LoGraMethod) -> Key:
        return (method.projector, method.rank, method.objective, method.modules)

    def get(self, method: LoGraMethod) -> tuple[torch.Tensor, torch.Tensor, list[Block]]:
        key = self.key(method)
        if key in self._store:
            self._store.move_to_end(key)
        else:
            while len(self._store) >= self.max_entries:
                old, _ = self._store.popitem(last=False)
                self._projectors.pop(old, None)
                self._positions.pop(old, None)
            w = self.workload
            modules = self.modules_of(method.modules)
            proj = make_projector(
                w.model,
                modules,
                method.projector,
                method.rank,
                w.examples,
                w.pad_id,
                objective=method.objective,
            )
            train = projected(
                w.model, modules, proj, w.examples, w.pad_id, objective=method.objective
            )
            if (
                method.ranking in SATURATED_RANKINGS
            ):  # the queries' per-position terms from the same pass
                queries, terms, owner = projected_positions(
                    w.model,
                    modules,
                    proj,
                    self._query_examples,
                    w.pad_id,
                    objective=method.objective,
                )
                self._positions[key] = (terms, owner)
            else:
                queries = projected(
                    w.model,
                    modules,
                    proj,
                    self._query_examples,
                    w.pad_id,
                    objective=method.objective,
                )
            self._store[key] = (train, queries, proj.blocks)
            self._projectors[key] = proj
        return self._store[key]

    @property
    def _query_examples(self) -> list[TokenizedExample]:
        return [q.example for q in self.workload.queries]

    def query_positions(self, method: LoGraMethod) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries' per-position terms ``[n, D]`` at the positions emitting response tokens, and
        their query row ``[n]``."""
        key = self.key(method)
        self.get(method)  # a saturated method's first get computes them with the query vectors
        if key not in self._positions:  # the key was first seen with a linear method
            w = self.workload
            _, terms, owner = projected_positions(
                w.model,
                self.modules_of(method.modules),
                self._projectors[key],
                self._query_examples,
                w.pad_id,
                objective=method.objective,
            )
            self._positions[key] = (terms, owner)
        return self._positions[key]


def logra_scores(
    method: LoGraMethod, cache: GradientCache, candidates: int | None = None
) -> np.ndarray:
    """``[Q, N]`` scores of every query against every training example under ``method``.

    Two-stage rankings: with ``candidates`` the ranking's scores (all ``>= 0``) are given to each
    query's first-stage top ``candidates`` only, and the rest keep their first-stage order below
    them (negative), as the service ranks; without, every example gets its exact ranking score.
    """
    train, queries, blocks = cache.get(method)
    k = rapidgrad_dim(method.rapidgrad_k, blocks[-1].stop)  # the indexer's rule: K capped at D
    compressor = None
    if k:
        compressor = RapidGradCompressor(
            blocks, k, seed=0, normalize_layers=method.rapidgrad_normalize
        )
        train, blocks = compressor.compress(train), compressor.out_blocks
    preconditioner = None
    if method.score != "grad_dot":
        fisher = FisherAccumulator(blocks)
        fisher.update(train)
        preconditioner = Preconditioner.from_fisher(fisher, method.damping)
    transform = ScoreTransform(method.score, preconditioner)
    stored, _ = transform.train(train)  # [N, D]: what the index stores, in float64
    space = QuerySpace(transform, compressor)
    ranking = method.make_ranking()
    examples = [q.example for q in cache.workload.queries]
    if not ranking.positions:  # one stage: the search's inner products
        ranked = ranking.queries(space, queries, None, None, examples)
        return (torch.stack([r.search for r in ranked]) @ stored.T).numpy()
    positions, owner = cache.query_positions(method)  # [n, D_proj], [n]
    reference = None
    if ranking.needs_reference:
        reference = stored[
            torch.from_numpy(reference_rows(stored.shape[0], ranking.config.reference_rows))
        ]
    ranked = ranking.queries(space, queries, positions, owner, examples, reference)
    out = np.empty((len(queries), stored.shape[0]))
    for q, query in enumerate(ranked):
        rescored = ranking.rescore(query, stored)
        assert rescored is not None
        exact = rescored.numpy()  # [N]
        if candidates is None or candidates >= stored.shape[0]:
            out[q] = exact
            continue
        first = (query.search @ stored.T).numpy()
        order = np.argsort(-first, kind="stable")
        out[q, order] = -1.0 - np.arange(len(order)) / len(
            order
        )  # below every candidate, in first-stage order
        out[q, order[:candidates]] = exact[order[:candidates]]
    return out
