"""Forward/backward hooks on tracked linear modules, with an explicit lifecycle.

Per tracked module and per call, the forward hook sees the input activations ``x``
``[B, T, d_in]`` and registers a tensor hook on the output, which then receives the output
gradient ``δ = ∂L/∂y`` ``[B, T, d_out]`` during backward. What is done with ``(x, δ)`` is the
subclass's business:

- :class:`ProjectedGradientHooks`: per-example projected gradients
  ``G = Σ_t (P_out δ_t)(P_in x_t)ᵀ`` and optionally the per-position terms;
- :class:`~tributary_indexer.hessian.kronecker_statistics.KroneckerStatisticsHooks`: the covariances
  ``E[x xᵀ]`` and ``E[δ δᵀ]`` for PCA initialisation.

No weight gradient is ever formed: the caller runs backward with the model's parameters frozen
(:func:`frozen_parameters`), and a tracked module whose output has no autograd history yet (the
first ones, since nothing upstream requires grad) gets an output that is a fresh leaf requiring
grad. Backward therefore stops at the lowest tracked modules and never computes weight
gradients, which is what makes logging cheaper than a training step.

Lifecycle (as in kronfluence's trackers): :meth:`register` adds the hooks, :meth:`release`
removes them, :meth:`clear` drops per-batch state. Hooks are inert outside
:meth:`capture`, so a model with registered hooks still runs normally.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .module_selection import TrackedModule
from .projector import LoGraProjector

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter for the block, then restore the flags."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class ModuleHooks:
    """Base class: forward hooks that attach gradient hooks to tracked modules' outputs.

    Subclasses implement :meth:`on_forward` (returns whatever the backward side needs) and
    :meth:`on_backward`. ``position_mask`` ``[B, T]`` (1 = real token) is set by
    :meth:`capture` and lets subclasses zero padded positions exactly.
    """

    def __init__(self, modules: Sequence[TrackedModule]):
        self.modules = list(modules)
        self._handles: list[RemovableHandle] = []
        self._active = False
        self.position_mask: torch.Tensor | None = None

    # ------------------------------------------------------------------ lifecycle
    def register(self) -> None:
        """Attach the forward hooks (idempotent)."""
        if self._handles:
            return
        for index, tracked in enumerate(self.modules):
            handle = tracked.module.register_forward_hook(self._make_forward_hook(index))
            self._handles.append(handle)

    def release(self) -> None:
        """Remove every hook this object added."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        """Drop per-batch state; subclasses extend."""
        self.position_mask = None

    @property
    def registered(self) -> bool:
        return bool(self._handles)

    @contextlib.contextmanager
    def capture(self, position_mask: torch.Tensor) -> Iterator[None]:
        """Activate the hooks for one forward/backward over a batch."""
        if not self._handles:
            raise RuntimeError(
                f"{type(self).__name__}.capture() called before register(); call register() "
                "once after building the object (and release() when done)"
            )
        self.position_mask = position_mask
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def __enter__(self) -> ModuleHooks:
        self.register()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ hooks
    def _make_forward_hook(self, index: int):  # noqa: ANN202 - torch hook signature
        def hook(
            module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor
        ) -> torch.Tensor | None:
            if not self._active or not torch.is_grad_enabled():
                return None
            x = inputs[0].detach()  # [B, T, d_in]
            state = self.on_forward(index, x)
            replaced = None
            if not output.requires_grad:
                # nothing upstream requires grad: make the output a leaf so backward stops here
                output = output.detach().requires_grad_(True)
                replaced = output
            output.register_hook(lambda grad: self.on_backward(index, state, grad))
            return replaced

        return hook

    def on_forward(self, index: int, x: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_backward(self, index: int, state: Any, grad: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError


class ProjectedGradientHooks(ModuleHooks):
    """Per-example LoGra-projected gradients from one batched forward/backward.

    After backward, :attr:`vectors` ``[B, D]`` holds ``g = concat_m vec(G_m)`` per example and,
    when requested, :attr:`per_position` ``[B, T, D]`` the per-position terms ``g^{(t)}`` that sum
    to it. Positions where ``position_mask`` is 0 contribute exactly nothing. With
    ``positions`` (a ``[B, T]`` bool selection) :attr:`position_terms` ``[n, D]`` holds the terms
    of the selected positions only, in row-major order (example, then position): the ``[B, T, D]``
    block is never allocated, which matters when a long prompt precedes a short response.

    Token-wise scores rarely need the ``[B, T, D]`` terms themselves, only their inner products
    with a few fixed vectors: with ``position_weights`` ``W`` ``[B, R, D]``,
    :attr:`position_scores` ``[B, R, T, M]`` holds ``⟨g_m^{(t)}, W_{r,m}⟩ = (P_out δ_t)ᵀ W_{r,m}
    (P_in x_t)`` per module ``m``, computed in the hooks in ``O(T·k²)`` memory-free steps.
    """

    def __init__(
        self,
        modules: Sequence[TrackedModule],
        projector: LoGraProjector,
        dtype: torch.dtype,
        device: torch.device,
    ):
        super().__init__(modules)
        projector.check_modules(modules)
        self.projector = projector
        self.dtype = dtype
        # projections in the compute dtype on the model's device, transposed for x @ Pᵀ
        self._p_in_t = [
            None if p.p_in is None else p.p_in.to(device, dtype).T.contiguous()
            for p in projector.projections
        ]
        self._p_out_t = [
            None if p.p_out is None else p.p_out.to(device, dtype).T.contiguous()
            for p in projector.projections
        ]
        self.vectors: torch.Tensor | None = None
        self.per_position: torch.Tensor | None = None
        self.position_terms: torch.Tensor | None = None
        self.position_weights: torch.Tensor | None = None
        self.position_scores: torch.Tensor | None = None
        self._selected: tuple[torch.Tensor, torch.Tensor] | None = (
            None  # (example, position) of each selected row
        )
        self._padded = True

    def clear(self) -> None:
        super().clear()
        self.vectors = None
        self.per_position = None
        self.position_terms = None
        self._selected = None
        self.position_weights = None
        self.position_scores = None

    @contextlib.contextmanager
    def capture(  # type: ignore[override]
        self,
        position_mask: torch.Tensor,
        per_position: bool = False,
        position_weights: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> Iterator[None]:
        batch, width = position_mask.shape
        if positions is not None:
            if positions.shape != position_mask.shape or positions.dtype != torch.bool:
                raise ValueError(
                    "positions must be a bool mask shaped like the batch "
                    f"{tuple(position_mask.shape)}, got {positions.dtype} {tuple(positions.shape)}"
                )
            rows, cols = positions.to(position_mask.device).nonzero(
                as_tuple=True
            )  # row-major: example, then position
            self._selected = (rows, cols)
            self.position_terms = torch.zeros(
                len(rows), self.projector.dim, dtype=self.dtype, device=position_mask.device
            )
        if position_weights is not None:
            if (
                position_weights.ndim != 3
                or position_weights.shape[0] != batch
                or position_weights.shape[2] != self.projector.dim
            ):
                raise ValueError(
                    f"position_weights must be [B={batch}, R, D={self.projector.dim}], got "
                    f"{tuple(position_weights.shape)}"
                )
            self.position_weights = position_weights.to(position_mask.device, self.dtype)
            self.position_scores = torch.zeros(
                batch,
                position_weights.shape[1],
                width,
                len(self.modules),
                dtype=self.dtype,
                device=position_mask.device,
            )
        self.vectors = torch.zeros(
            batch, self.projector.dim, dtype=self.dtype, device=position_mask.device
        )
        self.per_position = (
            torch.zeros(
                batch, width, self.projector.dim, dtype=self.dtype, device=position_mask.device
            )
            if per_position
            else None
        )
        self._padded = not bool(position_mask.all())  # no padding: skip the per-module masking
        with super().capture(position_mask.to(self.dtype)):
            yield

    def on_forward(self, index: int, x: torch.Tensor) -> torch.Tensor:
        p_in_t = self._p_in_t[index]
        x = x.to(self.dtype)
        xp = x if p_in_t is None else x @ p_in_t  # [B, T, k_in]
        if not self._padded:
            return xp
        assert self.position_mask is not None
        return xp * self.position_mask[:, :, None]  # padded positions contribute nothing

    def on_backward(self, index: int, xp: torch.Tensor, grad: torch.Tensor) -> None:
        p_out_t = self._p_out_t[index]
        grad = grad.to(self.dtype)
        dp = grad if p_out_t is None else grad @ p_out_t  # [B, T, k_out]
        block = self.projector.blocks[index]
        batch = dp.shape[0]
        assert self.vectors is not None
        g = torch.bmm(dp.transpose(1, 2), xp)  # [B, k_out, k_in] = Σ_t dp_t xp_tᵀ
        self.vectors[:, block.start : block.stop] += g.reshape(batch, -1)
        if self.per_position is not None:
            terms = dp[:, :, :, None] * xp[:, :, None, :]  # [B, T, k_out, k_in]
            self.per_position[:, :, block.start : block.stop] += terms.reshape(
                batch, dp.shape[1], -1
            )
        if self._selected is not None and self.position_terms is not None:
            rows, cols = self._selected
            picked = dp[rows, cols][:, :, None] * xp[rows, cols][:, None, :]  # [n, k_out, k_in]
            self.position_terms[:, block.start : block.stop] += picked.reshape(len(rows), -1)
        if self.position_weights is not None and self.position_scores is not None:
            n_r = self.position_weights.shape[1]
            k_out, k_in = dp.shape[2], xp.shape[2]
            w = self.position_weights[:, :, block.start : block.stop].reshape(
                batch, n_r * k_out, k_in
            )  # [B, R*k_out, k_in]
            wx = torch.bmm(xp, w.transpose(1, 2)).reshape(
                batch, -1, n_r, k_out
            )  # [B, T, R, k_out] = W_r xp_t
            scores = (wx * dp[:, :, None, :]).sum(-1)  # [B, T, R] = dp_tᵀ W_r xp_t
            self.position_scores[:, :, :, index] += scores.transpose(1, 2)
