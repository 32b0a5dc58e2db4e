"""Per-example gradients for the quality benchmarks: LoGra-projected and exact (full) ones.

``projected`` runs the indexer's own hooks, so the vectors are the ones an index would store
before the score transform; ``projected_positions`` also keeps the per-position terms of the
target-emitting positions from the same pass. ``full_module_gradients`` returns unprojected
per-example weight gradients of one module at a time (the exact baseline and the stage-two
re-scorer), computed with the same hooks and an identity projector, never through ``torch.autograd``
per example.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from tributary_indexer.data.batching import TokenizedExample
from tributary_indexer.gradients.computer import GradientComputer
from tributary_indexer.gradients.module_selection import TrackedModule, select_modules
from tributary_indexer.gradients.projector import LoGraProjector, ProjectionConfig
from tributary_indexer.hessian.kronecker_statistics import estimate_covariances

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
    covariances = estimate_covariances(
        model, modules, (b for _, b in length_batches(sample, pad_id)), objective=objective
    )
    return LoGraProjector.pca(modules, config, covariances)


def _passes(
    model: torch.nn.Module,
    modules: Sequence[TrackedModule],
    projector: LoGraProjector,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    batch_tokens: int,
    objective: str,
    positions: bool = False,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """One float64 pass of the indexer's hooks over ``examples`` in length batches.

    Yields each batch's rows, its ``[B, D]`` vectors and, with ``positions``, the ``[n, D]`` terms
    of the positions that emit a target and each term's row in the batch (``[n]``).
    """
    with GradientComputer(
        model, modules, projector, dtype=torch.float64, objective=objective
    ) as computer:
        for rows, batch in length_batches(list(examples), pad_id, batch_tokens):
            emitting = batch.emitting_mask if positions else None  # [B, T]
            grads = computer.compute(batch, positions=emitting)
            in_batch = (
                emitting.nonzero()[:, 0]
                if emitting is not None
                else torch.empty(0, dtype=torch.long)
            )
            yield rows, grads.vectors.to(torch.float64), grads.position_terms, in_batch


def projected(
    model: torch.nn.Module,
    modules: Sequence[TrackedModule],
    projector: LoGraProjector,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    batch_tokens: int = 4096,
    objective: str = "margin",
) -> torch.Tensor:
    """``[N, D]`` float64 projected gradients of ``examples`` (``objective`` summed over
    targets)."""
    out = torch.zeros(len(examples), projector.dim, dtype=torch.float64)
    for rows, vectors, _, _ in _passes(
        model, modules, projector, examples, pad_id, batch_tokens, objective
    ):
        out[rows] = vectors
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
    for rows, vectors, _, _ in _passes(
        model, [module], projector, examples, pad_id, batch_tokens, objective
    ):
        out[rows] = vectors.to(dtype)
    return out


def projected_positions(
    model: torch.nn.Module,
    modules: Sequence[TrackedModule],
    projector: LoGraProjector,
    examples: Sequence[TokenizedExample],
    pad_id: int,
    batch_tokens: int = 2048,
    objective: str = "margin",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``projected`` and, from the same pass, the per-position terms ``g^{(t)}`` ``[n, D]``
    (float64) at the positions that emit a target token, with each term's example ``[n]``.

    These are the query-side terms the service's saturated rankings standardise.
    """
    out = torch.zeros(len(examples), projector.dim, dtype=torch.float64)
    terms, owner = [], []
    for rows, vectors, picked, in_batch in _passes(
        model, modules, projector, examples, pad_id, batch_tokens, objective, positions=True
    ):
        assert picked is not None
        out[rows] = vectors
        terms.append(picked.to(torch.float64))  # example by example, position by position
        owner.append(torch.as_tensor(rows, dtype=torch.long)[in_batch])
    return out, torch.cat(terms), torch.cat(owner)
