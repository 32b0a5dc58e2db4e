"""``tributary index plan``: disk, RAM and time of a build, estimated before anything long runs.

Time comes from a measured sample (the first ``sample`` examples through the real gradient
computation on the configured device); sizes from the corpus's record and token counts and
the configured dimensions.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

from ..config import BuildConfig
from ..data.batching import collate, pad_token_id
from ..data.corpus import CorpusStats, iter_records
from ..data.tokenization import tokenize_record
from ..gradients.computer import GradientComputer
from ..gradients.module_selection import resolve_modules
from ..gradients.projector import LoGraProjector
from ..gradients.rapidgrad import rapidgrad_dim
from ..model_loading import capped_max_tokens, load_causal_lm, load_tokenizer, resolve_device

logger = logging.getLogger(__name__)

_TOKEN_SAMPLE = 2000  # records tokenised to estimate tokens per example


@dataclass
class BuildPlan:
    examples: int
    mean_tokens: float
    dim: int
    measured_tokens_per_s: float
    disk_bytes: int
    staging_bytes: int
    ram_bytes: int
    seconds: float

    def lines(self) -> list[str]:
        gib = 1024**3
        return [
            f"examples: {self.examples} (about {self.mean_tokens:.0f} tokens each)",
            f"vector dimension: {self.dim}",
            f"measured gradient throughput: {self.measured_tokens_per_s:.0f} tokens/s on this device",
            f"estimated time: {self.seconds / 3600:.2f} h ({self.seconds:.0f} s) for one process",
            f"disk: {self.disk_bytes / gib:.2f} GiB index + {self.staging_bytes / gib:.2f} GiB staging during the build",
            f"peak RAM: about {self.ram_bytes / gib:.2f} GiB (model, Fisher, one shard of vectors)",
        ]


def estimate_build(config: BuildConfig, sample: int = 32) -> BuildPlan:
    """Measure ``sample`` examples and extrapolate to the whole corpus."""
    device = resolve_device(config.device)
    model = load_causal_lm(config.model, device)
    tokenizer = load_tokenizer(config.model)
    modules = resolve_modules(model, config.include or None, config.exclude or None, config.modules)
    projector = LoGraProjector.identity(modules) if config.projector == "identity" else LoGraProjector.random(modules, config.projection)
    max_tokens = capped_max_tokens(config.max_tokens, model, "max_tokens")
    stats = CorpusStats()
    n_records = 0
    token_counts: list = []
    for record in iter_records(config.corpus, skip_bad=True, stats=stats):
        n_records += 1
        if len(token_counts) < _TOKEN_SAMPLE:
            try:
                token_counts.append(tokenize_record(record, tokenizer, max_tokens))
            except Exception:  # counted as bad in a real build
                pass
    if not token_counts:
        raise ValueError("no usable example in the corpus; check --corpus (see `tributary index build --skip-bad`)")
    mean_tokens = sum(e.n_tokens for e in token_counts) / len(token_counts)
    timed = token_counts[:sample]
    pad = pad_token_id(tokenizer)
    with GradientComputer(model, modules, projector, objective=config.objective) as computer:
        computer.compute(collate(timed[:2], pad))  # warm-up
        t0 = time.perf_counter()
        for batch in itertools.batched(timed, 8) if hasattr(itertools, "batched") else [timed[i : i + 8] for i in range(0, len(timed), 8)]:
            computer.compute(collate(list(batch), pad))
        seconds = time.perf_counter() - t0
    tps = sum(e.n_tokens for e in timed) / max(seconds, 1e-9)
    k = rapidgrad_dim(config.rapidgrad_k, projector.dim)
    dim = k or projector.dim
    vector_bytes = n_records * dim * 4
    fisher_bytes = k**2 * 8 if k else sum(b.size**2 for b in projector.blocks) * 8
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    shard_bytes = min(config.shard_size, n_records) * dim * 4
    text_bytes = int(mean_tokens * 4 * n_records)
    exact = 0 if config.index_factory == "Flat" else n_records * dim * (2 if config.vector_dtype == "float16" else 4)
    return BuildPlan(
        examples=n_records, mean_tokens=mean_tokens, dim=dim, measured_tokens_per_s=tps,
        disk_bytes=vector_bytes + exact + text_bytes, staging_bytes=vector_bytes,
        ram_bytes=params + 2 * fisher_bytes + 3 * shard_bytes, seconds=n_records * mean_tokens / tps,
    )


