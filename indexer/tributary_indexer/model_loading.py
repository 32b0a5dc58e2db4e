"""Loading a local Hugging Face causal LM and its tokenizer, and choosing the device."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from .errors import ModelLoadError

logger = logging.getLogger(__name__)


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` → the local rank's CUDA device when CUDA is present, else CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device(
                "cuda", local_rank if local_rank is not None else torch.cuda.current_device()
            )
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {spec!r} was asked for but CUDA is not available; fix: use --device cpu or "
            "auto"
        )
    return device


def context_length(model: nn.Module) -> int | None:
    """The most tokens the model's position embeddings take (``max_position_embeddings`` /
    ``n_positions`` / ``n_ctx`` of its config), or ``None`` when the config names no limit."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def capped_max_tokens(max_tokens: int, model: nn.Module, what: str) -> int:
    """``max_tokens``, or the model's context length when that is smaller (logged: ``what`` says
    whose limit)."""
    context = context_length(model)
    if context is None or context >= max_tokens:
        return max_tokens
    logger.info(
        "%s %d is more than the model's context length %d: using %d",
        what,
        max_tokens,
        context,
        context,
    )
    return context


def load_causal_lm(
    path: str | os.PathLike[str], device: torch.device, dtype: torch.dtype | None = None
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path)`` in eval mode, with errors that say what to
    fix."""
    from transformers import AutoConfig, AutoModelForCausalLM

    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(
            f"model path {str(p)!r} is not a directory; fix: pass a local directory saved with "
            "save_pretrained() (config.json + weights); Tributary never downloads models"
        )
    if not (p / "config.json").is_file():
        raise ModelLoadError(
            f"{p} has no config.json; fix: point --model at a save_pretrained() directory"
        )
    try:
        config = AutoConfig.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # transformers raises many types here
        raise ModelLoadError(
            f"cannot read the model config in {p}: {exc}; fix: check config.json"
        ) from exc
    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise ModelLoadError(
            f"{p} holds a {config.model_type!r} model ({type(config).__name__}) that is not a "
            "causal LM; fix: attribution needs an AutoModelForCausalLM (GPT-2, Llama, Qwen, "
            "Mistral, ...)"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the weights in {p}: {exc}; fix: re-save the model with save_pretrained()"
        ) from exc
    model.eval()
    return model.to(device)  # type: ignore[arg-type]


def load_tokenizer(path: str | os.PathLike[str]):  # noqa: ANN201 - transformers tokenizer
    """The tokenizer saved beside the model (``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load a tokenizer from {path}: {exc}; fix: save the tokenizer next to the "
            "model (tokenizer.save_pretrained(model_dir))"
        ) from exc
