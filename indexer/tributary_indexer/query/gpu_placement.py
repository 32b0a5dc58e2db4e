"""Shards on the GPU(s): the first stage there, and an exact re-score with torch where needed.

When the FAISS GPU build and a CUDA GPU are present, and a test search on the GPU in a child
process succeeds (:func:`probe_faiss_gpu`: a build without kernels for the GPU's architecture
aborts the process that searches) (``search_device`` ``gpu``, or ``auto``),
each shard's FAISS index (without its id map: rows ``0..n-1``, global id = ``id_start + row``)
is cloned onto the visible GPUs with ``GpuMultipleClonerOptions`` (``shard=True``: split across
them; ``useFloat16=True``). A flat shard is read into memory first (not memory-mapped) and held
in float16 on the GPU: half the memory, and about three significant digits per score, which is
enough for the *first* stage because its candidates are then re-scored exactly: ``k ·
rerank_factor`` candidates (at most FAISS GPU's 2,048) are merged over the shards, their exact
float32 vectors are read (the memory-mapped flat shards or ``vectors/``) and scored against the
queries in float64 with torch on the GPU, and the top-``k`` of those exact scores is returned.

Without the FAISS GPU build (the CPU-only ``faiss-cpu`` wheel beside a CUDA build of torch, e.g.
where no FAISS GPU wheel matches the CUDA version), the flat shards go to the GPUs as torch
float32 matrices instead (:class:`TorchFlatShard`: one matrix product and a top-k per search,
shard ``n`` on GPU ``n mod count``). That scan is exact, as the CPU's flat scan is, so it needs
no re-score: the shards' top-``k`` are merged and returned (twice the GPU memory of float16,
none of the host reads of a re-score). Compressed shards then stay on the CPU, searched there
as part of the same merge, and the candidates are re-scored as above.

The GPU path serves an unfiltered search whose ``k`` is within 2,048. A search with a FAISS id
selector (a large source/provider filter, or more removed examples than are over-fetched) is
not supported by every GPU index, and a larger ``k`` is over FAISS GPU's limit: those run on the
CPU copies of the shards, exactly as without a GPU (:attr:`ShardPlacement.cpu_fallbacks` counts
them). A shard the GPU cannot hold (e.g. IVF-PQ codes over 96 bytes, flat SQ shards) stays on
the CPU, with a warning, and is searched there as part of the same merge.

:meth:`ShardPlacement.emulated` runs the same code with the first stage on the CPU (flat shards
as float16 scalar-quantised copies) and the re-score on torch's CPU device, so the logic is
tested on machines without a GPU.
"""

from __future__ import annotations

import functools
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..build.shards import SearchResult, merge_topk
from ..errors import SearchDeviceError

logger = logging.getLogger(__name__)

SEARCH_DEVICES = ("auto", "cpu", "gpu")
"""``auto`` (the GPU when FAISS sees one), ``cpu`` or ``gpu`` (refused when there is none)."""
GPU_MAX_K = 2048
"""The largest ``k`` (and ``nprobe``) FAISS's GPU indexes search with."""


class ShardLike(Protocol):
    """What placement needs of a loaded shard (:class:`~.index.ShardHandle`)."""

    index: object
    id_start: int
    id_end: int


_FAISS_GPU_PROBE = """
import faiss, numpy as np
x = np.random.default_rng(0).standard_normal((64, 16)).astype("float32")
x /= np.linalg.norm(x, axis=1, keepdims=True)
cpu = faiss.IndexFlatIP(16)
cpu.add(x)
options = faiss.GpuClonerOptions()
options.useFloat16 = True
gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu, options)
_, ids = gpu.search(x[:4], 3)
assert ids[:, 0].tolist() == [0, 1, 2, 3], ids
"""


def probe_faiss_gpu(code: str = _FAISS_GPU_PROBE, timeout: float = 300.0) -> str | None:
    """Run ``code`` (by default: a float16 flat index cloned onto GPU 0 and searched) in a
    child process; ``None`` when it succeeds, else what went wrong in a sentence. A FAISS GPU
    build without kernels for the GPU's architecture aborts the process on its first search
    (a FAISS assertion, not a Python exception), so the check cannot run in this process."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return f"a test search did not finish in {timeout:.0f} s"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    detail = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "")
    detail = detail.split("details:")[-1]  # a FAISS assertion's cause follows "details:"
    how = (
        f"was killed by {signal.Signals(-done.returncode).name}"
        if done.returncode < 0
        else f"exited with status {done.returncode}"
    )
    return f"a test search {how}" + (f" ({detail.strip()[:300]})" if detail else "")


@functools.cache
def _faiss_gpu_problem() -> str | None:
    """The probe's finding, once a process (logged once)."""
    problem = probe_faiss_gpu()
    if problem:
        logger.warning(
            "FAISS sees a GPU but cannot search on it: %s; fix: install a FAISS GPU build "
            "compiled for this GPU's architecture (with faiss-cpu, flat shards go to the GPU "
            "through torch instead)",
            problem,
        )
    return problem


