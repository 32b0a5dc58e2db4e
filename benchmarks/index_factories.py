"""FAISS factories on a real index: first-stage recall, end quality, latency, memory, disk.

The stored vectors of a built index (its exact vectors, whatever its factory) are written again
as ``Flat``, ``SQ8``, ``SQfp16``, ``IVF{nlist},PQ{m}`` and the build's ``auto`` choice (trained
and recorded as the builder does): the same shards, store, projector and Hessian, one
quantizer trained on a seeded sample, exact re-rank vectors as float16 memory maps. Each copy
is served by the real engine (:class:`AttributionEngine`, in a process of its own, so memory
is its own) on the corpus's ground-truth queries (the fact questions and backdoor prompts of
``ground_truth.json``, loaded as the quality benchmarks load them). Per factory:

* first-stage recall@C: the share of the flat copy's first-stage top C (C = the ranking's
  candidates, 200) that the factory's first stage returns;
* end quality of the default two-stage ranking: fact recall@1/@10 and backdoor AUPRC, computed by
  the quality benchmarks' metric code; the rows the first stage did not return keep the exact
  first-stage order below the candidates, as the quality benchmarks rank them;
* engine latency (tokenise, gradient, search, re-score, fetch, verbatim spans) at concurrency 1
  (one request per call) and 32 (one micro-batch of 32, as the service batches concurrent
  requests), warm, and cold: the page cache of the copy's shard and vector files dropped before
  every call (``posix_fadvise``, :mod:`benchmarks.page_cache`);
* memory: RSS growth when the index is opened, shard and vector pages resident after the warm
  run, bytes per example on disk.

    PYTHONPATH=indexer:service:client .venv/bin/python -m benchmarks.index_factories \\
        --index demo/index --model demo/model --corpus demo/corpus --nlist 32 --nprobe 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One factory to compare, with the probes and training sample it runs with."""

    label: str
    factory: str
    nprobe: int
    train_examples: int
    choice: dict[str, Any] | None = None
    """The ``auto`` rule's record (it trains without FAISS's polysemous step); ``None``: an
    explicit factory, trained as the builder trains one."""


def auto_variant(n: int, dim: int, memory_bytes: int | None, shard_rows: int) -> Variant:
    """The indexer's ``auto`` choice for this index (within ``memory_bytes``, else the build's
    default budget)."""
    from tributary_indexer.build.factory_choice import choose_factory

    budget = {"memory_bytes": memory_bytes} if memory_bytes else {}
    choice = choose_factory(n, dim, shard_rows=shard_rows, **budget)
    nprobe = choice.nprobe or 1
    label = f"auto ({choice.factory})"
    return Variant(label, choice.factory, nprobe, choice.train_examples, choice.to_dict())


