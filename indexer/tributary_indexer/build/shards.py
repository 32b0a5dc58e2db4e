"""FAISS inner-product shards with global int64 ids, and exact top-k search across them.

A shard file holds the stored (score-transformed) training vectors of a contiguous id range,
as an ``IndexIDMap2`` over the ``index_factory`` index (``Flat`` by default). Compressed
factories (``IVF…``, ``PQ…``, ``SQ…``) keep the exact vectors beside the shard in
``vectors/shard-NNNNN.npy`` (memory-mapped when read) for re-ranking.

Search over shards merges per-shard results with ``faiss.ResultHeap``, dropping FAISS's ``-1``
"no hit" ids first (a shard with fewer rows than ``k``, or an IVF probe that found few).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..atomic_io import atomic_output

logger = logging.getLogger(__name__)


def is_flat(factory: str) -> bool:
    return factory.replace(" ", "") in ("Flat", "IDMap,Flat", "IDMap2,Flat")


def new_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index (untrained for compressed factories) with global ids."""
    try:
        inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(
            f"FAISS cannot build index_factory({dim}, {factory!r}): {exc}; fix: use 'Flat', "
            "'SQfp16', 'IVF256,Flat', 'IVF4096,PQ64', ..."
        ) from exc
    return faiss.IndexIDMap2(inner)


def train_index(
    dim: int, factory: str, sample: np.ndarray, seed: int = 0, polysemous: bool = True
) -> faiss.Index:
    """Train a compressed index on ``sample`` ``[n, dim]`` (deterministic for a seed).

    ``polysemous=False`` skips FAISS's polysemous training of IVF-PQ codes (a reordering of the
    codewords for Hamming-distance filtering, which searches here do not use): it took minutes
    for 64 sub-quantizers and grows with them. ``--index-factory auto`` skips it."""
    index = new_index(dim, factory)
    inner = faiss.downcast_index(index.index)  # type: ignore[attr-defined]  # faiss stubs lack the wrappers
    if not polysemous and isinstance(inner, faiss.IndexIVFPQ):
        inner.do_polysemous_training = False  # type: ignore[attr-defined]  # faiss stubs lack it
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        ivf.cp.seed = seed
        if sample.shape[0] < ivf.nlist:
            raise ValueError(
                f"{factory!r} has {ivf.nlist} lists but only {sample.shape[0]} training vectors; "
                "fix: use fewer lists (e.g. IVF{n//39}) or more examples".replace(
                    "{n//39}", str(max(1, sample.shape[0] // 39))
                )
            )
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def write_shard(
    path: Path,
    vectors: np.ndarray,
    ids: np.ndarray,
    factory: str,
    trained: faiss.Index | None = None,
) -> None:
    """Write one shard atomically: ``vectors`` ``[n, D]`` float32 with global ``ids`` ``[n]``
    int64."""
    dim = vectors.shape[1]
    index = faiss.clone_index(trained) if trained is not None else new_index(dim, factory)
    index.add_with_ids(
        np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
    )
    with atomic_output(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_shard(path: Path, mmap: bool = True) -> faiss.Index:
    """Read a shard; flat shards are memory-mapped so the OS page cache holds them."""
    flags = faiss.IO_FLAG_MMAP if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError:
        return faiss.read_index(str(path))


@dataclass
class SearchResult:
    scores: np.ndarray  # [nq, k] float32, descending, -inf where fewer than k hits
    ids: np.ndarray  # [nq, k] int64, -1 where fewer than k hits

    @classmethod
    def empty(cls, nq: int, k: int) -> SearchResult:
        """No hit at all: scores -inf, ids -1."""
        return cls(np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64))


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> SearchResult:
    """Merge per-shard ``(scores [nq, k_s], ids [nq, k_s])`` into the global top-``k``."""
    nq = parts[0][0].shape[0] if parts else 0
    heap = faiss.ResultHeap(nq, k, keep_max=True)
    for scores, ids in parts:
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        missing = ids < 0  # FAISS's "no hit": never let it into the merge
        if missing.any():
            scores = np.where(missing, -np.inf, scores).astype(np.float32)
        heap.add_result(scores, ids)
    heap.finalize()
    out_ids = heap.I.copy()
    out_scores = heap.D.copy()
    empty = ~np.isfinite(out_scores) | (out_ids < 0) | (out_scores <= -np.finfo(np.float32).max)
    out_ids[empty] = -1
    out_scores[empty] = -np.inf
    return SearchResult(out_scores, out_ids)
