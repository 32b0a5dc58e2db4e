"""Indexing speed at 100 queries: our whole pipeline against Kronfluence's EK-FAC.

    .venv/bin/python -m benchmarks.quality.indexing_speed [--queries 100] [--repeats 3] [--no-write]

Same model, training set and dtype as the LDS benchmark (:mod:`.lds`: 480 demo records, the
GPT-2 128 × 2 layers trained on them, float64), with ``--queries`` held-out demo queries (the
LDS queries first, then further fact questions; relevance plays no part in timing).

* **ours**: the indexer's default configuration from nothing: projector, LoGra gradients of the
  training set and the queries (only the modules the default tracks), RapidGrad, Fisher, its
  damped inverse, scores of every query against every example — what an index build plus the
  queries cost (with a saturated ranking, the queries' per-position terms and the
  exact saturated score of every example too). ``gradients`` and ``rest`` split it.
* **Kronfluence EK-FAC** (default damping): ``factors`` (covariances, eigendecomposition,
  eigenvalue correction) and ``scores`` (its per-query recomputation: one pass over the training
  set per query batch of 16).

Each is run ``--repeats`` times, interleaved; the table gives every run and the ratio of the
medians. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time

import torch

from . import peers
from .lds import LdsSetup, attributed_workload, select
from .methods import GradientCache, LoGraMethod, logra_scores
from .retrieval import ROOT, write_results_section
from .workload import Query, Workload, load_workload

logger = logging.getLogger(__name__)


def speed_workload(n_queries: int, setup: LdsSetup) -> Workload:
    """The LDS training set and model with ``n_queries`` held-out queries (LDS queries first)."""
    demo = load_workload()
    rows, lds_queries = select(demo, setup)
    chosen = {q.query_id for q in lds_queries}
    extra = [
        dataclasses.replace(q, relevant=frozenset())
        for q in demo.queries
        if q.query_id not in chosen
    ]
    queries: list[Query] = (lds_queries + extra)[:n_queries]
    if len(queries) < n_queries:
        raise SystemExit(
            f"the demo has only {len(queries)} held-out queries; ask for --queries {len(queries)} "
            "or fewer"
        )
    return attributed_workload(demo, rows, queries, setup)


def time_ours(workload: Workload, method: LoGraMethod) -> dict[str, float]:
    """Seconds of the whole pipeline from a cold gradient cache."""
    cache = GradientCache(workload)
    t0 = time.perf_counter()
    cache.get(
        method
    )  # projector + gradients of the training set and the queries (with their per-position terms
    # under a saturated ranking, from the same pass)
    t1 = time.perf_counter()
    logra_scores(
        method, cache
    )  # RapidGrad, Fisher, inverse, scores (gradients come from the cache)
    t2 = time.perf_counter()
    return {"total": t2 - t0, "gradients": t1 - t0, "rest": t2 - t1}


def time_kronfluence(workload: Workload) -> dict[str, float]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    peers.kronfluence_scores(workload.model, workload, 1e-8, timings)
    return {"total": time.perf_counter() - t0, **timings}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description="indexing speed at N queries: ours vs Kronfluence EK-FAC"
    )
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    workload = speed_workload(args.queries, LdsSetup())
    default = LoGraMethod.default()
    time_ours(workload, default)  # warm-up: first-call allocations and thread pools, not counted
    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(time_ours(workload, default))
        logger.info("ours run %d: %s", r + 1, {k: round(v, 2) for k, v in ours[-1].items()})
        try:
            theirs.append(time_kronfluence(workload))
        except peers.PeerUnavailable as err:
            raise SystemExit(f"Kronfluence is needed for this benchmark: {err}") from err
        logger.info(
            "Kronfluence run %d: %s", r + 1, {k: round(v, 2) for k, v in theirs[-1].items()}
        )
    ratio = statistics.median(t["total"] for t in theirs) / statistics.median(
        o["total"] for o in ours
    )
    lines = [
        "| run | ours total s | ours gradients s | ours rest s | Kronfluence total s | factors s | "
        "scores s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, (o, t) in enumerate(zip(ours, theirs)):
        lines.append(
            f"| {i + 1} | {o['total']:.2f} | {o['gradients']:.2f} | {o['rest']:.2f} | "
            f"{t['total']:.1f} | {t['factors']:.1f} | {t['scores']:.1f} | "
            f"{t['total'] / o['total']:.1f}× |"
        )
    table = "\n".join(lines)
    print(table)
    print(f"median ratio: {ratio:.1f}×")
    result = {
        "queries": len(workload.queries),
        "examples": len(workload.examples),
        "method": default.name,
        "threads": torch.get_num_threads(),
        "ours": ours,
        "kronfluence": theirs,
        "median_ratio": ratio,
    }
    if not args.no_write:
        (ROOT / "benchmarks" / "results" / "quality_speed.json").write_text(
            json.dumps(result, indent=1) + "\n", encoding="utf-8"
        )
        header = (
            f"`.venv/bin/python -m benchmarks.quality.indexing_speed --queries {args.queries} "
            f"--repeats {args.repeats}` — the LDS setup ({len(workload.examples)} training "
            f"examples, GPT-2 128×2, float64, {torch.get_num_threads()} threads), "
            f"{len(workload.queries)} queries, {time.strftime('%Y-%m-%d %H:%M')}; ours = "
            f"`{default.name}` from nothing (gradients, RapidGrad, Fisher, inverse, scores), "
            f"Kronfluence = EK-FAC factors + pairwise scores. **Median ratio {ratio:.1f}×.**\n"
        )
        write_results_section("speed", header + "\n" + table)
    return result


if __name__ == "__main__":
    main()
