"""Per-example projected gradients of a causal LM: one batched forward/backward per batch.

This is the one place where a model, its tracked modules and a projector meet; the indexer and
the service's query path both call :meth:`GradientComputer.compute`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..data.batching import TokenBatch
from .hooks import ProjectedGradientHooks, frozen_parameters
from .module_selection import TrackedModule
from .objectives import OBJECTIVES, objective_losses
from .projector import LoGraProjector

logger = logging.getLogger(__name__)


@dataclass
class ExampleGradients:
    """Gradients of one batch."""

    vectors: torch.Tensor  # [B, D] projected per-example gradients g
    losses: torch.Tensor  # [B] summed target NLL per example
    per_position: torch.Tensor | None = None  # [B, T, D] terms g^{(t)}, Σ_t = vectors
    position_terms: torch.Tensor | None = (
        None  # [n, D] terms of the selected positions only (example, then position)
    )
    position_scores: torch.Tensor | None = None  # [B, R, T, M] ⟨g_m^{(t)}, W_{r,m}⟩ per module m


class GradientComputer:
    """Computes per-example LoGra gradients of ``model`` for padded batches.

    Args:
        model: a Hugging Face causal LM (anything whose forward takes ``input_ids`` and returns
            ``.logits``). Its parameters are frozen during :meth:`compute` and restored after.
        modules: the tracked modules (see
        :func:`~tributary_indexer.gradients.module_selection.select_modules`). projector: the
        projections for exactly those modules. dtype: accumulation dtype of the vectors; defaults to
        float64 for a float64 model and
            float32 otherwise (also under bf16/fp16 autocast).
        autocast_dtype: run the forward under ``torch.autocast`` with this dtype (CUDA: bf16 or
            fp16 halve the time; projections and accumulators stay in ``dtype``).
        objective: what is differentiated, ``"margin"`` (log-odds, the default) or ``"nll"``
            (see :mod:`.objectives`); an index and its queries must use the same one.

    Not thread-safe: one batch at a time per instance (the service serialises through its
    micro-batcher).
    """

    def __init__(
        self,
        model: nn.Module,
        modules: Sequence[TrackedModule],
        projector: LoGraProjector,
        dtype: torch.dtype | None = None,
        autocast_dtype: torch.dtype | None = None,
        objective: str = "margin",
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose from {list(OBJECTIVES)}")
        self.model = model
        self.objective = objective
        param = next(model.parameters())
        self.device = param.device
        self.dtype = dtype or (torch.float64 if param.dtype == torch.float64 else torch.float32)
        self.autocast_dtype = autocast_dtype
        self.hooks = ProjectedGradientHooks(modules, projector, self.dtype, self.device)
        self.hooks.register()

    @property
    def dim(self) -> int:
        return self.hooks.projector.dim

    def close(self) -> None:
        """Remove the hooks from the model."""
        self.hooks.release()

    def __enter__(self) -> GradientComputer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compute(
        self,
        batch: TokenBatch,
        per_position: bool = False,
        position_weights: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> ExampleGradients:
        """Per-example projected gradients of ``batch`` (right-padded, see :func:`collate`).

        ``per_position`` also returns the ``[B, T, D]`` terms; ``positions`` (a ``[B, T]`` bool
        mask) returns only the selected positions' terms, ``[n, D]`` in row-major order;
        ``position_weights`` ``[B, R, D]`` returns only their inner products with ``R`` vectors
        per example, per module.
        """
        batch = batch.to(self.device)
        with self.hooks.capture(
            batch.attention_mask,
            per_position=per_position,
            position_weights=position_weights,
            positions=positions,
        ):
            losses = forward_backward(self.model, batch, self.autocast_dtype, self.objective)
            assert self.hooks.vectors is not None
            result = ExampleGradients(
                self.hooks.vectors,
                losses,
                self.hooks.per_position,
                self.hooks.position_terms,
                self.hooks.position_scores,
            )
        self.hooks.clear()
        return result


def forward_backward(
    model: nn.Module,
    batch: TokenBatch,
    autocast_dtype: torch.dtype | None = None,
    objective: str = "margin",
) -> torch.Tensor:
    """One forward/backward of ``objective`` with frozen parameters; returns the ``[B]`` summed
    NLLs.

    Whatever hooks are capturing see the activations and output gradients; no weight gradient
    is computed. The returned losses are always the target NLL (what users read as "loss"),
    whichever objective was differentiated.
    """
    device = batch.input_ids.device
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with frozen_parameters(model), torch.enable_grad():
        with autocast:
            # Right padding + causal attention: no real token attends to a pad, and positions
            # match the unpadded sequence, so no attention mask is needed and results do not
            # depend on batching. Pads get zero weight in the hooks.
            # an all-ones mask tells HF the same thing as no mask without its padding warning
            ones = torch.ones_like(batch.input_ids)
            logits = model(
                input_ids=batch.input_ids, attention_mask=ones, use_cache=False
            ).logits  # [B, T, V]
        differentiated, losses = objective_losses(
            objective, logits, batch.input_ids, batch.target_mask
        )  # [B], [B]
        total = differentiated.sum()
        if total.requires_grad:
            total.backward()
    return losses.detach()
