"""Fact tracing and backdoor retrieval on held-out corpora: the demo generator with other seeds.

The defaults (α, ``k``, the ranking) and the tuned BM25 baseline were chosen on the committed demo
corpus (seed 0), so their figures there are in-sample. A corpus generated with another seed has
other subjects, facts and wordings, and a model trained on it from scratch with the demo's
recipe; nothing was tuned on it. This benchmark scores the default, its ranking variants (the
ablations of ``benchmarks/quality/ablations.py``) and both BM25 rows on each seed and
pools them, with an exact paired sign test of the default against each row over the pooled fact
questions. It writes its table to
``benchmarks/RESULTS.md`` and a plot of recall@1 per seed to
``benchmarks/figures/quality_heldout.png``.

    .venv/bin/python -m benchmarks.quality.heldout [--seeds 0 1 ... 13] [--no-write]

Corpora and models are made on first use under ``benchmarks/quality/.cache/heldout/seed-N/``
(about 6 minutes of training per seed on 2 cores; deterministic), score matrices are cached
like the other retrieval benchmarks'. Seed 0 is the committed demo.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from demo.tools import demo_root

from .methods import ranking_variants
from .metrics import ranks_of_relevant
from .retrieval import (
    CACHE,
    GROUP_COLORS,
    ROOT,
    Entry,
    bm25_entries,
    cache_tag,
    evaluate,
    logra_entries,
    score_matrices,
    write_results_section,
)
from .workload import Workload, load_workload

logger = logging.getLogger(__name__)

HELDOUT = CACHE / "heldout"
SEEDS = tuple(range(14))


def seed_pair(seed: int) -> tuple[Path, Path]:
    """``(model_dir, corpus_dir)`` of ``seed``: the committed demo for 0, else generated and trained
    once."""
    if seed == 0:
        return demo_root() / "model", demo_root() / "corpus"
    from demo.tools.corpus_generator import generate
    from demo.tools.train_model import train

    base = HELDOUT / f"seed-{seed}"
    corpus, model = base / "corpus", base / "model"
    if not (corpus / "ground_truth.json").is_file():
        generate(corpus, seed=seed, progress=False)
    if not (model / "model.safetensors").is_file():
        logger.info("training the seed-%d model (about 6 minutes on 2 cores)", seed)
        train(corpus, model)
    return model, corpus


def entries(workload: Workload) -> list[Entry]:
    """The default, its ranking variants (:func:`~.methods.ranking_variants`), and the two BM25
    rows."""
    return logra_entries(workload, ranking_variants) + bm25_entries(workload)


def top1_hits(scores: np.ndarray, relevant: list[frozenset[int]]) -> np.ndarray:
    """``[Q]`` bool: the query's best-scored example is relevant (ties broken by row order, as the
    metrics do)."""
    return np.array([int(ranks[0]) == 1 for ranks in ranks_of_relevant(scores, relevant)])


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided p-value of ``wins`` against ``losses`` discordant pairs under a fair coin."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def run(seeds: tuple[int, ...]) -> tuple[list[dict], list[dict]]:
    """Per-seed rows and pooled rows (with the sign test against the default)."""
    per_seed, hits = [], {}
    for seed in seeds:
        model, corpus = seed_pair(seed)
        workload = load_workload(model, corpus)
        matrices = score_matrices(
            entries(workload), CACHE / cache_tag(model, corpus), refresh=False
        )
        facts = [i for i, q in enumerate(workload.queries) if q.kind == "fact"]
        relevant = [workload.queries[i].relevant for i in facts]
        backdoor = evaluate("backdoor", workload, matrices)
        for (entry, scores, _), fact, poisoned in zip(
            matrices, evaluate("fact_tracing", workload, matrices), backdoor
        ):
            per_seed.append(
                {
                    "seed": seed,
                    "method": entry.name,
                    "group": entry.group,
                    "questions": len(facts),
                    **{k: fact[k] for k in ("recall@1", "recall@10", "mrr")},
                    "auprc": poisoned["auprc"],
                }
            )
            hits.setdefault(entry.name, []).append(top1_hits(scores[facts], relevant))
    pooled = []
    names = list(hits)
    default_hits = np.concatenate(hits[names[0]])
    for name in names:
        rows = [r for r in per_seed if r["method"] == name]
        mine = np.concatenate(hits[name])
        wins, losses = int((default_hits & ~mine).sum()), int((~default_hits & mine).sum())
        pooled.append(
            {
                "method": name,
                "group": rows[0]["group"],
                "questions": int(mine.size),
                "recall@1": float(mine.mean()),
                "mrr": float(np.mean([r["mrr"] for r in rows])),
                "min recall@1": float(min(r["recall@1"] for r in rows)),
                "mean auprc": float(np.mean([r["auprc"] for r in rows])),
                "default wins": wins,
                "default losses": losses,
                "p": sign_test(wins, losses),
            }
        )
    return per_seed, pooled


def _p_value(p: float) -> str:
    if p < 1e-3:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def markdown(seeds: tuple[int, ...], per_seed: list[dict], pooled: list[dict]) -> str:
    head = (
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | pooled recall@1 | mean MRR | mean AUPRC | default +/− (p) |"
    )
    lines = [head, "|---|" + "---|" * (len(seeds) + 4)]
    for p in pooled:
        cells = [f"{r['recall@1']:.3f}" for r in per_seed if r["method"] == p["method"]]
        name = f"**{p['method']} (default)**" if p["group"] == "default" else p["method"]
        versus = (
            "—"
            if p["group"] == "default"
            else f"+{p['default wins']} / −{p['default losses']} ({_p_value(p['p'])})"
        )
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {p['recall@1']:.3f} | {p['mrr']:.3f} | {p['mean auprc']:.3f} | {versus} |"
        )
    return "\n".join(lines)


def plot(per_seed: list[dict], path: Path) -> None:
    """Fact recall@1 per seed, one line per method (red: the default, blue: ours, grey: BM25)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    seeds = sorted({r["seed"] for r in per_seed})
    methods = list(dict.fromkeys(r["method"] for r in per_seed))
    for name, marker in zip(methods, "os^vDxP*"):
        rows = {r["seed"]: r for r in per_seed if r["method"] == name}
        group = next(iter(rows.values()))["group"]
        label = (
            name.split(" · ")[-1] if name.startswith("LoGra") else name
        )  # the ranking is what differs
        ax.plot(
            seeds,
            [rows[s]["recall@1"] for s in seeds],
            marker=marker,
            color=GROUP_COLORS[group],
            linewidth=2.5 if group == "default" else 1.2,
            linestyle="--" if "tuned" in name else "-",
            alpha={"default": 1.0, "ours": 0.5, "baseline": 0.9}[group],
            label=label + (" (default)" if group == "default" else ""),
        )
    ax.set_xticks(seeds)
    ax.set_xlabel("corpus seed (0 = the demo, where the constants were chosen)")
    ax.set_ylabel("fact recall@1")
    ax.set_title(
        "fact tracing on held-out generated corpora, each with its own trained model", fontsize=9
    )
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    parser = argparse.ArgumentParser(
        description="fact tracing and backdoor retrieval on held-out generated corpora"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(SEEDS),
        help=f"corpus seeds {list(SEEDS)}; 0 = the demo",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave RESULTS.md alone"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    seeds = tuple(args.seeds)
    t0 = time.perf_counter()
    per_seed, pooled = run(seeds)
    table = markdown(seeds, per_seed, pooled)
    print(table)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results"
        out.mkdir(exist_ok=True)
        (out / "quality_heldout.json").write_text(
            json.dumps({"per_seed": per_seed, "pooled": pooled}, indent=1) + "\n", encoding="utf-8"
        )
        (out / "quality_heldout.md").write_text(table + "\n", encoding="utf-8")
        header = (
            f"`.venv/bin/python -m benchmarks.quality.heldout --seeds {' '.join(map(str, seeds))}` "
            "— fact recall@1 per corpus seed (seed 0 is the committed demo, in-sample for every "
            "tuned constant; the others are out-of-sample), "
            f"{'/'.join(sorted({str(r['questions']) for r in per_seed}))} questions each; "
            '"default +/−" counts the pooled questions only the default / only that row gets right '
            f"at rank 1, with the exact sign test's p. {platform.machine()}, "
            f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}.\n"
        )
        plot(per_seed, ROOT / "benchmarks" / "figures" / "quality_heldout.png")
        write_results_section(
            "heldout", header + "\n" + table + "\n\n![heldout](figures/quality_heldout.png)"
        )
    logger.info("done in %.0f s", time.perf_counter() - t0)
    return per_seed, pooled


if __name__ == "__main__":
    main()
