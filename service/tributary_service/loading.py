"""Loading what the service answers from: the index, the model it was built for, and the hooks.

Startup refuses, with a message that names what differs, a model or tokenizer whose hashes are
not the manifest's, a projector that does not fit the model's modules, and (through
:class:`~tributary_indexer.query.index.AttributionIndex`) missing files or failed checksums.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tributary_client import types
from tributary_indexer.build.manifest import hash_model_files, hash_tokenizer
from tributary_indexer.errors import ConfigMismatchError
from tributary_indexer.gradients.computer import GradientComputer
from tributary_indexer.gradients.module_selection import select_modules
from tributary_indexer.model_loading import load_causal_lm, load_tokenizer, resolve_device
from tributary_indexer.query.index import AttributionIndex

from .blas_threads import OPENBLAS_SPIN_VARIABLE
from .engine import AttributionEngine
from .prompt_format import infer_prompting
from .settings import ServiceSettings

logger = logging.getLogger(__name__)


@dataclass
class LoadedService:
    index: AttributionIndex
    model: torch.nn.Module
    tokenizer: Any
    engine: AttributionEngine
    model_dir: Path
    prompting: types.PromptingInfo | None = None


def check_model_matches(index: AttributionIndex, model_dir: Path, tokenizer: Any) -> None:
    """Raise :class:`ConfigMismatchError` naming each differing hash."""
    info = hash_model_files(model_dir)
    expected = index.manifest.model
    differing: dict[str, tuple[str, str]] = {}
    if info.config_sha256 != expected.config_sha256:
        differing["model.config_sha256"] = (expected.config_sha256[:12], info.config_sha256[:12])
    if info.weights_sha256 != expected.weights_sha256:
        differing["model.weights_sha256"] = (expected.weights_sha256[:12], info.weights_sha256[:12])
    tok = hash_tokenizer(tokenizer)
    if tok != index.manifest.tokenizer_sha256:
        differing["tokenizer_sha256"] = (index.manifest.tokenizer_sha256[:12], tok[:12])
    if differing:
        raise ConfigMismatchError(
            f"the model at {model_dir} is not the one index {index.paths.root} was built for "
            f"(built from {expected.path})",
            list(differing),
            "serve the index with the model and tokenizer it was built from (--model), or rebuild "
            "the index",
            values=differing,
        )


def load_service(settings: ServiceSettings) -> LoadedService:
    """Open the index, load and check the model, attach the gradient hooks."""
    # torch stays single-threaded on this thread (the event loop's): an OpenMP team started here,
    # even by one small parallel op while loading, makes libgomp count more threads than cores
    # and throttle the model thread's team (its forward/backward ran 2x slower on 2 cores). The
    # model thread sets its own count (settings.num_threads, see MicroBatcher).
    torch.set_num_threads(1)
    if OPENBLAS_SPIN_VARIABLE not in os.environ:
        logger.warning(
            "%s is not set: numpy's BLAS threads will spin after each scan and slow the model on "
            "small machines; start with `tributary serve` (which sets it) or set it to 4 before "
            "Python starts",
            OPENBLAS_SPIN_VARIABLE,
        )
    index = AttributionIndex(
        settings.index,
        verify_checksums=settings.verify_checksums,
        rerank_factor=settings.rerank_factor,
        ranking=settings.ranking_overrides(),
        nprobe=settings.nprobe,
        search_device=settings.search_device,
    )
    model_dir = Path(settings.model) if settings.model else Path(index.manifest.model.path)
    tokenizer = load_tokenizer(model_dir) if model_dir.is_dir() else None
    if tokenizer is None:
        raise ConfigMismatchError(
            f"the model directory {model_dir} does not exist",
            ["model.path"],
            "pass --model (or TRIBUTARY_MODEL) pointing at the model the index was built from",
        )
    check_model_matches(index, model_dir, tokenizer)
    device = resolve_device(settings.device)
    model = load_causal_lm(model_dir, device)
    model.requires_grad_(False)  # inference only: the hooks never need weight gradients
    build = index.manifest.build_config
    # exactly the modules the projector was built for (whatever preset or patterns chose them)
    modules = select_modules(model, include=[p.name for p in index.projector.projections])
    index.projector.check_modules(modules)
    autocast = (
        {"bf16": torch.bfloat16, "fp16": torch.float16}.get(build.get("autocast") or "")
        if device.type == "cuda"
        else None
    )
    # the query gradient must differentiate what the index did
    computer = GradientComputer(
        model, modules, index.projector, autocast_dtype=autocast, objective=index.manifest.objective
    )
    engine = AttributionEngine(
        index,
        model,
        tokenizer,
        computer,
        max_tokens=settings.max_request_tokens,
        snippet_chars=settings.snippet_chars,
    )
    logger.info(
        "loaded index %s (%d examples, dim %d, %s) and model %s on %s",
        settings.index,
        index.n_examples,
        index.dim,
        index.manifest.score_variant,
        model_dir,
        device,
    )
    prompting = infer_prompting(index.store, tokenizer, settings.prompt_format)
    return LoadedService(index, model, tokenizer, engine, model_dir, prompting)
