"""The build's passes over the corpus: its examples, the projector, and the staged gradients.

``corpus → unique valid records → tokenised examples → (PCA statistics for the projector) →
projected (and RapidGrad-compressed) gradient per example → staging, one chunk per shard``.
Chunks a rank does not own, and chunks a killed run finished, are counted but not recomputed.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic_io import atomic_output
from ..config import BuildConfig
from ..data.batching import TokenizedExample, collate, pad_token_id
from ..data.corpus import CorpusRecord, CorpusStats, iter_records
from ..data.corpus_check import CorpusCheck, UniqueIds
from ..data.example_store import StoredExample
from ..data.known_records import KnownRecords
from ..data.tokenization import render_record, tokenize_record
from ..errors import CorpusError
from ..gradients.computer import GradientComputer
from ..gradients.module_selection import TrackedModule
from ..gradients.projector import LoGraProjector
from ..gradients.rapidgrad import RapidGradCompressor
from ..hessian.kronecker_statistics import estimate_covariances
from ..progress import progress_bar
from .crash_points import crash_point
from .distributed import DistributedContext
from .staging import Staging
from .summary import BuildSummary

logger = logging.getLogger(__name__)

__all__ = ["AUTOCAST", "GradientPass", "token_budget_batches"]

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}
"""``BuildConfig.autocast`` → the dtype the model's forward pass runs under."""


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Group example indices into batches of at most ``batch_tokens`` padded tokens.

    Longest first, so each batch pads to its first element; deterministic for given lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        if not current:
            width = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class GradientPass:
    """One build's view of its corpus: the examples it indexes and the gradients it stages."""

    config: BuildConfig
    staging: Staging
    ctx: DistributedContext
    summary: BuildSummary
    """Counts, batch timings and the ``gradients`` stage time are added to it."""
    corpus_check: CorpusCheck | None
    max_tokens: int
    """Tokens per example (the model's context caps ``config.max_tokens``)."""
    max_examples: int | None = None
    """Stop after this many examples (what `tributary index plan` measures on)."""

    def unique_records(self, stats: CorpusStats) -> Iterator[CorpusRecord]:
        """The corpus's valid records without the later uses of a repeated id (those are bad
        records)."""
        cfg = self.config
        unique = UniqueIds(self.corpus_check.duplicate_ids if self.corpus_check else frozenset())
        for record in iter_records(
            cfg.corpus, skip_bad=cfg.skip_bad, stats=stats, warn=False
        ):  # checked: warned
            error = unique.error(record)
            if error is not None:  # only with skip_bad: the corpus check raised otherwise
                stats.record_bad(error)
                continue
            yield record

    def tokenized(
        self, tokenizer: Any, stats: CorpusStats, known: KnownRecords | None = None
    ) -> Iterator[tuple[CorpusRecord, TokenizedExample]]:
        """Each record to index with its tokenised example (``known`` ones left out)."""
        cfg = self.config
        produced = 0
        for record in self.unique_records(stats):
            if self.max_examples is not None and produced >= self.max_examples:
                return
            if known is not None and known.seen(record):
                continue
            try:
                example = tokenize_record(record, tokenizer, self.max_tokens)
            except CorpusError as err:
                if not cfg.skip_bad:
                    raise
                stats.record_bad(err)
                continue
            produced += 1
            yield record, example

    def projector(
        self, path: Path, model: torch.nn.Module, tokenizer: Any, modules: list[TrackedModule]
    ) -> LoGraProjector:
        """The build's projector: read from ``path``, else made (rank 0) and written there."""
        cfg = self.config
        missing = not path.is_file()
        self.ctx.barrier()  # every rank decided before rank 0 may create it
        if missing:
            if self.ctx.is_main:
                if cfg.projector == "identity":
                    projector = LoGraProjector.identity(modules)
                elif cfg.projector == "random":
                    projector = LoGraProjector.random(modules, cfg.projection)
                else:
                    sample = [
                        ex
                        for _, ex in itertools.islice(
                            self.tokenized(tokenizer, CorpusStats()), cfg.pca_examples
                        )
                    ]
                    pad = pad_token_id(tokenizer)
                    batches = (
                        collate([sample[i] for i in idx], pad)
                        for idx in token_budget_batches(
                            [e.n_tokens for e in sample], cfg.batch_tokens
                        )
                    )
                    covariances = estimate_covariances(
                        model,
                        modules,
                        batches,
                        autocast_dtype=AUTOCAST[cfg.autocast],
                        objective=cfg.objective,
                    )
                    projector = LoGraProjector.pca(modules, cfg.projection, covariances)
                with atomic_output(path) as tmp:
                    projector.save(tmp)
                crash_point("after_projector")
            self.ctx.barrier()
        projector = LoGraProjector.load(path)
        projector.check_modules(modules)
        return projector

    def _progress_total(self) -> int | None:
        """Records to embed (counted by the corpus check), so the bar has a total and an ETA."""
        if self.corpus_check is None:
            return None
        n = self.corpus_check.stats.records  # `add`: records already in the index are counted too
        return n if self.max_examples is None else min(n, self.max_examples)

    def run(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        modules: list[TrackedModule],
        projector: LoGraProjector,
        compressor: RapidGradCompressor | None,
        id_offset: int,
        first_chunk: int,
        known: KnownRecords | None = None,
    ) -> tuple[int, int, CorpusStats]:
        """Stage raw vectors and store rows of every owned, unfinished chunk; return (chunks,
        examples, the corpus statistics of the pass)."""
        cfg = self.config
        self.staging.ensure()
        stats = CorpusStats()
        stream = self.tokenized(tokenizer, stats, known)
        computer = GradientComputer(
            model,
            modules,
            projector,
            autocast_dtype=AUTOCAST[cfg.autocast],
            objective=cfg.objective,
        )
        dim = compressor.k if compressor else projector.dim
        pad = pad_token_id(tokenizer)
        t_pass = time.perf_counter()
        bar = progress_bar(
            cfg.progress and self.ctx.is_main,
            total=self._progress_total(),
            desc="gradients",
            unit="ex",
        )
        tokens_done, grad_seconds = 0, 0.0
        n_chunks = n_examples = 0
        try:
            while True:
                items = list(itertools.islice(stream, cfg.shard_size))
                if not items:
                    break
                chunk = first_chunk + n_chunks
                n_chunks += 1
                start_id = id_offset + n_examples
                n_examples += len(items)
                self._tally(items)
                if not self.ctx.owns(chunk) or self.staging.is_complete(chunk):
                    continue
                examples = [ex for _, ex in items]
                t0 = time.perf_counter()
                with self.staging.write_vectors(chunk, (len(items), dim)) as out:
                    for idx in token_budget_batches(
                        [e.n_tokens for e in examples], cfg.batch_tokens
                    ):
                        t_batch = time.perf_counter()
                        batch = collate([examples[i] for i in idx], pad)
                        grads = computer.compute(batch).vectors  # [b, D]
                        if compressor is not None:
                            grads = compressor.compress(grads.double())  # [b, K]
                        out[idx] = grads.float().cpu().numpy()
                        self.summary.batch_timings.append(
                            (len(idx), int(batch.input_ids.numel()), time.perf_counter() - t_batch)
                        )
                        n_tok = sum(examples[i].n_tokens for i in idx)
                        tokens_done += n_tok
                        bar.update(len(idx))
                        elapsed = grad_seconds + time.perf_counter() - t0
                        bar.set_postfix(tok_s=f"{tokens_done / max(elapsed, 1e-9):.0f}")
                grad_seconds += time.perf_counter() - t0
                rows = [
                    _store_row(start_id + i, rec, ex, tokenizer)
                    for i, (rec, ex) in enumerate(items)
                ]
                self.staging.write_rows(chunk, rows)
                crash_point(f"after_chunk_{chunk}")
        finally:
            bar.close()
            computer.close()
            self.summary.stage_s["gradients"] = (
                self.summary.stage_s.get("gradients", 0.0) + time.perf_counter() - t_pass
            )
        self.summary.skipped_bad = stats.bad
        if known is not None:
            self.summary.skipped_present, self.summary.changed_present = (
                known.skipped,
                known.changed,
            )
        self.summary.gradient_tokens_per_s = tokens_done / grad_seconds if grad_seconds else 0.0
        if n_examples == 0:
            raise CorpusError(
                None,
                None,
                "the corpus has no usable example",
                "check the --corpus files (and what --skip-bad reported)",
                code="empty_corpus",
            )
        logger.info(
            "gradient pass: %d examples in %d shards (%s)", n_examples, n_chunks, stats.summary()
        )
        return n_chunks, n_examples, stats

    def _tally(self, items: list[tuple[CorpusRecord, TokenizedExample]]) -> None:
        s = self.summary
        for _, ex in items:
            s.examples += 1
            s.tokens += ex.n_tokens
            s.target_tokens += ex.n_targets
            s.truncated += ex.n_truncated_tokens > 0
            s.no_targets += ex.n_targets == 0


def _store_row(
    example_id: int, record: CorpusRecord, example: TokenizedExample, tokenizer: Any
) -> dict[str, Any]:
    return StoredExample.from_record(
        example_id, record, example, text=render_record(record, tokenizer)
    ).to_dict()
