"""Which linear modules of a causal LM are tracked, and their shapes.

Two module types carry weight matrices in Hugging Face causal LMs: ``torch.nn.Linear``
(Llama, Qwen, Mistral, ...) and ``transformers.pytorch_utils.Conv1D`` (GPT-2), whose weight is
stored transposed (``[d_in, d_out]``). Both compute ``y = x W_effᵀ + b`` with an input
``x ∈ R^{d_in}`` and output ``y ∈ R^{d_out}`` per position, which is all the gradient core needs.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModuleSelectionError

logger = logging.getLogger(__name__)

MODULE_TYPES = ("linear", "conv1d")
MODULE_PRESETS = ("mlp+output", "all")


def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers absent: only nn.Linear can be tracked
        return None
    return Conv1D


def module_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv1d"`` or None for modules the core cannot track."""
    conv1d = _conv1d_class()
    if conv1d is not None and isinstance(module, conv1d):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


@dataclass(frozen=True)
class TrackedModule:
    """A linear module and its input/output widths."""

    name: str
    module: nn.Module
    kind: str  # "linear" | "conv1d"
    d_in: int
    d_out: int


def _dims(module: nn.Module, kind: str) -> tuple[int, int]:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    if kind == "conv1d":  # Conv1D stores W as [d_in, d_out]
        return int(weight.shape[0]), int(weight.shape[1])
    return int(weight.shape[1]), int(weight.shape[0])  # nn.Linear: [d_out, d_in]


def select_modules(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    types: Iterable[str] = MODULE_TYPES,
) -> list[TrackedModule]:
    """Tracked modules of ``model`` in definition order.

    Args:
        include: fnmatch patterns over qualified module names (``"*.mlp.*"``, ``"lm_head"``);
            None tracks every module of the allowed types. Each pattern must match something.
        exclude: fnmatch patterns removed after ``include``.
        types: subset of ``("linear", "conv1d")``.
    """
    types = tuple(types)
    unknown_types = sorted(set(types) - set(MODULE_TYPES))
    if unknown_types:
        raise ModuleSelectionError(
            f"unknown module types {unknown_types}; choose from {list(MODULE_TYPES)}"
        )
    candidates: list[TrackedModule] = []
    for name, module in model.named_modules():
        kind = module_kind(module)
        if kind is None or kind not in types:
            continue
        d_in, d_out = _dims(module, kind)
        candidates.append(TrackedModule(name, module, kind, d_in, d_out))
    if not candidates:
        raise ModuleSelectionError(
            f"{type(model).__name__} has no module of types {list(types)}; "
            "the gradient core tracks nn.Linear and transformers' Conv1D"
        )
    names = [c.name for c in candidates]
    selected = candidates
    if include:
        _check_patterns(include, names, "include")
        selected = [c for c in selected if any(fnmatch.fnmatchcase(c.name, p) for p in include)]
    if exclude:
        _check_patterns(exclude, names, "exclude")
        selected = [c for c in selected if not any(fnmatch.fnmatchcase(c.name, p) for p in exclude)]
    if not selected:
        raise ModuleSelectionError(
            f"include={list(include or [])} exclude={list(exclude or [])} leave no module to "
            f"track; trackable modules look like {names[:6]}"
        )
    logger.debug("tracking %d of %d linear modules", len(selected), len(candidates))
    return selected


def _check_patterns(patterns: Sequence[str], names: list[str], what: str) -> None:
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ModuleSelectionError(
                f"{what} pattern {pattern!r} matches no trackable module; patterns are fnmatch "
                f"globs over qualified names such as {names[:6]}"
            )


def preset_modules(model: nn.Module, preset: str) -> list[TrackedModule]:
    """The modules of a named preset (the build default when no include pattern is given).

    ``all``: every ``nn.Linear``/``Conv1D``. ``mlp+output``: the linear modules inside the MLP
    blocks (a qualified-name component containing ``mlp``: GPT-2, Llama, Qwen, Mistral, Gemma,
    Phi, GPT-NeoX, ...) and the output layer (``get_output_embeddings()``, usually ``lm_head``);
    a model with no such MLP module gets ``all``, and the fallback is logged.
    """
    if preset not in MODULE_PRESETS:
        raise ModuleSelectionError(
            f"unknown module preset {preset!r}; choose from {list(MODULE_PRESETS)}"
        )
    every = select_modules(model)
    if preset == "all":
        return every
    getter = getattr(model, "get_output_embeddings", None)
    output = getter() if callable(getter) else None
    chosen = [
        m for m in every if any("mlp" in part for part in m.name.split(".")) or m.module is output
    ]
    if not any(m.module is not output for m in chosen):
        logger.warning(
            "%s has no module named *mlp*; tracking all %d linear modules",
            type(model).__name__,
            len(every),
        )
        return every
    return chosen


def resolve_modules(
    model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str] | None, preset: str
) -> list[TrackedModule]:
    """A build's selection: ``include`` patterns when given, else the ``preset``; then
    ``exclude``."""
    if include:
        return select_modules(model, include=include, exclude=exclude)
    selected = preset_modules(model, preset)
    if exclude:
        _check_patterns(exclude, [m.name for m in selected], "exclude")
        selected = [m for m in selected if not any(fnmatch.fnmatchcase(m.name, p) for p in exclude)]
        if not selected:
            raise ModuleSelectionError(
                f"exclude={list(exclude)} leaves no module of preset {preset!r} to track"
            )
    return selected
