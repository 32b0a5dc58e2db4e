"""The build's last pass over the staged vectors: score transform, then one FAISS shard a chunk.

Flat factories store the transformed vectors themselves. Compressed ones first write each chunk's
exact vectors (``vectors/``, ``vector_dtype``) for the re-score, train one quantizer on a seeded
sample of all of them (kept in staging, so a resumed build reuses it), and encode every chunk
with it. A rank writes the chunks it owns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..atomic_io import atomic_output
from ..config import BuildConfig
from ..hessian.scores import ScoreTransform
from .crash_points import crash_point
from .distributed import DistributedContext
from .factory_choice import AUTO, FactoryChoice
from .layout import IndexPaths
from .shards import is_flat, train_index, write_shard
from .staging import ROWS_PER_STEP, Staging
from .summary import BuildSummary

logger = logging.getLogger(__name__)

__all__ = ["ShardWriter"]


@dataclass
class ShardWriter:
    """Writes the shards of staged chunks with the factory the build chose."""

    config: BuildConfig
    paths: IndexPaths
    staging: Staging
    ctx: DistributedContext
    choice: FactoryChoice
    summary: BuildSummary
    """The ``transform`` stage time is added to it."""

    def write(
        self,
        transform: ScoreTransform,
        chunks: range,
        id_offset: int,
        first_chunk: int,
        n_examples: int,
        trained: Any = None,
    ) -> None:
        """Shards for ``chunks`` (ids from ``id_offset``); ``trained``: the index's quantizer
        (``index add``), else one is trained over ``n_examples`` staged rows."""
        cfg = self.config
        factory = self.choice.factory
        self.paths.shards_dir.mkdir(parents=True, exist_ok=True)
        owned = self.ctx.owned(chunks)
        ids_of = {c: id_offset + (c - first_chunk) * cfg.shard_size for c in chunks}
        if is_flat(factory):
            for chunk in owned:
                vectors = self._stored_vectors(transform, chunk)
                ids = np.arange(ids_of[chunk], ids_of[chunk] + vectors.shape[0], dtype=np.int64)
                write_shard(self.paths.shard(chunk), vectors, ids, factory)
                crash_point(f"after_shard_{chunk}")
            return
        # compressed: exact vectors kept for re-ranking, one quantizer trained on a sample of all
        # shards
        self.paths.vectors_dir.mkdir(parents=True, exist_ok=True)
        for chunk in owned:
            vectors = self._stored_vectors(transform, chunk).astype(cfg.vector_dtype)
            with atomic_output(self.paths.exact_vectors(chunk)) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, vectors)
        self.ctx.barrier()
        import faiss

        trained_path = self.staging.root / "trained.faiss"
        if trained is None:
            if self.ctx.is_main and not trained_path.is_file():
                sample = self._training_sample(chunks, n_examples)
                index = train_index(
                    sample.shape[1],
                    factory,
                    sample,
                    seed=cfg.seed,
                    polysemous=self.choice.requested != AUTO,
                )
                with atomic_output(trained_path) as tmp:
                    faiss.write_index(index, str(tmp))
            self.ctx.barrier()
            trained = faiss.read_index(str(trained_path))
        for chunk in owned:
            vectors = np.load(self.paths.exact_vectors(chunk), mmap_mode="r").astype(np.float32)
            ids = np.arange(ids_of[chunk], ids_of[chunk] + vectors.shape[0], dtype=np.int64)
            write_shard(self.paths.shard(chunk), vectors, ids, factory, trained=trained)
            crash_point(f"after_shard_{chunk}")

    def _stored_vectors(self, transform: ScoreTransform, chunk: int) -> np.ndarray:
        """The chunk's staged raw vectors through the score transform, float32 ``[n, D]``."""
        raw = self.staging.read_vectors(chunk)
        out = np.empty(raw.shape, dtype=np.float32)
        with self.summary.timed("transform"):
            for start in range(0, raw.shape[0], ROWS_PER_STEP):
                part = torch.from_numpy(np.array(raw[start : start + ROWS_PER_STEP]))
                out[start : start + part.shape[0]] = transform.train(part)[0].float().numpy()
        return out

    def _training_sample(self, chunks: range, n_examples: int) -> np.ndarray:
        """A seeded sample of the chosen training size of stored vectors across ``chunks`` (same
        on every run)."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        size = min(self.choice.train_examples, n_examples)
        pick = np.sort(rng.choice(n_examples, size=size, replace=False))
        parts = []
        for i, chunk in enumerate(chunks):
            lo = i * cfg.shard_size
            rows = pick[(pick >= lo) & (pick < lo + cfg.shard_size)] - lo
            parts.append(np.load(self.paths.exact_vectors(chunk), mmap_mode="r")[rows])
        return np.concatenate(parts).astype(np.float32)