def sample_facts(workload: Any, limit: int | None) -> Any:
    """``workload`` with its fact questions evenly sampled down to ``limit`` (every trigger
    prompt kept): the score matrices are ``[queries, N]``, so a large corpus asks a sample."""
    facts = workload.of_kind("fact")
    if limit is None or limit >= len(facts):
        return workload
    kept = {facts[i * len(facts) // limit].query_id for i in range(limit)}
    queries = [q for q in workload.queries if q.kind != "fact" or q.query_id in kept]
    return dataclasses.replace(workload, queries=queries)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- one copy, served
def ranking_queries(engine: Any, prepared: list[Any]) -> list[Any]:
    """The ranking's queries of ``prepared`` requests, computed as ``AttributionEngine.attribute``
    computes them (one forward/backward per 32)."""
    import torch
    from tributary_indexer.data.batching import collate

    out = []
    ranking = engine.index.ranking
    for start in range(0, len(prepared), 32):
        part = prepared[start : start + 32]
        batch = collate([q.tokens.example for q in part], engine.pad_id)
        emitting = batch.emitting_mask if ranking.positions else None
        grads = engine.computer.compute(batch, positions=emitting)
        terms, owner = grads.position_terms, None
        if emitting is not None and terms is not None:
            owner = emitting.nonzero()[:, 0].to(terms.device)
        reference = engine.index.reference(terms.device if terms is not None else "cpu")
        examples = [q.tokens.example for q in part]
        with torch.no_grad():
            out += ranking.queries(
                engine.index.space, grads.vectors, terms, owner, examples, reference
            )
    return out


def timed_calls(engine: Any, groups: list[list[dict]], cold: list[Path] | None) -> dict:
    """Wall ms of ``engine.attribute`` per group of requests (page cache of ``cold`` files dropped
    before each), and the median search + re-score ms the engine reports."""
    from tributary_client import types

    from benchmarks.page_cache import drop_pages

    walls, stages = [], []
    for group in groups:
        if cold:
            drop_pages(cold)
        t0 = time.perf_counter()
        prepared = [engine.prepare(types.AttributionRequest(**r)) for r in group]
        answers = engine.attribute(prepared)
        walls.append((time.perf_counter() - t0) * 1000)
        stages += [a.timings.search_ms + a.timings.rerank_ms for a in answers]
    return {
        "p50_ms": percentile(walls, 0.5),
        "p99_ms": percentile(walls, 0.99),
        "search_rerank_ms": statistics.median(stages),
        "calls": len(walls),
    }


def serve_copy(root: Path, args: argparse.Namespace) -> None:
    """The child process: open one copy, rank the workload, time the engine; write
    ``root/result.json`` and ``root/result.npz``."""
    import faiss
    import torch
    from tributary_client import types
    from tributary_indexer.query import search
    from tributary_indexer.query.index import AttributionIndex
    from tributary_service.loading import load_service
    from tributary_service.settings import ServiceSettings

    from benchmarks.page_cache import (
        drop_pages,
        mapped_resident_bytes,
        resident_fraction,
        rss_bytes,
    )

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    queries = json.loads((root.parent / "queries.json").read_text(encoding="utf-8"))
    base = rss_bytes()
    probe = AttributionIndex(root, verify_checksums=False, rerank_factor=args.rerank_factor)
    open_rss = rss_bytes() - base
    probe.close()
    del probe
    settings = ServiceSettings(
        index=root,
        model=args.model,
        device="cpu",
        nprobe=args.nprobe,
        rerank_factor=args.rerank_factor,
        verify_checksums=False,
    )
    engine = load_service(settings).engine
    index, ranking = engine.index, engine.index.ranking
    c = index.ranking_config.candidates
    asked = [types.AttributionRequest(**q, top_k=c, verbatim=False) for q in queries]
    ranked = ranking_queries(engine, [engine.prepare(r) for r in asked])
    vectors = np.stack([r.search.float().cpu().numpy() for r in ranked])
    found = []  # in micro-batches of 32: a compressed search gathers C × rerank factor rows each
    for s in range(0, len(ranked), 32):
        part = vectors[s : s + 32]
        found += search.search(index, part, [["helpful"]] * len(part), [c] * len(part))
    first = np.full((len(ranked), c), -1, np.int64)
    final_ids = np.full((len(ranked), c), -1, np.int64)
    final_scores = np.full((len(ranked), c), -np.inf)
    for q, (rq, hits) in enumerate(zip(ranked, found)):
        first[q, : len(hits)] = [h.example_id for h in hits]
        kept = search.rerank(index, ranking, rq, hits, c)
        final_ids[q, : len(kept)] = [h.example_id for h in kept]
        final_scores[q, : len(kept)] = [h.score for h in kept]
    np.savez(root / "result.npz", first=first, ids=final_ids, scores=final_scores, vectors=vectors)
    files = sorted(root.glob("shards/*.faiss")) + sorted(root.glob("vectors/*.npy"))
    plain = [{**queries[i % len(queries)]} for i in range(args.requests)]  # the service's defaults
    batches = [[plain[(b * 32 + i) % len(plain)] for i in range(32)] for b in range(args.batches)]
    timed_calls(engine, [[r] for r in plain[: min(8, len(plain))]], None)  # first-call costs
    result: dict[str, Any] = {"open_rss_bytes": open_rss}
    for label, cold in (("warm", None), ("cold", files)):
        if label == "warm":
            timed_calls(engine, [[r] for r in plain], None)
        result[f"c1_{label}"] = timed_calls(engine, [[r] for r in plain], cold)
        result[f"c32_{label}"] = timed_calls(engine, batches, cold)
        if label == "warm":
            result["mapped_resident_bytes"] = mapped_resident_bytes(
                [root / "shards", root / "vectors"]
            )
    drop_pages(files)
    result["resident_after_drop"] = max(resident_fraction(p) for p in files)
    (root / "result.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- comparison
def service_scores(ids: np.ndarray, scores: np.ndarray, first: np.ndarray) -> np.ndarray:
    """``[Q, N]`` scores ranked as the service ranks: the re-scored candidates (``ids``,
    ``scores`` ``[Q, C]``, all ``>= 0``) first, every other row below them in the order of the
    exact first-stage scores ``first`` ``[Q, N]`` (as the quality benchmarks rank them)."""
    q_n, n = first.shape
    out = np.empty((q_n, n))
    for q in range(q_n):
        order = np.argsort(-first[q], kind="stable")
        out[q, order] = -1.0 - np.arange(n) / n
        found = ids[q] >= 0
        out[q, ids[q][found]] = scores[q][found]
    return out


def overlap_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of the share of ``truth``'s ids (``-1``: none) that ``found`` holds."""
    shares = []
    for f, t in zip(found, truth):
        t = t[t >= 0]
        shares.append(len(np.intersect1d(f[f >= 0], t)) / max(1, len(t)))
    return float(np.mean(shares))


def quality(workload: Any, row_ids: np.ndarray, matrix: np.ndarray, name: str) -> dict[str, float]:
    """Fact recall@1/@10 and backdoor AUPRC of ``matrix`` ``[Q, N]`` (columns: example ids), by
    the quality benchmarks' own evaluation."""
    from benchmarks.quality.retrieval import Entry, evaluate

    rows = matrix[:, row_ids]  # columns in the workload's row order
    entry = [(Entry(name, "ours", lambda: rows), rows, 0.0)]
    fact = evaluate("fact_tracing", workload, entry)[0]
    backdoor = evaluate("backdoor", workload, entry)[0]
    return {
        "fact_recall@1": fact["recall@1"],
        "fact_recall@10": fact["recall@10"],
        "fact_mrr": fact["mrr"],
        "backdoor_auprc": backdoor["auprc"],
    }


def folder_name(factory: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in factory)


def markdown(rows: list[dict]) -> str:
    """The comparison table."""
    head = (
        "| factory | first-stage recall@C | fact R@1 | fact R@10 | backdoor AUPRC "
        "| c=1 p50 ms warm / cold | c=1 search+re-score ms warm / cold "
        "| c=32 batch p50 ms warm / cold | RSS at open MiB | shard+vector pages resident MiB "
        "| disk B/example (FAISS + exact) | train s | add s |"
    )
    lines = [head, "|---" * 13 + "|"]
    for r in rows:
        probes = f" · nprobe {r['nprobe']}" if "IVF" in r["factory"] else ""
        lines.append(
            f"| {r['factory']}{probes} | {r['first_stage_recall']:.3f} | {r['fact_recall@1']:.3f} "
            f"| {r['fact_recall@10']:.3f} | {r['backdoor_auprc']:.3f} "
            f"| {r['c1_warm']['p50_ms']:.1f} / {r['c1_cold']['p50_ms']:.1f} "
            f"| {r['c1_warm']['search_rerank_ms']:.1f} / {r['c1_cold']['search_rerank_ms']:.1f} "
            f"| {r['c32_warm']['p50_ms']:.0f} / {r['c32_cold']['p50_ms']:.0f} "
            f"| {r['open_rss_bytes'] / 2**20:.1f} | {r['mapped_resident_bytes'] / 2**20:.1f} "
            f"| {r['shard_bytes_per_example']:.0f} + {r['exact_bytes_per_example']:.0f} "
            f"| {r['train_s']:.1f} | {r['add_s']:.1f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--index", type=Path, default=ROOT / "demo" / "index")
    ap.add_argument("--model", type=Path, default=ROOT / "demo" / "model")
    ap.add_argument(
        "--corpus",
        type=Path,
        default=ROOT / "demo" / "corpus",
        help="the index's corpus, with ground_truth.json",
    )
    ap.add_argument(
        "--factories",
        nargs="+",
        default=None,
        help="FAISS factory strings, 'auto' for the indexer's rule "
        "[Flat SQ8 SQfp16 IVF{nlist},PQ{m} auto]; Flat is always run first",
    )
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists [auto's: near 4 sqrt(N)]")
    ap.add_argument("--pq-m", type=int, default=64, help="PQ sub-quantizers (bytes per vector)")
    ap.add_argument("--nprobe", type=int, default=32, help="IVF lists probed [the service's]")
    ap.add_argument("--rerank-factor", type=int, default=10, help="[the service's]")
    ap.add_argument("--train-examples", type=int, default=100_000)
    ap.add_argument(
        "--memory-bytes",
        type=int,
        default=None,
        help="memory budget given to the auto rule [the build's default]",
    )
    ap.add_argument(
        "--fact-queries",
        type=int,
        default=None,
        help="ask at most this many fact questions (evenly sampled) [all]",
    )
    ap.add_argument("--requests", type=int, default=64, help="timed calls at concurrency 1")
    ap.add_argument("--batches", type=int, default=4, help="timed micro-batches of 32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tributary-factories-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/index_factories.json")
    ap.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def variants(args: argparse.Namespace, n: int, dim: int, shard_rows: int) -> list[Variant]:
    """The factories to compare, ``Flat`` first, ``auto`` resolved (replacing the same
    explicit factory)."""
    from tributary_indexer.build.factory_choice import ivf_lists

    nlist = args.nlist or ivf_lists(shard_rows)
    wanted = args.factories or ["Flat", "SQ8", "SQfp16", f"IVF{nlist},PQ{args.pq_m}", "auto"]
    out = [Variant("Flat", "Flat", args.nprobe, 0)]
    for name in wanted:
        if name == "auto":
            chosen = auto_variant(n, dim, args.memory_bytes, shard_rows)
            if chosen.factory in [v.factory for v in out]:
                logger.info("auto chose %s, already compared", chosen.factory)
                out = [chosen if v.factory == chosen.factory else v for v in out]
            else:
                out.append(chosen)
        elif name != "Flat":
            out.append(Variant(name, name, args.nprobe, args.train_examples))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.serve is not None:
        serve_copy(args.serve, args)
        return []
    from tributary_indexer.data.example_store import ExampleStore
    from tributary_indexer.query.index import AttributionIndex

    from benchmarks.index_copy import shard_vectors, write_copy
    from benchmarks.quality.workload import load_workload

    workload = sample_facts(load_workload(args.model, args.corpus), args.fact_queries)
    src = AttributionIndex(args.index, verify_checksums=False)
    n, dim = src.n_examples, src.dim
    src.close()
    with ExampleStore(args.index / "examples.sqlite") as store:
        id_of = {ext: i for i, ext, _ in store.iter_identities(n)}
    missing = [d for d in workload.doc_ids if d not in id_of]
    if missing or len(workload.doc_ids) != n:
        raise SystemExit(
            f"{args.index} holds {n} examples, the corpus {len(workload.doc_ids)} "
            f"({len(missing)} not in the index); fix: pass the corpus it was built from"
        )
    row_ids = np.array([id_of[d] for d in workload.doc_ids], dtype=np.int64)
    args.workdir.mkdir(parents=True, exist_ok=True)
    queries = [{"prompt": q.prompt, "response": q.response} for q in workload.queries]
    (args.workdir / "queries.json").write_text(json.dumps(queries), encoding="utf-8")
    results, first_scores, flat_first = [], None, None
    passed = [
        "--model",
        str(args.model),
        "--threads",
        str(args.threads),
        "--rerank-factor",
        str(args.rerank_factor),
        "--requests",
        str(args.requests),
        "--batches",
        str(args.batches),
    ]
    env = dict(os.environ, OPENBLAS_THREAD_TIMEOUT="4")
    shard_rows = max(s.rows for s in src.manifest.shards)
    for variant in variants(args, n, dim, shard_rows):
        dst = args.workdir / folder_name(variant.label)
        logger.info("%s: writing %s", variant.label, dst)
        auto = variant.choice is not None
        build = write_copy(
            args.index,
            dst,
            variant.factory,
            variant.train_examples,
            polysemous=not auto,
            choice=variant.choice,
        )
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.index_factories",
            "--serve",
            str(dst),
            *passed,
            "--nprobe",
            str(variant.nprobe),
        ]
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        served = json.loads((dst / "result.json").read_text(encoding="utf-8"))
        arrays = np.load(dst / "result.npz")
        if first_scores is None:  # the flat copy: exact first-stage scores of every example
            flat = AttributionIndex(dst, verify_checksums=False)
            q64 = arrays["vectors"].astype(np.float64)
            first_scores = np.concatenate(
                [
                    q64 @ shard_vectors(flat, s).astype(np.float64).T
                    for s in range(len(flat.shards))
                ],
                axis=1,
            )
            flat.close()
            flat_first = arrays["first"]
        matrix = service_scores(arrays["ids"], arrays["scores"], first_scores)
        shard_bytes = sum(p.stat().st_size for p in dst.glob("shards/*.faiss"))
        exact_bytes = sum(p.stat().st_size for p in dst.glob("vectors/*.npy"))
        results.append(
            {
                "factory": variant.label,
                "nprobe": variant.nprobe,
                "train_examples": variant.train_examples,
                "first_stage_recall": overlap_recall(arrays["first"], flat_first),
                **quality(workload, row_ids, matrix, variant.label),
                **served,
                **build,
                "shard_bytes": shard_bytes,
                "exact_bytes": exact_bytes,
                "shard_bytes_per_example": shard_bytes / n,
                "exact_bytes_per_example": exact_bytes / n,
            }
        )
        logger.info("%s: %s", variant.label, json.dumps(results[-1]))
    table = markdown(results)
    candidates = int(arrays["first"].shape[1])
    print(
        f"# index factories — {n:,} examples × {dim} dims, C = {candidates} candidates, "
        f"rerank factor {args.rerank_factor}, {len(queries)} queries; "
        f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(table)
    meta = {
        "command": " ".join(
            [
                Path(sys.executable).name,
                "-m",
                "benchmarks.index_factories",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "index": str(args.index),
        "examples": n,
        "dim": dim,
        "candidates": candidates,
        "nprobe": args.nprobe,
        "rerank_factor": args.rerank_factor,
        "queries": len(queries),
        "exact_dtype": "float16",
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": results}, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
