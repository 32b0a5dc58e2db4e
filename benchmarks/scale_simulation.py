"""Simulated index scale: IVF-PQ build, memory, latency and first-stage recall from 10k to 10M.

Vectors are drawn with a real index's spectrum (:class:`SpectrumSampler`, fitted to a sample of
its stored vectors; at a smaller ``--dim``, to a fixed random projection of them) and streamed
one shard at a time (never all ``N`` in memory) into a loadable index
(:class:`~benchmarks.index_copy.IndexWriter`: the real index's frame, the IVF-PQ factory of the
indexer's ``auto`` rule with its flat branch off, float16 exact re-rank vectors, a store of
copies of one real row). Per size ``N``:

* train and add seconds (and the generation, exact-scan and write seconds beside them);
* memory of the opened index (RSS growth of ``AttributionIndex``, of its FAISS shards alone, and
  the shard and vector file pages resident after the warm run) and its bytes on disk; the
  index memory the target bounds is the larger of the RSS growth at open and the shard files'
  bytes (FAISS maps IVF lists from the file, so they become resident as they are probed);
* first-stage latency (``AttributionIndex.search``: FAISS over every shard, exact re-score of
  the candidates from the float16 memory maps, merge; measured once the build's writes have
  reached the disk) for C = the ranking's candidates, at
  concurrency 1 (one query a call) and 32 (a micro-batch of 32), warm, and cold (the page
  cache of the shard and vector files dropped before every call);
* first-stage recall@C against the exact top C of every query of a sample, computed in float64
  by streaming each shard through a running top-C as it is written;
* the flat index's bytes (``4·N·D``) and its bandwidth floor (those bytes ÷ the memory bandwidth
  measured with numpy here), and the two ratios the scale targets bound at 10M:
  latency(c=1) ÷ floor ≤ 0.1 and index memory ÷ flat bytes ≤ 0.1.

The span-gated second stage (token-wise re-score) needs real queries' token vectors and is not
part of this simulation; ``benchmarks/index_factories.py`` measures it on a real index.

    PYTHONPATH=indexer:service:client .venv/bin/python -m benchmarks.scale_simulation \\
        --index demo/index --sizes 10000 100000 1000000 10000000 \\
        --queries /tmp/tributary-factories-bench/Flat/result.npz
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.index_factories import overlap_recall, percentile
from benchmarks.synthetic_vectors import SpectrumSampler, StreamedTopK, random_projection

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


def pick_dim(real_dim: int, largest: int, free_bytes: int) -> int:
    """The real dimension, or the largest power of two below it whose float16 exact vectors
    for ``largest`` examples fill at most 80% of ``free_bytes``."""
    dim = real_dim
    while dim > 16 and largest * dim * 2 > 0.8 * free_bytes:
        dim = 1 << ((dim - 1).bit_length() - 1)  # the power of two below it
    return dim


def ivf_pq(n: int, dim: int, shard_rows: int, args: argparse.Namespace) -> dict[str, Any]:
    """The IVF-PQ factory for ``n`` examples: the ``auto`` rule's with its flat branch off (the
    rule's own choice is recorded beside it); ``--factory`` replaces the string (its
    ``{nlist}`` by the rule's lists)."""
    from tributary_indexer.build.factory_choice import choose_factory

    rows = min(shard_rows, n)
    budget = {"memory_bytes": args.memory_bytes} if args.memory_bytes else {}  # else the build's
    auto = choose_factory(n, dim, shard_rows=rows, **budget).factory
    forced = choose_factory(n, dim, shard_rows=rows, flat_max_examples=0, **budget)
    if forced.nprobe is None:
        raise SystemExit(f"auto keeps {n} x {dim} flat even so ({forced.reason})")
    factory, nprobe, train = forced.factory, forced.nprobe, forced.train_examples
    record = forced.to_dict()
    nlist = int(re.match(r"IVF(\d+)", factory).group(1))  # type: ignore[union-attr]
    return {
        "factory": args.factory.format(nlist=nlist) if args.factory else factory,
        "nprobe": args.nprobe or nprobe,
        "train_examples": min(train, args.train_examples),
        "auto": auto,
        "choice": None if args.factory else record,  # the rule's record: no polysemous training
    }


