"""Opening a finished index for queries: manifest, projector, preconditioner, shards, store.

The service and the tests both go through :class:`AttributionIndex`; it checks the files
against the manifest and exposes exact top-k search over all shards (re-ranked with the exact
vectors when the shards are compressed) for query vectors already transformed with
:attr:`AttributionIndex.transform`.
"""

from __future__ import annotations

import json
import logging
import mmap
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..build.factory_choice import DEFAULT_NPROBE, recorded_factory, recorded_nprobe
from ..build.layout import IndexPaths
from ..build.manifest import Manifest
from ..build.shards import SearchResult, is_flat, merge_topk, read_shard
from ..build.verification import verify_index
from ..config import RankingConfig
from ..data.example_store import ExampleStore
from ..data.tombstones import COMPACTION_DIR, SWAP_MARKER, Tombstones, TombstoneWatcher, id_space_of
from ..errors import IndexIntegrityError
from ..gradients.projector import LoGraProjector
from ..gradients.rapidgrad import RapidGradCompressor
from ..hessian.preconditioner import Preconditioner
from ..hessian.scores import ScoreTransform
from .gpu_placement import ShardPlacement, rescore, resolve_search_device
from .ranking import Ranking, make_ranking, reference_rows
from .space import QuerySpace

logger = logging.getLogger(__name__)

_EXACT_SUBSET = 20_000  # filtered searches over at most this many examples are scored directly
# up to this many tombstones a search asks for k + their number; past it, FAISS skips them
_OVERFETCH_MAX = 4_096


class IndexChangedError(IndexIntegrityError):
    """The index files on disk were replaced (compacted, extended) after this process loaded
    them."""


@dataclass
class ShardHandle:
    index: object  # faiss.Index
    id_start: int
    id_end: int
    exact: np.ndarray | None  # [rows, D] memory-mapped exact vectors (compressed shards only)
    flat: np.ndarray | None = (
        None  # [rows, D] zero-copy view of a flat shard's vectors (mmapped file)
    )


def _flat_view(index: object) -> np.ndarray | None:
    """The vectors of a (memory-mapped) flat IDMap shard as a numpy view, without copying."""
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else None  # type: ignore[attr-defined]
    if not isinstance(inner, faiss.IndexFlat) or inner.ntotal == 0:
        return None
    return faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * inner.d).reshape(inner.ntotal, inner.d)


