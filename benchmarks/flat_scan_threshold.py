"""Where a flat scan stops being the cheap first stage: the measurements behind ``auto``.

Times one query's flat inner-product search (FAISS ``IndexFlatIP``, and the service's own
numpy scan of a memory-mapped shard) at a few sizes against IVF-PQ probing plus the exact
re-score of its candidates, at the dimension of the default build (RapidGrad K = 4,096), and
measures the first-stage recall@200 of IVF-PQ (with the exact re-score of ``10 × 200``
candidates) against the flat top-200 on synthetic vectors at a smaller dimension, per
``nprobe``. Writes ``benchmarks/results/flat_scan_threshold.json``.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/flat_scan_threshold.py

(``OMP_WAIT_POLICY=PASSIVE``: on a loaded 2-core machine, OpenMP's spinning barriers made the
training of PQ with many sub-quantizers crawl.) The recall is measured for the rule's ``m``
(``0.4·D`` sub-quantizers of 4 bits) of ``auto``'s fast-scan IVF-PQ.

Synthetic vectors: the timing does not depend on the values; the recall does, so two sets are
measured, a clustered one (256 unit-norm centres, offsets of norm 0.5, log-normal lengths) and
an isotropic Gaussian one (no structure at all, IVF's worst case).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tributary_indexer.build.factory_choice import (
    compressed_factory,
    ivf_lists,
    pq_subquantizers,
)

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "flat_scan_threshold.json"
NOISE = 0.5  # norm of a clustered vector's offset from its (unit-norm) centre


def _median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Around unit-norm centres, noise of norm ``noise``, log-normal lengths."""
    z = rng.integers(0, centres.shape[0], size=n)
    noise = rng.standard_normal((n, dim), dtype=np.float32) * (NOISE / np.sqrt(dim))
    return ((centres[z] + noise) * rng.lognormal(0.0, 0.5, size=(n, 1))).astype(np.float32)


def _trained_ivfpq(data: np.ndarray, nlist: int, m: int, niter: int, seed: int) -> faiss.Index:
    index = faiss.index_factory(
        data.shape[1], compressed_factory(nlist, m), faiss.METRIC_INNER_PRODUCT
    )
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = niter
    ivf.cp.seed = seed
    ivfpq = faiss.downcast_index(index)
    ivfpq.pq.cp.niter = niter
    rng = np.random.default_rng(seed)
    sample = data[rng.choice(data.shape[0], size=min(64 * nlist, data.shape[0]), replace=False)]
    index.train(sample)
    index.add(data)
    return index


def _time_size(data: np.ndarray, q: np.ndarray, nprobes: list[int], repeats: int) -> dict[str, Any]:
    """One size's row of :func:`timing`."""
    from tributary_indexer.query.index import topk_by_scan

    n, dim = data.shape
    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    row: dict[str, Any] = {"n": n, "dim": dim}
    row["flat_faiss_ms"] = _median_ms(lambda: flat.search(q, 200), repeats)
    row["flat_scan_ms"] = _median_ms(lambda: topk_by_scan(data, q, 200, 0), repeats)
    flat.reset()
    nlist, m = ivf_lists(n), pq_subquantizers(dim)
    t0 = time.perf_counter()
    ivfpq = _trained_ivfpq(data, nlist, m, niter=2, seed=0)  # timing only: 2 k-means rounds
    row["ivfpq"] = compressed_factory(nlist, m)
    row["ivfpq_build_s"] = round(time.perf_counter() - t0, 1)
    ivf = faiss.extract_index_ivf(ivfpq)

    def probe() -> None:
        _, ids = ivfpq.search(q, 2000)
        cand = np.sort(ids[0][ids[0] >= 0])
        exact = data[cand] @ q[0]
        np.argpartition(-exact, min(199, len(exact) - 1))

    for nprobe in nprobes:
        if nprobe <= nlist:
            ivf.nprobe = nprobe
            row[f"ivfpq_nprobe{nprobe}_rescored_ms"] = _median_ms(probe, repeats)
    return row


def timing(sizes: list[int], dim: int, nprobes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Milliseconds per single query: flat (FAISS, numpy scan) and IVF-PQ + exact re-score."""
    rng = np.random.default_rng(0)
    biggest = rng.standard_normal((max(sizes), dim), dtype=np.float32)
    q = rng.standard_normal((1, dim), dtype=np.float32)
    rows = []
    for n in sizes:
        rows.append(_time_size(biggest[:n], q, nprobes, repeats))
        logger.info("%s", rows[-1])
    return rows


def recall(
    n: int, dim: int, nprobes: list[int], n_queries: int, kind: str, m: int
) -> dict[str, Any]:
    """First-stage recall@200 of IVF-PQ (10 × 200 candidates re-scored exactly) vs flat top-200."""
    rng = np.random.default_rng(1)
    if kind == "clustered":
        centres = (rng.standard_normal((256, dim)) / np.sqrt(dim)).astype(np.float32)
        data = _clustered(n, dim, rng, centres)
        queries = _clustered(n_queries, dim, rng, centres)
    else:
        data = rng.standard_normal((n, dim), dtype=np.float32)
        queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    flat = faiss.IndexFlatIP(dim)
    flat.add(data)
    _, truth = flat.search(queries, 200)
    nlist = ivf_lists(n)
    index = _trained_ivfpq(data, nlist, m, niter=20, seed=0)
    ivf = faiss.extract_index_ivf(index)
    out: dict[str, Any] = {
        "kind": kind,
        "n": n,
        "dim": dim,
        "factory": compressed_factory(nlist, m),
        "queries": n_queries,
        "recall_at_200": {},
    }
    for nprobe in nprobes:
        if nprobe > nlist:
            continue
        ivf.nprobe = nprobe
        _, cand = index.search(queries, 2000)
        hits = []
        for i in range(n_queries):
            c = cand[i][cand[i] >= 0]
            exact = data[c].astype(np.float64) @ queries[i].astype(np.float64)
            top = c[np.argsort(-exact, kind="stable")[:200]]
            hits.append(len(np.intersect1d(top, truth[i])) / 200)
        out["recall_at_200"][nprobe] = round(float(np.mean(hits)), 4)
    logger.info("%s", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 25_000, 50_000, 100_000, 200_000]
    )
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 64, 128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--recall-n", type=int, default=50_000)
    parser.add_argument("--recall-dim", type=int, default=256)
    parser.add_argument("--recall-queries", type=int, default=100)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = {
        "machine": "2 CPU cores, no GPU",
        "date": time.strftime("%Y-%m-%d"),
        "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "timing_ms_one_query": timing(args.sizes, args.dim, args.nprobes, args.repeats),
        "recall": [
            recall(args.recall_n, args.recall_dim, args.nprobes, args.recall_queries, kind, m)
            for kind in ("clustered", "isotropic")
            for m in (pq_subquantizers(args.recall_dim),)
        ],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