def real_sample(index_root: Path, rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """``[≤ rows, dim]`` evenly spaced stored vectors of the index (projected when ``dim`` is
    smaller than the index's, with :func:`random_projection` of ``seed``)."""
    from tributary_indexer.query.index import AttributionIndex
    from tributary_indexer.query.ranking import reference_rows

    index = AttributionIndex(index_root, verify_checksums=False)
    x = index.stored_vectors(reference_rows(index.n_examples, rows)).astype(np.float64)
    index.close()
    return x if dim == x.shape[1] else x @ random_projection(x.shape[1], dim, seed)


def query_pool(args: argparse.Namespace, sampler: SpectrumSampler, real_dim: int) -> np.ndarray:
    """``[P, D]`` float32 query vectors: ``--queries`` (real search vectors, projected like the
    sample) or draws of the sampler."""
    need = max(args.recall_queries, args.requests, 32 * args.batches)
    if args.queries is None:
        return sampler.draw(need, np.random.default_rng(1))
    data = np.load(args.queries)
    q = np.asarray(data["vectors"] if hasattr(data, "files") else data, dtype=np.float64)
    if q.shape[1] != real_dim:
        raise SystemExit(f"{args.queries} holds {q.shape[1]}-dim vectors, the index {real_dim}")
    if sampler.dim != real_dim:
        q = q @ random_projection(real_dim, sampler.dim, 0)
    return q.astype(np.float32)


def build(
    n: int, dst: Path, sampler: SpectrumSampler, queries: np.ndarray, choice: dict, args: Any
) -> tuple[dict[str, float], np.ndarray]:
    """Stream ``n`` draws into the index at ``dst``; return the stage seconds and the exact
    top-C ids of ``queries``."""
    from tributary_indexer.build.shards import train_index

    from benchmarks.index_copy import IndexWriter

    t: dict[str, float] = dict.fromkeys(("train_s", "generate_s", "add_s", "exact_s", "scan_s"), 0)
    sample = sampler.draw(choice["train_examples"], np.random.default_rng(7))
    t0 = time.perf_counter()
    polysemous = choice["choice"] is None  # as the builder: auto's IVF-PQ skips that step
    trained = train_index(sampler.dim, choice["factory"], sample, seed=0, polysemous=polysemous)
    t["train_s"] = time.perf_counter() - t0
    del sample
    t0 = time.perf_counter()
    writer = IndexWriter(
        args.index, dst, choice["factory"], trained, store_rows=n, choice=choice["choice"]
    )
    t["store_s"] = time.perf_counter() - t0
    top = StreamedTopK(queries, args.candidates)
    rng = np.random.default_rng(11)
    for start in range(0, n, args.shard_size):
        rows = min(args.shard_size, n - start)
        shard = np.empty((rows, sampler.dim), dtype=np.float32)
        for lo in range(0, rows, args.chunk_rows):
            hi = min(rows, lo + args.chunk_rows)
            t0 = time.perf_counter()
            shard[lo:hi] = sampler.draw(hi - lo, rng)
            t1 = time.perf_counter()
            top.add(shard[lo:hi], start + lo)
            t["generate_s"] += t1 - t0
            t["scan_s"] += time.perf_counter() - t1
        t0 = time.perf_counter()
        add = writer.add_shard(shard)
        t["add_s"] += add
        t["exact_s"] += time.perf_counter() - t0 - add  # the float16 exact file and checksums
    t0 = time.perf_counter()
    writer.finish()
    t["finish_s"] = time.perf_counter() - t0
    return t, top.result()[1]


def measure(root: Path, args: argparse.Namespace) -> None:
    """The child process: open the index at ``root``, time its searches, write
    ``root/measured.json`` and the recall queries' first-stage ids to ``root/found.npy``."""
    import faiss
    import torch
    from tributary_indexer.build.shards import read_shard
    from tributary_indexer.query.index import AttributionIndex

    from benchmarks.page_cache import drop_pages, mapped_resident_bytes, rss_bytes

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    pool = np.load(root.parent / "queries.npy")
    base = rss_bytes()
    index = AttributionIndex(root, verify_checksums=False, rerank_factor=args.rerank_factor)
    index.set_nprobe(args.nprobe)
    out: dict[str, Any] = {"open_rss_bytes": rss_bytes() - base}
    base = rss_bytes()  # the FAISS shards alone: read them again (the first copy stays held)
    alone = [read_shard(p) for p in sorted(root.glob("shards/*.faiss"))]
    out["faiss_rss_bytes"] = rss_bytes() - base
    del alone
    c = args.candidates

    def first_stage(name: str) -> None:  # the recall queries' first stage, for the parent
        q = pool[: args.recall_queries]
        found = [index.search(q[s : s + 32], c).ids for s in range(0, len(q), 32)]
        np.save(root / f"{name}.npy", np.concatenate(found))

    first_stage("found")
    files = sorted(root.glob("shards/*.faiss")) + sorted(root.glob("vectors/*.npy"))
    singles = [pool[i % len(pool)][None] for i in range(args.requests)]
    batches = [pool[(b * 32 + np.arange(32)) % len(pool)] for b in range(args.batches)]
    for q in singles:  # warm-up
        index.search(q, c)
    for label, cold in (("warm", False), ("cold", True)):
        for name, calls in (("c1", singles), ("c32", batches)):
            if cold and args.cold_requests is not None:
                calls = calls[: args.cold_requests]  # a cold call at 10M takes seconds
            walls = []
            for q in calls:
                if cold:
                    drop_pages(files)
                t0 = time.perf_counter()
                index.search(q, c)
                walls.append((time.perf_counter() - t0) * 1000)
            out[f"{name}_{label}"] = {
                "p50_ms": percentile(walls, 0.5),
                "p99_ms": percentile(walls, 0.99),
                "calls": len(walls),
            }
        if not cold:
            out["warm_rss_bytes"] = rss_bytes() - base
            for part in ("shards", "vectors"):  # file-backed pages the warm run touched
                out[f"{part}_resident_bytes"] = mapped_resident_bytes([root / part])
    out["sweep_ms"] = {}
    for probes in args.sweep or []:  # recall and warm latency at other nprobe values
        index.set_nprobe(probes)
        first_stage(f"found-{probes}")
        walls = []
        for q in singles[:16]:
            t0 = time.perf_counter()
            index.search(q, c)
            walls.append((time.perf_counter() - t0) * 1000)
        out["sweep_ms"][str(probes)] = percentile(walls, 0.5)
    (root / "measured.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


def estimate(measured: dict[str, Any], target: int) -> float:
    """Seconds a run at ``target`` examples would take, from a measured run's per-row rates
    (training costs the same; the searches' cost grows with the number of shards)."""
    n = measured["examples"]
    per_row = sum(
        measured[k] for k in ("generate_s", "add_s", "exact_s", "scan_s", "store_s", "finish_s")
    )
    return float(measured["train_s"] + per_row * target / n + measured["measure_s"] * target / n)


def plot(rows: list[dict], dim: int, path: Path) -> None:
    """Latency and memory against N, log-log, with the flat index's floor and bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["examples"] for r in rows]
    fig, (lat, mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    lat.loglog(n, [r["c1_warm"]["p50_ms"] for r in rows], "o-", label="IVF-PQ c=1 warm p50")
    lat.loglog(n, [r["c1_cold"]["p50_ms"] for r in rows], "o--", label="IVF-PQ c=1 cold p50")
    lat.loglog(n, [r["c32_warm"]["p50_ms"] for r in rows], "s-", label="IVF-PQ c=32 batch p50")
    lat.loglog(n, [r["flat_floor_ms"] for r in rows], "k-", label="flat bandwidth floor")
    lat.loglog(n, [0.1 * r["flat_floor_ms"] for r in rows], "k:", label="0.1 × floor")
    lat.set(xlabel="examples N", ylabel="first-stage latency, ms", title=f"latency (D = {dim})")
    mem.loglog(n, [r["open_rss_bytes"] / 2**20 for r in rows], "o-", label="index RSS at open")
    mem.loglog(n, [r["faiss_rss_bytes"] / 2**20 for r in rows], "o--", label="FAISS shards RSS")
    mem.loglog(n, [r["shard_bytes"] / 2**20 for r in rows], "s-", label="FAISS shard bytes")
    mem.loglog(n, [r["exact_bytes"] / 2**20 for r in rows], "^-", label="float16 exact (disk)")
    mem.loglog(n, [r["flat_bytes"] / 2**20 for r in rows], "k-", label="flat index bytes")
    mem.loglog(n, [0.1 * r["flat_bytes"] / 2**20 for r in rows], "k:", label="0.1 × flat")
    mem.set(xlabel="examples N", ylabel="MiB", title=f"memory (D = {dim})")
    for ax in (lat, mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from tributary_indexer.config import BuildConfig, RankingConfig

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--index",
        type=Path,
        default=ROOT / "demo" / "index",
        help="the real index whose spectrum (and frame) the simulation uses",
    )
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000]
    )
    ap.add_argument(
        "--dim",
        type=int,
        default=None,
        help="simulated dimension [the index's, or the largest power of two whose "
        "float16 exact vectors at the largest size fit 80%% of the free disk]",
    )
    ap.add_argument(
        "--sample-rows",
        type=int,
        default=20_000,
        help="stored vectors the spectrum is estimated from",
    )
    ap.add_argument(
        "--queries",
        type=Path,
        default=None,
        help="real query vectors (.npy, or .npz with 'vectors', e.g. an "
        "index_factories result.npz) [draws of the same spectrum]",
    )
    ap.add_argument("--recall-queries", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=RankingConfig.candidates)
    ap.add_argument("--shard-size", type=int, default=BuildConfig.shard_size)
    ap.add_argument("--chunk-rows", type=int, default=10_000, help="rows drawn at a time")
    ap.add_argument(
        "--factory",
        default=None,
        help="FAISS factory instead of the rule's; {nlist} is the rule's lists "
        "(e.g. 'IVF{nlist},PQ64np')",
    )
    ap.add_argument("--nprobe", type=int, default=None, help="override the rule's nprobe")
    ap.add_argument("--rerank-factor", type=int, default=10, help="[the service's]")
    ap.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=None,
        help="also the recall and warm c=1 latency at these nprobe values",
    )
    ap.add_argument("--train-examples", type=int, default=BuildConfig.train_examples)
    ap.add_argument(
        "--memory-bytes",
        type=int,
        default=None,
        help="memory budget given to the auto rule [this machine's RAM]",
    )
    ap.add_argument("--requests", type=int, default=64, help="timed calls at concurrency 1")
    ap.add_argument("--batches", type=int, default=4, help="timed micro-batches of 32")
    ap.add_argument(
        "--cold-requests",
        type=int,
        default=None,
        help="timed cold calls at concurrency 1 and cold micro-batches, each at most this many "
        "[--requests and --batches]",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tributary-scale-bench"))
    ap.add_argument("--keep", action="store_true", help="keep each size's index directory")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/scale_simulation.json")
    ap.add_argument("--figure", type=Path, default=ROOT / "benchmarks/figures/scale_simulation.png")
    ap.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def markdown(rows: list[dict], dim: int) -> str:
    """The per-size table."""
    lines = [
        f"| N | factory · nprobe | auto's choice | train s | add s | RSS at open MiB (FAISS) "
        "| shard MiB "
        f"| flat MiB (4·N·{dim}) | memory ÷ flat | c=1 p50 ms warm / cold | c=32 p50 ms warm "
        "/ cold | flat floor ms | c=1 ÷ floor | recall@C |",
        "|---" * 14 + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['examples']:,} | {r['factory']} · {r['nprobe']} | {r['auto']} "
            f"| {r['train_s']:.1f} | {r['add_s']:.1f} | {r['open_rss_bytes'] / 2**20:.1f} "
            f"({r['faiss_rss_bytes'] / 2**20:.1f}) "
            f"| {r['shard_bytes'] / 2**20:.1f} | {r['flat_bytes'] / 2**20:.0f} "
            f"| {r['memory_ratio']:.3f} "
            f"| {r['c1_warm']['p50_ms']:.1f} / {r['c1_cold']['p50_ms']:.1f} "
            f"| {r['c32_warm']['p50_ms']:.0f} / {r['c32_cold']['p50_ms']:.0f} "
            f"| {r['flat_floor_ms']:.1f} | {r['latency_ratio']:.2f} | {r['recall']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.measure is not None:
        measure(args.measure, args)
        return []
    from benchmarks.service_latency import memory_bandwidth_gbs

    args.workdir.mkdir(parents=True, exist_ok=True)
    real_dim = json.loads((args.index / "manifest.json").read_text(encoding="utf-8"))["dim"]
    free = shutil.disk_usage(args.workdir).free
    dim = args.dim or pick_dim(real_dim, max(args.sizes), free)
    sampler = SpectrumSampler(real_sample(args.index, args.sample_rows, dim))
    spectrum = sampler.describe()
    logger.info("spectrum at D = %d (index D = %d): %s", dim, real_dim, spectrum)
    pool = query_pool(args, sampler, real_dim)
    np.save(args.workdir / "queries.npy", pool)
    bandwidth = memory_bandwidth_gbs()
    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4")
    rows: list[dict] = []
    for n in sorted(args.sizes):
        choice = ivf_pq(n, dim, args.shard_size, args)
        need = n * (2 * dim + 64 + 600)  # exact float16 + codes and ids + a store row, roughly
        free = shutil.disk_usage(args.workdir).free
        if need > 0.95 * free:
            raise SystemExit(
                f"N={n:,} at D={dim} needs about {need / 1e9:.0f} GB, {free / 1e9:.0f}"
                " GB are free; fix: pass a smaller --dim or free disk space"
            )
        dst = args.workdir / f"n{n}"
        logger.info(
            "N=%d: %s, nprobe %d (auto: %s)", n, choice["factory"], choice["nprobe"], choice["auto"]
        )
        stages, exact = build(n, dst, sampler, pool[: args.recall_queries], choice, args)
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.scale_simulation",
            "--measure",
            str(dst),
            "--nprobe",
            str(choice["nprobe"]),
            "--candidates",
            str(args.candidates),
            "--rerank-factor",
            str(args.rerank_factor),
            "--requests",
            str(args.requests),
            "--batches",
            str(args.batches),
            *(["--cold-requests", str(args.cold_requests)] if args.cold_requests else []),
            "--threads",
            str(args.threads),
            "--recall-queries",
            str(args.recall_queries),
            "--index",
            str(args.index),
            "--sweep",
            *map(str, args.sweep or []),
        ]
        os.sync()  # the build's writes reach the disk first: a writeback slows the searches
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        measured = json.loads((dst / "measured.json").read_text(encoding="utf-8"))
        flat_bytes = 4 * n * dim
        row = {
            "examples": n,
            **choice,
            **stages,
            **measured,
            "measure_s": time.perf_counter() - t0,
            "recall": overlap_recall(np.load(dst / "found.npy"), exact),
            "shard_bytes": sum(p.stat().st_size for p in dst.glob("shards/*.faiss")),
            "exact_bytes": sum(p.stat().st_size for p in dst.glob("vectors/*.npy")),
            "flat_bytes": flat_bytes,
            "flat_floor_ms": flat_bytes / (bandwidth * 1e9) * 1000,
        }
        row["sweep"] = [
            {
                "nprobe": p,
                "recall": overlap_recall(np.load(dst / f"found-{p}.npy"), exact),
                "c1_warm_p50_ms": measured["sweep_ms"][str(p)],
            }
            for p in args.sweep or []
        ]
        row["index_memory_bytes"] = max(row["open_rss_bytes"], row["shard_bytes"])
        row["memory_ratio"] = row["index_memory_bytes"] / flat_bytes
        row["latency_ratio"] = row["c1_warm"]["p50_ms"] / row["flat_floor_ms"]
        rows.append(row)
        logger.info("N=%d: %s", n, json.dumps(row))
        if not args.keep:
            shutil.rmtree(dst)
    largest = rows[-1]
    estimates = {str(s): estimate(largest, s) for s in (1_000_000, 10_000_000)}
    print(
        f"# scale simulation — D = {dim} (index D = {real_dim}; spectrum of "
        f"{int(spectrum['rank'])} directions, effective rank {spectrum['effective_rank']:.0f}), "
        f"C = {args.candidates}, queries: {args.queries or 'draws of the spectrum'}; "
        f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, memory "
        f"bandwidth {bandwidth:.1f} GB/s, {time.strftime('%Y-%m-%d')}"
    )
    print(markdown(rows, dim))
    for r in rows:
        points = [
            f"{p['nprobe']}: {p['recall']:.3f}, {p['c1_warm_p50_ms']:.1f} ms" for p in r["sweep"]
        ]
        print(f"N = {r['examples']:,}, nprobe: recall@C, c=1 warm p50 — " + "; ".join(points))
    for size, seconds in estimates.items():
        print(
            f"estimated wall at N = {int(size):,} from the N = {largest['examples']:,} rates: "
            f"{seconds / 3600:.1f} h"
        )
    meta = {
        "command": " ".join(
            [
                Path(sys.executable).name,
                "-m",
                "benchmarks.scale_simulation",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "index": str(args.index),
        "index_dim": real_dim,
        "dim": dim,
        "spectrum": spectrum,
        "queries": str(args.queries or "draws of the spectrum"),
        "candidates": args.candidates,
        "shard_size": args.shard_size,
        "rerank_factor": args.rerank_factor,
        "bandwidth_gbs": bandwidth,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "estimated_seconds": estimates,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    plot(rows, dim, args.figure)
    return rows


if __name__ == "__main__":
    main()
