"""Service latency and throughput: p50/p99 and requests/s at concurrency 1, 8, 32, per stage.

Two indexes behind a real ``tributary serve`` on loopback: a real one (a demo-size GPT-2 with
random weights, a generated corpus of ``--examples`` documents, RapidGrad to ``--dim`` dims) and
the same index with its shards replaced by ``--big`` synthetic vectors (real FAISS files, a real
SQLite store). The floor at concurrency 1 is one forward+backward of the request (measured
in-process) plus one scan of the index at the measured memory bandwidth.

    .venv/bin/python benchmarks/service_latency.py                      # 10k real + 1M synthetic
    .venv/bin/python benchmarks/service_latency.py --big 0 --requests 64  # quick

``--no-verbatim`` asks without verbatim evidence (the request's ``"verbatim": false``), to time
the same work as a tree that has none; ``--out FILE`` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "indexer")]

from tributary_indexer.config import RANKINGS, BuildConfig  # noqa: E402

from benchmarks.index_build import save_model, write_corpus  # noqa: E402

QUERY = {
    "prompt": "Record 17: which lantern goes to the north harbour?",
    "response": " The copper lantern goes to the north harbour market.",
}


def memory_bandwidth_gbs() -> float:
    """Best of 7 all-core streaming reads of 512 MiB (a float32 matrix-vector product, the scan's
    own kernel): the floor must be one the hardware can reach, so take the fastest pass."""
    m = np.ones((512 * 2**20 // 4 // 1024, 1024), dtype=np.float32)  # [131072, 1024]
    v = np.ones(1024, dtype=np.float32)
    m @ v  # fault the pages in
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        m @ v
        best = min(best, time.perf_counter() - t0)
    return m.nbytes / best / 1e9


def build_real(work: Path, examples: int, dim: int) -> tuple[Path, Path]:
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    model, corpus, out = work / "model", work / "corpus.jsonl", work / "index-real"
    if not model.exists():
        save_model("tiny", model)
    if not out.exists():
        write_corpus(corpus, examples, 30)
        IndexBuilder(
            BuildConfig(
                model=str(model),
                corpus=[str(corpus)],
                rapidgrad_k=dim,
                progress=False,
                shard_size=50_000,
            ),
            out,
        ).build()
    return out, model


def build_synthetic(real: Path, work: Path, rows: int, shard_rows: int = 100_000) -> Path:
    """Same manifest, projector and Hessian; ``rows`` random unit vectors in real FAISS shards."""
    from benchmarks.index_copy import IndexWriter

    out = work / "index-big"
    if (out / "manifest.json").exists():
        return out
    dim = json.loads((real / "manifest.json").read_text())["dim"]
    writer = IndexWriter(real, out, "Flat", store_rows=rows)
    rng = np.random.default_rng(0)
    for start in range(0, rows, shard_rows):
        count = min(shard_rows, rows - start)
        vectors = rng.standard_normal((count, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        writer.add_shard(vectors)
    writer.finish()
    return out


def gradient_floor_ms(model_dir: Path, index: Path) -> float:
    """One forward+backward of the benchmark query alone, in-process (median of 20)."""
    import torch
    from tributary_indexer.build.manifest import Manifest
    from tributary_indexer.data.batching import collate
    from tributary_indexer.data.tokenization import tokenize_query
    from tributary_indexer.gradients.computer import GradientComputer
    from tributary_indexer.gradients.module_selection import select_modules
    from tributary_indexer.gradients.projector import LoGraProjector
    from tributary_indexer.model_loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(model_dir, torch.device("cpu"))
    tok = load_tokenizer(model_dir)
    projector = LoGraProjector.load(index / "projector.safetensors")
    modules = select_modules(
        model, include=[p.name for p in projector.projections]
    )  # as the service does
    example = tokenize_query(QUERY["prompt"], QUERY["response"], tok, 512).example
    with GradientComputer(model, modules, projector, objective=Manifest.load(index).objective) as c:
        batch = collate([example], tok.pad_token_id)
        c.compute(batch)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            c.compute(batch)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def drive(base: str, concurrency: int, requests: int, top_k: int, verbatim: bool = True) -> dict:
    import httpx

    extra = {} if verbatim else {"verbatim": False}
    client = httpx.Client(base_url=base, timeout=120)
    client.post("/v1/attributions", json={**QUERY, "top_k": top_k, **extra})  # warm

    def one(i: int) -> tuple[float, dict]:
        body = {
            "prompt": QUERY["prompt"].replace("17", str(i)),
            "response": QUERY["response"],
            "top_k": top_k,
            **extra,
        }
        t0 = time.perf_counter()
        r = client.post("/v1/attributions", json=body)
        r.raise_for_status()
        return (time.perf_counter() - t0) * 1000, r.json()["timings"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    stages = {k: statistics.median(r[1][k] for r in results) for k in results[0][1]}
    client.close()
    return {
        "concurrency": concurrency,
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "rps": requests / wall,
        "stages": stages,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument(
        "--ranking",
        choices=list(RANKINGS),
        default=None,
        help="serve with this ranking (TRIBUTARY_RANKING) [the indexer's current default: an index "
        "reused from --workdir may have been built when another ranking was the default]",
    )
    ap.add_argument(
        "--no-verbatim",
        dest="verbatim",
        action="store_false",
        help='ask without verbatim evidence ("verbatim": false in each request)',
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the rows to this JSON file")
    ap.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tributary-latency-bench"
    )
    args = ap.parse_args()
    from tests.service.live_server import live_server

    args.workdir.mkdir(parents=True, exist_ok=True)
    real, model = build_real(args.workdir, args.examples, args.dim)
    indexes = [("real", real, args.examples)]
    if args.big:
        indexes.append(("synthetic", build_synthetic(real, args.workdir, args.big), args.big))
    grad_ms = gradient_floor_ms(
        model, real
    )  # first: numpy's OpenBLAS threads spin for ~0.1 s after the bandwidth probe
    bandwidth = memory_bandwidth_gbs()
    print(
        f"# service latency — ranking {args.ranking or BuildConfig().ranking}, "
        f"{platform.machine()}, {os.cpu_count()} cores, memory bandwidth {bandwidth:.1f} GB/s "
        f"(best all-core float32 matvec), one forward+backward of the query {grad_ms:.1f} ms"
    )
    print(
        "| index | vectors × dim | concurrency | p50 ms | p99 ms | req/s | gradient | precondition "
        "| search | rerank | verbatim | fetch | floor ms | p50 ÷ floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows_out: list[dict] = []
    for name, path, rows in indexes:
        scan_ms = rows * args.dim * 4 / (bandwidth * 1e9) * 1000
        floor = grad_ms + scan_ms
        ranking = ("--ranking", args.ranking or BuildConfig().ranking)
        with live_server(
            path,
            model,
            args.workdir / f"state-{name}",
            "--no-verify-checksums",
            *ranking,
            timeout=600,
            TRIBUTARY_NUM_THREADS=str(os.cpu_count() or 1),
        ) as base:  # the server default
            rates = {}
            for concurrency in (1, 8, 32):
                r = drive(
                    base,
                    concurrency,
                    args.requests if concurrency > 1 else max(32, args.requests // 4),
                    args.top_k,
                    args.verbatim,
                )
                rows_out.append({"index": name, "vectors": rows, "floor_ms": floor, **r})
                rates[concurrency] = r["rps"]
                s = r["stages"]
                print(
                    f"| {name} | {rows:,} × {args.dim} | {concurrency} | {r['p50_ms']:.1f} | "
                    f"{r['p99_ms']:.1f} | {r['rps']:.1f} | {s['gradient_ms']:.1f} | "
                    f"{s['precondition_ms']:.1f} | {s['search_ms']:.1f} | "
                    f"{s.get('rerank_ms', 0.0):.1f} | {s.get('verbatim_ms', 0.0):.1f} | "
                    f"{s['fetch_ms']:.1f} | {floor:.1f} | "
                    f"{r['p50_ms'] / floor if concurrency == 1 else float('nan'):.2f} |",
                    flush=True,
                )
            print(
                f"| {name} | micro-batching gain: req/s at 32 ÷ at 1 = {rates[32] / rates[1]:.2f}× "
                "|||||||||||||"
            )
    if args.out is not None:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"settings": settings, "rows": rows_out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