def _faiss_sees() -> int:
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except (AttributeError, RuntimeError):
        return 0


def faiss_gpu_count() -> int:
    """CUDA GPUs FAISS can search on (0 with the CPU-only build, without a GPU, or when a test
    search in a child process fails: a FAISS build without kernels for this GPU)."""
    seen = _faiss_sees()
    return 0 if seen and _faiss_gpu_problem() else seen


def torch_gpu_count() -> int:
    """CUDA GPUs visible to torch (0 with a CPU build of torch, or without a GPU)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_count() -> int:
    """CUDA GPUs the search can use: FAISS's, else torch's (flat shards only)."""
    return faiss_gpu_count() or torch_gpu_count()


def gpu_absence() -> str:
    """Why there is no GPU search here, in words."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        faiss_part = "this FAISS is the CPU-only build (faiss-cpu)"
    elif _faiss_sees() == 0:
        faiss_part = "FAISS sees no CUDA GPU (faiss.get_num_gpus() == 0)"
    else:
        faiss_part = f"the FAISS GPU build cannot search on this GPU: {_faiss_gpu_problem()}"

    return f"{faiss_part} and torch sees no CUDA GPU"


def resolve_search_device(requested: str, gpus: int | None = None) -> str:
    """``cpu`` or ``gpu`` for a requested search device; ``gpus`` defaults to
    :func:`gpu_count`. Raises :class:`SearchDeviceError` for ``gpu`` without one."""
    if requested not in SEARCH_DEVICES:
        raise SearchDeviceError(
            f"search device {requested!r} is not one of {list(SEARCH_DEVICES)}; fix: choose "
            "auto (the GPU when present), cpu or gpu"
        )
    n = gpu_count() if gpus is None else gpus
    if requested == "gpu" and n == 0:
        raise SearchDeviceError(
            f"GPU search was asked for, but {gpu_absence()}; fix: on a machine with a CUDA GPU "
            "install the FAISS GPU build (the [gpu] extra or the -gpu image) or at least a CUDA "
            "build of torch (flat shards), or search on the CPU (--search-device cpu or auto, "
            "TRIBUTARY_SEARCH_DEVICE)"
        )
    return "gpu" if requested == "gpu" or (requested == "auto" and n > 0) else "cpu"


def _inner(shard: ShardLike) -> Any:
    """The FAISS index inside a shard's id map (its labels are the shard's rows)."""
    import faiss

    return faiss.downcast_index(shard.index.index)  # type: ignore[attr-defined]


def _is_flat(index: Any) -> bool:
    import faiss

    return isinstance(index, faiss.IndexFlat)


