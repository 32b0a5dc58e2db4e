r"""Exploration: one Fisher over all tracked modules (cross-module terms) instead of one per module.

The indexer preconditions each module's projected block with its own damped Fisher, as LoGra
and EK-FAC do. TRAK-style attribution instead uses the full covariance of the projected
features. This script scores the default configuration (rank, modules, objective, ``influence``)
both ways, on the fact-tracing and backdoor queries of the demo workload and on the LDS setup,
for a few damping values ``λ = α · mean eig(F)``. It only prints; the default is not changed by it.

    .venv/bin/python -m benchmarks.quality.full_fisher --alphas 4,16        # all three benchmarks
    .venv/bin/python -m benchmarks.quality.full_fisher --skip-retrieval     # LDS only (~2 min)
    .venv/bin/python -m benchmarks.quality.full_fisher --no-full --rapidgrad 64:4352,32:4096 \
        --alphas 16,32

``--rapidgrad R:K`` adds the cheap route to a dense Fisher: rank-R LoGra compressed by RapidGrad
(no layer-wise normalisation) to K dims, whose Fisher the indexer already keeps as one ``K × K``
block.

The full Fisher is ``D × D`` (9,216² for the demo at rank 32: its eigendecomposition took about
3 minutes on 2 cores, the Cholesky-based inverse the preconditioner now uses about 5 times less),
which is why it is an exploration and not an index option.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from tributary_indexer.gradients.projector import Block
from tributary_indexer.hessian.fisher import FisherAccumulator
from tributary_indexer.hessian.preconditioner import Preconditioner
from tributary_indexer.hessian.scores import ScoreTransform

from . import lds as lds_benchmark
from .methods import GradientCache, LoGraMethod, logra_scores
from .retrieval import Entry, evaluate
from .workload import Workload, load_workload


def full_fisher_scores(
    cache: GradientCache, method: LoGraMethod, alpha: float
) -> tuple[np.ndarray, float]:
    """``[Q, N]`` influence scores with one damped Fisher over every selected block, and the seconds
    its factorisation took."""
    train, queries, _ = cache.get(method)
    fisher = FisherAccumulator([Block("all", 0, train.shape[1])])
    fisher.update(train)
    t0 = time.perf_counter()
    transform = ScoreTransform("influence", Preconditioner.from_fisher(fisher, alpha))
    seconds = time.perf_counter() - t0
    return (transform.query(queries)[0] @ transform.train(train)[0].T).numpy(), seconds


def _retrieval_rows(workload: Workload, scores: np.ndarray) -> dict[str, float]:
    """Fact-tracing metrics and backdoor AUPRC of ``scores``, through the benchmarks' own
    evaluation."""
    matrices = [(Entry("exploration", "ours", lambda: scores), scores, 0.0)]
    out = evaluate("fact_tracing", workload, matrices)[0]
    out["auprc"] = evaluate("backdoor", workload, matrices)[0]["auprc"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--alphas", default="4,16", help="damping multipliers for the full Fisher")
    parser.add_argument(
        "--skip-retrieval",
        action="store_true",
        help="LDS only (the retrieval factorisation is the slow part)",
    )
    parser.add_argument("--no-full", action="store_true", help="skip the full-Fisher rows")
    parser.add_argument(
        "--rapidgrad",
        default="",
        help="R:K,... — also score rank-R LoGra + RapidGrad to K dims, no layer norm",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    alphas = [float(a) for a in args.alphas.split(",")]
    method = LoGraMethod.default()
    demo = load_workload()
    print(f"# full vs per-module Fisher — {method.name}")
    print("| Fisher | α | recall@1 | recall@10 | MRR | AUPRC | LDS | factorisation s |")
    print("|---|---|---|---|---|---|---|---|")
    setup = lds_benchmark.LdsSetup()
    rows, queries = lds_benchmark.select(demo, setup)
    examples = [demo.examples[r] for r in rows]
    model = lds_benchmark.train_subset_model(
        examples,
        np.ones(len(examples), dtype=bool),
        setup,
        seed=setup.seed,
        tokenizer=demo.tokenizer,
    )
    masks, losses, _ = lds_benchmark.ground_truth(setup, examples, queries, demo.tokenizer)
    lds_workload = Workload(
        model.double(),
        demo.tokenizer,
        [demo.records[r] for r in rows],
        [demo.doc_ids[r] for r in rows],
        examples,
        [demo.texts[r] for r in rows],
        queries,
    )
    lds_cache = GradientCache(lds_workload)
    demo_cache = None if args.skip_retrieval else GradientCache(demo)
    blank = {
        "recall@1": float("nan"),
        "recall@10": float("nan"),
        "mrr": float("nan"),
        "auprc": float("nan"),
    }
    per_module = _retrieval_rows(demo, logra_scores(method, demo_cache)) if demo_cache else blank
    lds_value = lds_benchmark.lds(logra_scores(method, lds_cache), masks, losses)
    print(
        f"| per module (default) | {method.damping:g} | {per_module['recall@1']:.3f} | "
        f"{per_module['recall@10']:.3f} | {per_module['mrr']:.3f} | {per_module['auprc']:.3f} | "
        f"{lds_value:.3f} | |",
        flush=True,
    )
    for alpha in [] if args.no_full else alphas:
        scores, _ = full_fisher_scores(lds_cache, method, alpha)
        lds_value = lds_benchmark.lds(scores, masks, losses)
        row, seconds = blank, float("nan")
        if demo_cache is not None:
            scores, seconds = full_fisher_scores(demo_cache, method, alpha)
            row = _retrieval_rows(demo, scores)
        print(
            f"| full | {alpha:g} | {row['recall@1']:.3f} | {row['recall@10']:.3f} | "
            f"{row['mrr']:.3f} | {row['auprc']:.3f} | {lds_value:.3f} | {seconds:.0f} |",
            flush=True,
        )

    for spec in filter(None, args.rapidgrad.split(",")):
        rank, k = (int(x) for x in spec.split(":"))
        for alpha in alphas:
            variant = method.replace(
                rank=rank, rapidgrad_k=k, rapidgrad_normalize=False, damping=alpha
            )
            row = _retrieval_rows(demo, logra_scores(variant, demo_cache)) if demo_cache else blank
            lds_value = lds_benchmark.lds(logra_scores(variant, lds_cache), masks, losses)
            print(
                f"| rank {rank} → RapidGrad K={k}, no layer norm | {alpha:g} | "
                f"{row['recall@1']:.3f} | {row['recall@10']:.3f} | {row['mrr']:.3f} | "
                f"{row['auprc']:.3f} | {lds_value:.3f} | |",
                flush=True,
            )


if __name__ == "__main__":
    main()