def _for_random_reads(array: np.ndarray) -> np.ndarray:
    """``array`` (a memory map of exact vectors) with the OS told that its rows are read at
    random: a re-score faults in a few thousand scattered rows, and the default read-ahead
    around each fault would read (and keep in the page cache) about 64 times the bytes."""
    mapped = getattr(array, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return array


def _as_tensor(matrix: np.ndarray) -> torch.Tensor:
    """A zero-copy tensor view; a read-only memory map is fine, torch only reads it here."""
    if (
        matrix.flags.writeable
    ):  # the flat shards' views are; silencing the warning touches global state
        return torch.from_numpy(matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(matrix)


def topk_by_scan(
    matrix: np.ndarray, queries: np.ndarray, k: int, id_start: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``queries`` ``[nq, D]`` over ``matrix`` ``[rows, D]``.

    One pass over a memory-mapped shard: FAISS's flat search is slower on CPU for a few queries
    (measured in ``benchmarks/RESULTS.md``). One query is a matrix-vector product (numpy's
    OpenBLAS, at memory bandwidth); several are one ``[rows, D] · [D, nq]`` product through
    torch (MKL), which on the benchmark machine ran a micro-batch of 2–32 queries 1.4–2.3×
    faster than numpy's ``queries @ matrix.T``. ``torch.topk`` then picks the winners.
    """
    if queries.shape[0] == 1:
        scores = torch.from_numpy(np.ascontiguousarray(matrix @ queries[0])[None])  # [1, rows]
    else:
        m = _as_tensor(matrix)
        scores = torch.mm(m, torch.from_numpy(np.ascontiguousarray(queries)).T).T  # [nq, rows]
    top, ids = torch.topk(scores, min(k, scores.shape[1]), dim=1)  # sorted, largest first
    return top.numpy(), ids.numpy().astype(np.int64) + id_start


class AttributionIndex:
    """A read-only, loaded index."""

    def __init__(
        self,
        root: str | Path,
        verify_checksums: bool = True,
        rerank_factor: int = 10,
        ranking: str | Mapping[str, Any] | None = None,
        nprobe: int | None = None,
        search_device: str = "cpu",
    ):
        """``ranking``: :class:`~tributary_indexer.config.RankingConfig` fields that override the
        manifest's (a name alone overrides ``ranking``; ``None`` values are ignored).
        ``nprobe``: IVF lists probed per query; ``None``: the manifest's (``auto``), else 32.
        ``search_device``: ``cpu``, ``gpu`` (shards on the GPU(s), :mod:`.gpu_placement`;
        :class:`~tributary_indexer.errors.SearchDeviceError` without one) or ``auto``."""
        self.search_device = resolve_search_device(search_device)
        """Where the first stage runs: ``cpu`` or ``gpu``."""
        self.paths = IndexPaths(Path(root))
        problems = verify_index(self.paths.root, check_checksums=verify_checksums)
        if problems:
            raise IndexIntegrityError(
                f"index {self.paths.root} failed verification: "
                + "; ".join(problems[:5])
                + "; fix: rebuild the index or restore the damaged files (`tributary index "
                "verify` lists them)"
            )
        self.manifest = Manifest.load(self.paths.root)
        self.projector = LoGraProjector.load(self.paths.projector)
        self.preconditioner = Preconditioner.load(self.paths.hessian)
        self.transform = ScoreTransform(self.manifest.score_variant, self.preconditioner)
        rapid = self.manifest.projector.params.get("rapidgrad")
        self.compressor = (
            RapidGradCompressor(
                self.projector.blocks,
                rapid["k"],
                seed=rapid["seed"],
                normalize_layers=rapid["normalize_layers"],
            )
            if rapid
            else None
        )
        self.factory = recorded_factory(self.manifest)
        """The FAISS factory of the shards."""
        self.compressed = not is_flat(self.factory)
        self.space = QuerySpace(self.transform, self.compressor)
        """The query side of the index's vector space (compression and transform)."""
        self.ranking_config = self._ranking_config(ranking)
        self.ranking: Ranking = make_ranking(self.ranking_config)
        """The ranking in force: the manifest's, with the overrides."""
        self.rerank_factor = rerank_factor
        self._shard_threads: ThreadPoolExecutor | None = None
        self._shard_workers = 0
        self.shards: list[ShardHandle] = []
        for n, shard in enumerate(self.manifest.shards):
            exact = (
                _for_random_reads(np.load(self.paths.exact_vectors(n), mmap_mode="r"))
                if self.compressed
                else None
            )
            index = read_shard(self.paths.root / shard.file)
            self.shards.append(
                ShardHandle(
                    index,
                    shard.id_start,
                    shard.id_end,
                    exact,
                    None if self.compressed else _flat_view(index),
                )
            )
        import faiss

        workers = min(faiss.omp_get_max_threads(), len(self.shards))
        if self.compressed and workers >= 2:  # threads start at the first search that uses them
            self._shard_threads = ThreadPoolExecutor(workers, thread_name_prefix="shard-search")
            self._shard_workers = workers
        self.placement: ShardPlacement | None = None
        """The shards' first stage on the GPU(s) (``None``: searched on the CPU)."""
        if self.search_device == "gpu":
            self.placement = ShardPlacement.on_gpus(
                self.shards,
                lambda n: read_shard(self.paths.root / self.manifest.shards[n].file, mmap=False),
            )
        self.nprobe = 0
        self.set_nprobe(nprobe or recorded_nprobe(self.manifest) or DEFAULT_NPROBE)
        self.store = ExampleStore(self.paths.store)
        self._reference: dict[str, torch.Tensor] = {}
        self._tombstones = TombstoneWatcher(self.paths.root, id_space_of(self.manifest))
        self._id_space = id_space_of(self.manifest)
        self._manifest_key = self._manifest_stat()

    def _manifest_stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.paths.manifest.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _check_id_space(self) -> None:
        """Raise :class:`IndexChangedError` when a compaction renumbered (or is renumbering) the ids
        on disk.

        Two ``stat`` calls a request; the manifest is re-read only when it changed. ``index add``
        changes it too but keeps every id, and a different index rebuilt into the directory is
        the reload's business (it refuses to swap it in): neither is a reason to refuse here."""
        if (self.paths.root / COMPACTION_DIR / SWAP_MARKER).exists():
            raise IndexChangedError(
                f"a compaction is replacing the files of {self.paths.root}; fix: retry when it has "
                "finished, then reload the server (POST /v1/admin/reload) or restart it"
            )
        key = self._manifest_stat()
        if key == self._manifest_key:
            return
        try:
            space = id_space_of(json.loads(self.paths.manifest.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            space = None
        created = self._id_space.rsplit("#", 1)[0]
        if space is not None and space != self._id_space and space.rsplit("#", 1)[0] == created:
            raise IndexChangedError(
                f"the index in {self.paths.root} was compacted after this process loaded it, so "
                "its example ids changed; fix: reload the server (POST /v1/admin/reload) or "
                "restart it"
            )
        self._manifest_key = key

    def removed(self) -> Tombstones:
        """The examples removed from this index now (re-read when ``tombstones.json`` changed).

        Raises :class:`IndexChangedError` when the index on disk was compacted since it was
        loaded: its ids were renumbered, so nothing more can be answered from this copy.
        """
        self._check_id_space()
        return self._tombstones.refresh()

    def reference(self, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The reference sample ``[M, D]`` float32 (on ``device``, cached) that the ranking counts
        its matched shares on: the stored vectors of :func:`~.ranking.reference_rows`. ``None``
        when the ranking needs none."""
        if not self.ranking.needs_reference:
            return None
        key = str(torch.device(device))
        if key not in self._reference:
            if "cpu" not in self._reference:
                rows = reference_rows(self.n_examples, self.ranking_config.reference_rows)
                self._reference["cpu"] = torch.from_numpy(self.stored_vectors(rows))
            self._reference[key] = self._reference["cpu"].to(device)
        return self._reference[key]

    def _ranking_config(self, overrides: str | Mapping[str, Any] | None) -> RankingConfig:
        """The manifest's ranking configuration with ``overrides`` (indexes from before rankings
        were recorded: ``linear``)."""
        if isinstance(overrides, str):
            overrides = {"ranking": overrides}
        asked = {k: v for k, v in (overrides or {}).items() if v is not None}
        try:
            config = RankingConfig.from_dict({**self.manifest.build_config, **asked})
        except ValueError as exc:
            where = "the ranking settings asked for" if asked else f"index {self.paths.root}"
            raise IndexIntegrityError(
                f"{where}: {exc}; fix: choose a known ranking and valid "
                "constants (tributary serve --help)"
            ) from exc
        if config.ranking != "linear" and self.manifest.score_variant != "influence":
            raise IndexIntegrityError(
                f"ranking {config.ranking!r} needs an index built with score 'influence', but "
                f"{self.paths.root} stores {self.manifest.score_variant!r} vectors; fix: rank it "
                "'linear' or rebuild it with --score influence"
            )
        return config

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def n_examples(self) -> int:
        return self.manifest.n_examples

    def close(self) -> None:
        """Close the example store, the shard search threads and let go of the shards on the
        GPU."""
        self.store.close()
        self.placement = None
        if self._shard_threads is not None:
            self._shard_threads.shutdown(wait=False)
            self._shard_threads = None

    def _threads_for(self, n_queries: int) -> ThreadPoolExecutor | None:
        """Threads that search compressed shards side by side, for a search of fewer queries
        than FAISS has threads (FAISS splits an IVF search by query, so a single query would
        keep one core busy); ``None``: search the shards one after the other (flat shards, whose
        scan is a multi-threaded matrix product, or enough queries to fill FAISS's threads)."""
        return self._shard_threads if n_queries < self._shard_workers else None

    def set_nprobe(self, nprobe: int) -> None:
        """IVF lists probed per query (recall vs speed of compressed shards; no-op for flat)."""
        import faiss

        self.nprobe = nprobe
        if self.placement is not None:
            self.placement.set_nprobe(nprobe)
        for shard in self.shards:
            ivf = faiss.try_extract_index_ivf(shard.index)  # type: ignore[arg-type]  # faiss stubs lack the wrappers
            if ivf is not None:
                ivf.nprobe = nprobe

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> SearchResult:
        """Exact top-``k`` (largest inner product) over all shards; ``-1`` ids where fewer hits.

        ``allowed_ids`` (sorted int64) restricts the search to those examples (source/provider
        filters): a small set is scored exactly from its stored vectors, a large one goes
        through FAISS with an id selector. Removed (tombstoned) examples are never returned:
        the search asks for ``k`` plus their number and drops them (past ``_OVERFETCH_MAX`` of
        them, a FAISS selector skips them), so top-``k`` stays full while enough examples remain.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        removed = self.removed().ids
        if allowed_ids is not None and len(removed):
            allowed_ids = np.setdiff1d(allowed_ids, removed)
        if allowed_ids is not None and len(allowed_ids) <= _EXACT_SUBSET:
            return self._search_subset(q, k, allowed_ids)
        if allowed_ids is None and 0 < len(removed) <= _OVERFETCH_MAX:
            # at most len(removed) of the top k + len(removed) are dropped, so top-k stays full
            found = self._search_shards(q, k + len(removed), None)
            gone = np.isin(found.ids, removed)
            return merge_topk(
                [(np.where(gone, -np.inf, found.scores), np.where(gone, -1, found.ids))], k
            )
        selector: object | None = None
        if allowed_ids is not None or len(removed):
            import faiss

            if allowed_ids is not None:
                selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
            else:
                selector = faiss.IDSelectorNot(
                    faiss.IDSelectorBatch(np.ascontiguousarray(removed, dtype=np.int64))
                )
        return self._search_shards(q, k, selector)

    def _search_shards(self, q: np.ndarray, k: int, selector: object | None) -> SearchResult:
        """Top-``k`` over every shard, optionally through a FAISS id selector; on the GPU(s)
        when the shards are placed there and the placement serves the search, else here."""
        if self.placement is not None:
            if self.placement.can_serve(k, filtered=selector is not None):
                return self.placement.search(q, k, self.stored_vectors, self.rerank_factor)
            self.placement.cpu_fallbacks += 1
            logger.debug("search for k=%d (filtered: %s) runs on the CPU", k, selector is not None)
        fetch = k * self.rerank_factor if self.compressed else k
        params = None
        if selector is not None:
            import faiss

            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]  # faiss stubs lack the wrappers

        def one(shard: ShardHandle) -> tuple[np.ndarray, np.ndarray] | None:
            kk = min(fetch, shard.id_end - shard.id_start)
            if kk <= 0:
                return None
            if params is not None:
                return shard.index.search(q, kk, params=params)  # type: ignore[attr-defined,no-any-return]
            if shard.flat is not None:
                return topk_by_scan(shard.flat, q, kk, shard.id_start)
            return shard.index.search(q, kk)  # type: ignore[attr-defined,no-any-return]

        threads = self._threads_for(q.shape[0])
        found = threads.map(one, self.shards) if threads else map(one, self.shards)
        parts = [part for part in found if part is not None]  # in shard order either way
        if not parts:
            return SearchResult.empty(q.shape[0], k)
        if not self.compressed:
            return merge_topk(parts, k)
        # every shard's compressed score estimates the same inner product, so the best ``fetch``
        # over all shards are re-scored with the exact vectors (``fetch`` in all, not a shard:
        # the re-score reads fetch x D exact values whatever the number of shards)
        candidates = merge_topk(parts, fetch)
        return rescore(q, candidates.ids, self.stored_vectors, k, torch.device("cpu"))

    def _search_subset(self, q: np.ndarray, k: int, ids: np.ndarray) -> SearchResult:
        if len(ids) == 0:
            return SearchResult.empty(q.shape[0], k)
        scores = q @ self.stored_vectors(ids).T  # [nq, n]
        return merge_topk([(scores, np.broadcast_to(ids, scores.shape))], k)

    def stored_vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` ``[n, D]`` (from the exact files or the flat shards)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_examples):
            raise IndexError(
                f"example ids must be in [0, {self.n_examples}); got {ids.min()}..{ids.max()}"
            )
        starts = np.array([s.id_start for s in self.shards], dtype=np.int64)
        which = np.searchsorted(starts, ids, side="right") - 1
        for n in np.unique(which):
            pick = which == n
            shard = self.shards[int(n)]
            if shard.exact is not None:
                out[pick] = shard.exact[ids[pick] - shard.id_start]
            elif shard.flat is not None:
                out[pick] = shard.flat[ids[pick] - shard.id_start]
            else:
                out[pick] = [shard.index.reconstruct(int(i)) for i in ids[pick]]  # type: ignore[attr-defined]
        return out