class TorchFlatShard:
    """A flat shard's vectors as one torch matrix on a device: the first stage where FAISS has
    no GPU build. :meth:`search` answers as a FAISS index does."""

    def __init__(self, vectors: np.ndarray, device: torch.device, dtype: torch.dtype):
        self.ntotal, self.d = vectors.shape
        self.matrix = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(
            device, dtype
        )  # [rows, D]
        # TF32 (if the process turned it on for CUDA matrix products) keeps ~3 digits: not exact
        tf32 = device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
        self.exact = dtype == torch.float64 or (dtype == torch.float32 and not tf32)
        """Whether its scores are the float32 (or better) inner products: no re-score needed."""

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` rows by inner product with each query of ``q`` ``[nq, D]``: scores
        ``[nq, k]`` (float32) and rows ``[nq, k]`` (int64)."""
        queries = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
        scores = queries.to(self.matrix.device, self.matrix.dtype) @ self.matrix.T  # [nq, rows]
        if scores.dtype == torch.float16:
            scores = scores.float()  # rank in float32: half precision has no CPU top-k everywhere
        top = torch.topk(scores, min(k, self.ntotal), dim=1)  # ranked in the matrix's precision
        return top.values.float().cpu().numpy(), top.indices.cpu().numpy().astype(np.int64)


@dataclass
class PlacedShard:
    """One shard's first stage, on the GPU(s) or (kept, or emulated) on the CPU."""

    index: Any
    """A FAISS index whose labels are the shard's rows."""
    id_start: int
    rows: int
    on_gpu: bool


class ShardPlacement:
    """Every shard's first stage where it was placed, and the exact re-score on ``device``."""

    def __init__(
        self, shards: list[PlacedShard], device: torch.device, resources: list[Any] | None = None
    ):
        self.shards = shards
        self.device = device
        self.max_k = GPU_MAX_K
        self.cpu_fallbacks = 0
        """Searches this placement could not serve (the index searched them on the CPU)."""
        self._resources = resources or []  # the GPU resources must outlive their indexes
        self.exact = bool(shards) and all(
            isinstance(p.index, TorchFlatShard) and p.index.exact for p in shards
        )
        """Whether the first stage's scores are exact (float32 torch matrices): no re-score."""

    @classmethod
    def on_gpus(
        cls, shards: Sequence[ShardLike], read_unmapped: Callable[[int], Any]
    ) -> ShardPlacement:
        """Clone every shard onto all visible GPUs (``read_unmapped(n)``: shard ``n`` read into
        memory, for the memory-mapped flat shards)."""
        import faiss

        ngpu = faiss_gpu_count()
        if ngpu == 0:
            gpus = torch_gpu_count()
            if gpus == 0:
                raise SearchDeviceError(
                    f"cannot place shards on a GPU: {gpu_absence()}; fix: "
                    "search on the CPU (--search-device cpu)"
                )
            devices = [torch.device("cuda", i) for i in range(gpus)]
            return cls.on_torch(shards, devices, torch.float32)
        resources = [faiss.StandardGpuResources() for _ in range(ngpu)]
        options = faiss.GpuMultipleClonerOptions()
        options.shard = ngpu > 1
        options.useFloat16 = True  # flat storage / PQ lookup tables: re-scored exactly after
        placed = []
        for n, shard in enumerate(shards):
            inner = _inner(shard)
            rows = shard.id_end - shard.id_start
            # a flat shard is memory-mapped: clone an in-memory copy (kept alive while cloning:
            # the id map owns the index inside it)
            holder: Any = read_unmapped(n) if _is_flat(inner) else shard.index
            source = faiss.downcast_index(holder.index)
            try:
                gpu = faiss.index_cpu_to_gpu_multiple_py(
                    resources, source, options, list(range(ngpu))
                )
                placed.append(PlacedShard(gpu, shard.id_start, rows, on_gpu=True))
            except RuntimeError as exc:
                logger.warning(
                    "shard %d (%s) stays on the CPU: the GPU cannot hold it (%s); "
                    "fix: rebuild with a GPU-supported factory (Flat, or IVF-PQ with "
                    "at most 96 code bytes, e.g. IVF1024,PQ64) to search it there",
                    n,
                    type(inner).__name__,
                    str(exc).splitlines()[0][:200],
                )
                placed.append(PlacedShard(inner, shard.id_start, rows, on_gpu=False))
            del source, holder
        on = sum(p.on_gpu for p in placed)
        logger.info(
            "search on %d GPU(s): %d of %d shards placed (float16 first stage, exact re-score)",
            ngpu,
            on,
            len(placed),
        )
        return cls(placed, torch.device("cuda"), resources)

    @classmethod
    def on_torch(
        cls, shards: Sequence[ShardLike], devices: Sequence[torch.device], dtype: torch.dtype
    ) -> ShardPlacement:
        """Flat shards as torch matrices of ``dtype`` (shard ``n`` on ``devices[n % count]``),
        compressed ones kept on the CPU; the re-score on ``devices[0]``."""
        placed = []
        kept = 0
        for n, shard in enumerate(shards):
            inner = _inner(shard)
            rows = shard.id_end - shard.id_start
            if _is_flat(inner):
                device = devices[n % len(devices)]
                matrix = TorchFlatShard(inner.reconstruct_n(0, rows), device, dtype)
                placed.append(PlacedShard(matrix, shard.id_start, rows, on_gpu=True))
            else:
                kept += 1
                placed.append(PlacedShard(inner, shard.id_start, rows, on_gpu=False))
        if kept:
            logger.warning(
                "%d compressed shard(s) stay on the CPU: without the FAISS GPU build only flat "
                "shards are placed on the GPU; fix: install the FAISS GPU build to search them "
                "there",
                kept,
            )
        placement = cls(placed, devices[0])
        logger.info(
            "search on %d torch device(s) (%s): %d of %d shards placed, %s",
            len(devices),
            dtype,
            len(placed) - kept,
            len(placed),
            "an exact scan" if placement.exact else "candidates re-scored exactly",
        )
        return placement

    @classmethod
    def emulated(
        cls, shards: Sequence[ShardLike], flat_vectors: Callable[[int], np.ndarray]
    ) -> ShardPlacement:
        """The GPU path with its first stage on the CPU: flat shards as float16 copies
        (``flat_vectors(n)``: shard ``n``'s ``[rows, D]`` vectors), compressed ones as they are,
        the re-score on torch's CPU device (for tests without a GPU)."""
        import faiss

        placed = []
        for n, shard in enumerate(shards):
            inner = _inner(shard)
            if _is_flat(inner):
                half = faiss.IndexScalarQuantizer(
                    inner.d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
                )
                half.add(np.ascontiguousarray(flat_vectors(n), dtype=np.float32))
                inner = half
            placed.append(
                PlacedShard(inner, shard.id_start, shard.id_end - shard.id_start, on_gpu=False)
            )
        return cls(placed, torch.device("cpu"))

    @property
    def gpu_shards(self) -> int:
        return sum(p.on_gpu for p in self.shards)

    def can_serve(self, k: int, filtered: bool) -> bool:
        """Whether :meth:`search` serves a search for ``k`` results (``filtered``: through a
        FAISS id selector, which not every GPU index supports)."""
        return not filtered and 1 <= k <= self.max_k

    def set_nprobe(self, nprobe: int) -> None:
        """IVF lists probed per query by the shards on the GPU (at most 2,048)."""
        import faiss

        for shard in self.shards:
            if shard.on_gpu and not isinstance(shard.index, TorchFlatShard):
                try:
                    faiss.GpuParameterSpace().set_index_parameter(
                        shard.index, "nprobe", min(nprobe, GPU_MAX_K)
                    )
                except RuntimeError:  # not an IVF index
                    pass

    def fetch(self, k: int, rerank_factor: int) -> int:
        """First-stage candidates per query: ``k · rerank_factor``, within FAISS GPU's limit
        (``k`` when the first stage is exact)."""
        if self.exact:
            return k
        return max(k, min(k * rerank_factor, self.max_k))

    def search(
        self,
        q: np.ndarray,
        k: int,
        exact_rows: Callable[[np.ndarray], np.ndarray],
        rerank_factor: int = 10,
    ) -> SearchResult:
        """Top-``k`` by exact score: the first stage of every shard, merged to
        ``fetch(k, rerank_factor)`` candidates, re-scored exactly (``exact_rows(ids)``: their
        stored vectors ``[n, D]``)."""
        fetch = self.fetch(k, rerank_factor)
        parts = []
        for shard in self.shards:
            kk = min(fetch, shard.rows)
            if kk <= 0:
                continue
            scores, rows = shard.index.search(q, kk)
            parts.append((scores, np.where(rows >= 0, rows + shard.id_start, -1)))
        if not parts:
            return SearchResult.empty(q.shape[0], k)
        candidates = merge_topk(parts, fetch)
        if self.exact:
            return candidates
        return rescore(q, candidates.ids, exact_rows, k, self.device)


def rescore(
    q: np.ndarray,
    ids: np.ndarray,
    exact_rows: Callable[[np.ndarray], np.ndarray],
    k: int,
    device: torch.device,
) -> SearchResult:
    """The top-``k`` of candidates ``ids`` ``[nq, c]`` (``-1``: none) by their exact inner
    product with ``q`` ``[nq, D]``, computed in float64 with torch on ``device``."""
    valid = ids >= 0
    unique = np.unique(ids[valid])
    if len(unique) == 0:
        return SearchResult.empty(q.shape[0], k)
    vectors = torch.from_numpy(np.ascontiguousarray(exact_rows(unique), dtype=np.float32))
    queries = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    # float32 across (half the bytes of float64), widened where the product runs
    vectors = vectors.to(device).to(torch.float64)  # [u, D]
    scores = queries.to(device).to(torch.float64) @ vectors.T  # [nq, u]
    columns = torch.from_numpy(np.searchsorted(unique, np.where(valid, ids, unique[0])))
    exact = torch.gather(scores, 1, columns.to(device)).cpu().numpy()  # [nq, c]
    return merge_topk([(np.where(valid, exact, -np.inf), np.where(valid, ids, -1))], k)
