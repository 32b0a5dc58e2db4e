"""Per-example gradients for the quality benchmarks: LoGra-projected and exact (full) ones.

``projected`` runs the indexer's own hooks, so the vectors are the ones an index would store
before the score transform. ``full_module_gradients`` returns unprojected per-example weight
gradients of one module at a time (the exact baseline and the stage-two re-scorer), computed
with the same hooks and an identity projector, never through ``torch.autograd`` per example.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tributary_indexer.batching import TokenizedExample
from tributary_indexer.gradient_computer import GradientComputer
from tributary_indexer.kronecker_statistics import estimate_covariances
from tributary_indexer.module_selection import TrackedModule, select_modules
from tributary_indexer.projector import LoGraProjector, ProjectionConfig

from .workload import length_batches


def tracked_modules(model: torch.nn.Module) -> list[TrackedModule]:
    """The indexer's default selection: every Linear/Conv1D, ``lm_head`` included."""
    return select_modules(model)


def make_projector(
    model: torch.nn.Module,
    modules: Sequence[TrackedModule],
    kind: str,
    rank: int,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    seed: int = 0,
    pca_examples: int = 512,
    objective: str = "margin",
) -> LoGraProjector:
    """A ``random``, ``pca`` or ``identity`` projector with ``rank × rank`` per module."""
    config = ProjectionConfig(kind=kind, rank_in=rank, rank_out=rank, seed=seed)
    if kind == "identity":
        return LoGraProjector.identity(modules)
    if kind == "random":
        return LoGraProjector.random(modules, config)
    sample = list(examples[:pca_examples])
    covariances = estimate_covariances(model, modules, (b for _, b in length_batches(sample, pad_id)), objective=objective)
    return LoGraProjector.pca(modules, config, covariances)


def projected(
    model: torch.nn.Module,
    modules: Sequence[TrackedModule],
    projector: LoGraProjector,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    batch_tokens: int = 4096,
    objective: str = "margin",
) -> torch.Tensor:
    """``[N, D]`` float64 projected gradients of ``examples`` (``objective`` summed over targets)."""
    out = torch.zeros(len(examples), projector.dim, dtype=torch.float64)
    with GradientComputer(model, modules, projector, dtype=torch.float64, objective=objective) as computer:
        for rows, batch in length_batches(list(examples), pad_id, batch_tokens):
            out[rows] = computer.compute(batch).vectors.to(torch.float64)
    return out


def full_module_gradients(
    model: torch.nn.Module,
    module: TrackedModule,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    batch_tokens: int = 2048,
    dtype: torch.dtype = torch.float32,
    objective: str = "margin",
) -> torch.Tensor:
    """``[N, d_out·d_in]`` exact per-example weight gradients of one module (row-major ``∇W``)."""
    projector = LoGraProjector.identity([module])
    out = torch.zeros(len(examples), projector.dim, dtype=dtype)
    with GradientComputer(model, [module], projector, dtype=torch.float64, objective=objective) as computer:
        for rows, batch in length_batches(list(examples), pad_id, batch_tokens):
            out[rows] = computer.compute(batch).vectors.to(dtype)
    return out


def projected_positions(
    model: torch.nn.Module,
    modules: Sequence[TrackedModule],
    projector: LoGraProjector,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    batch_tokens: int = 2048,
    objective: str = "margin",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position terms ``g^{(t)}`` ``[n, D]`` (float64) at the positions that emit a target token, and each row's example.

    These are the query-side terms the service's saturated rankings standardise.
    """
    terms, owner = [], []
    with GradientComputer(model, modules, projector, dtype=torch.float64, objective=objective) as computer:
        for rows, batch in length_batches(list(examples), pad_id, batch_tokens):
            emitting = batch.emitting_mask  # [B, T]
            picked = computer.compute(batch, positions=emitting).position_terms  # [n, D], example by example
            assert picked is not None
            terms.append(picked.to(torch.float64))
            owner.append(torch.as_tensor(rows, dtype=torch.long)[emitting.nonzero()[:, 0]])
    return torch.cat(terms), torch.cat(owner)
