"""Shared runner of the two retrieval benchmarks (fact tracing, backdoor) over one method list.

Both benchmarks score the same queries file (``ground_truth.json`` holds fact and trigger
queries), so every method's ``[Q, N]`` score matrix is computed once, cached under
``benchmarks/quality/.cache/`` (keyed by the hashes of the model's weights and the corpus files),
and each benchmark command reads the rows it needs. Tables go to
``benchmarks/results/quality_<name>.{md,json}`` and into ``benchmarks/RESULTS.md`` between markers;
the plot to ``benchmarks/figures/quality_<name>.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tributary_indexer.config import RankingConfig

from . import baselines
from .gradients import tracked_modules
from .methods import GradientCache, LoGraMethod, configuration_grid, logra_scores
from .metrics import backdoor_metrics, fact_tracing_metrics
from .workload import Workload, load_workload

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(__file__).resolve().parent / ".cache"
FIRST_STAGE = RankingConfig.candidates
"""First-stage candidates of a two-stage ranking: the service's default, so rows rank as it does."""


@dataclass(frozen=True)
class Entry:
    name: str
    group: str  # "default", "ours", "baseline"
    compute: Callable[[], np.ndarray]


def logra_entries(
    workload: Workload, around: Callable[[LoGraMethod], list[LoGraMethod]] | None = None
) -> list[Entry]:
    """The default and the methods ``around(default)`` (none without), ranked as the service ranks,
    sharing one gradient cache."""
    cache = GradientCache(workload)
    default = LoGraMethod.default()
    ours = around(default) if around is not None else []
    entries = [Entry(default.name, "default", lambda: logra_scores(default, cache, FIRST_STAGE))]
    return entries + [
        Entry(m.name, "ours", (lambda m=m: logra_scores(m, cache, FIRST_STAGE))) for m in ours
    ]


def method_list(workload: Workload, quick: bool = False) -> list[Entry]:
    """The default, the configuration grid around it, and the baselines."""
    entries = logra_entries(workload, None if quick else configuration_grid)
    queries = workload.queries
    entries.append(
        Entry(
            "random",
            "baseline",
            lambda: baselines.random_scores(len(queries), len(workload.examples)),
        )
    )
    entries += bm25_entries(workload)
    entries.append(
        Entry(
            "hidden-state embedding cosine",
            "baseline",
            lambda: baselines.embedding_scores(
                workload.model, [q.example for q in queries], workload.examples, workload.pad_id
            ),
        )
    )
    if not quick:
        modules = tracked_modules(workload.model)
        for objective in ("nll", "margin"):
            entries.append(
                Entry(
                    f"full-gradient dot ({objective}, no projection)",
                    "baseline",
                    (
                        lambda o=objective: baselines.full_gradient_dot_scores(
                            workload.model,
                            modules,
                            [q.example for q in queries],
                            workload.examples,
                            workload.pad_id,
                            objective=o,
                        )
                    ),
                )
            )
    return entries


def bm25_entries(workload: Workload) -> list[Entry]:
    """BM25 over the query's prompt and response words: at rank_bm25's constants, and tuned
    (:data:`baselines.BM25_TUNED`)."""
    texts = [q.prompt + q.response for q in workload.queries]
    return [
        Entry(
            "BM25 (prompt + response words)",
            "baseline",
            lambda: baselines.bm25_scores(texts, workload.texts),
        ),
        Entry(
            tuned_bm25_name(),
            "baseline",
            lambda: baselines.bm25_scores(texts, workload.texts, **baselines.BM25_TUNED),
        ),
    ]


def tuned_bm25_name() -> str:
    """The table name of the oracle-tuned BM25 baseline (:data:`baselines.BM25_TUNED`)."""
    return "BM25 k1={k1:g} b={b:g} (tuned on the fact queries)".format(**baselines.BM25_TUNED)


def cache_tag(model_dir: Path, corpus_dir: Path) -> str:
    """The score cache's folder name: the model's weights and the corpus files (ground truth
    included)."""
    weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:12]
    corpus = hashlib.sha256()
    for path in sorted(Path(corpus_dir).glob("*.json*")):
        corpus.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{weights}-{corpus.hexdigest()[:12]}"


def score_matrices(
    entries: list[Entry], folder: Path, refresh: bool
) -> list[tuple[Entry, np.ndarray, float]]:
    """Every entry's ``[Q, N]`` scores (from the cache ``folder`` when present) and its compute
    seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for entry in entries:
        path = folder / (hashlib.sha1(entry.name.encode()).hexdigest()[:16] + ".npz")
        if path.is_file() and not refresh:
            data = np.load(path)
            out.append((entry, data["scores"], float(data["seconds"])))
            continue
        t0 = time.perf_counter()
        scores = np.asarray(entry.compute(), dtype=np.float64)
        seconds = time.perf_counter() - t0
        np.savez(path, scores=scores, seconds=seconds)
        logger.info("%-70s %.1f s", entry.name, seconds)
        out.append((entry, scores, seconds))
    return out


def evaluate(
    benchmark: str, workload: Workload, matrices: list[tuple[Entry, np.ndarray, float]]
) -> list[dict]:
    """Per-method metrics of ``benchmark`` (``fact_tracing`` or ``backdoor``)."""
    kind = "fact" if benchmark == "fact_tracing" else "trigger"
    rows = [i for i, q in enumerate(workload.queries) if q.kind == kind]
    relevant = [workload.queries[i].relevant for i in rows]
    results = []
    for entry, scores, seconds in matrices:
        sub = scores[rows]
        metrics = (
            fact_tracing_metrics(sub, relevant)
            if kind == "fact"
            else backdoor_metrics(sub, relevant[0])
        )
        results.append(
            {"method": entry.name, "group": entry.group, **metrics, "seconds": round(seconds, 1)}
        )
    return results


PRIMARY = {"fact_tracing": "recall@10", "backdoor": "auprc", "lds": "lds"}


def markdown_table(benchmark: str, results: list[dict], seconds: bool = False) -> str:
    keys = [k for k in results[0] if k not in ("method", "group") and (seconds or k != "seconds")]
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in results:
        name = f"**{r['method']} (default)**" if r["group"] == "default" else r["method"]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{r[k]:.1f}" if k == "seconds" else f"{r[k]:.3f}" for k in keys)
            + " |"
        )
    return "\n".join(lines)


GROUP_COLORS = {"default": "#d62728", "ours": "#1f77b4", "baseline": "#7f7f7f", "peer": "#2ca02c"}
"""The plots' colour of each :class:`Entry` group."""


def plot(benchmark: str, results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = PRIMARY[benchmark]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(results) + 1.2))
    names = [r["method"] for r in results][::-1]
    values = [r[metric] for r in results][::-1]
    ax.barh(names, values, color=[GROUP_COLORS[r["group"]] for r in results][::-1])
    ax.set_xlabel(metric)
    ax.set_title(
        f"{benchmark.replace('_', ' ')}: {metric} (red: default, blue: ours, grey: baselines, "
        "green: peers)",
        fontsize=9,
    )
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlim(min(0.0, min(values) - 0.05), 1)
    fig.subplots_adjust(
        left=0.42, right=0.98, top=1 - 0.5 / fig.get_figheight(), bottom=0.6 / fig.get_figheight()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results_section(benchmark: str, text: str) -> None:
    """Replace the text between this benchmark's markers in RESULTS.md (append the section if
    new)."""
    results_md = ROOT / "benchmarks" / "RESULTS.md"
    begin, end = f"<!-- quality:{benchmark} -->", f"<!-- /quality:{benchmark} -->"
    current = results_md.read_text(encoding="utf-8")
    block = f"{begin}\n{text}\n{end}"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    results_md.write_text(current, encoding="utf-8")


def main(benchmark: str, argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=f"{benchmark} quality benchmark on the demo model and corpus"
    )
    parser.add_argument("--model", type=Path, default=None, help="model directory [demo/model]")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="corpus directory with ground_truth.json [demo/corpus]",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the default and the cheap baselines only"
    )
    parser.add_argument("--refresh", action="store_true", help="recompute cached score matrices")
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave RESULTS.md and figures alone"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    workload = load_workload(args.model, args.corpus)
    model_dir = args.model or ROOT / "demo" / "model"
    corpus_dir = args.corpus or ROOT / "demo" / "corpus"
    t0 = time.perf_counter()
    matrices = score_matrices(
        method_list(workload, args.quick),
        CACHE / cache_tag(Path(model_dir), Path(corpus_dir)),
        args.refresh,
    )
    results = evaluate(benchmark, workload, matrices)
    table = markdown_table(benchmark, results)
    print(table)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results"
        out.mkdir(exist_ok=True)
        (out / f"quality_{benchmark}.json").write_text(
            json.dumps(results, indent=1) + "\n", encoding="utf-8"
        )
        (out / f"quality_{benchmark}.md").write_text(table + "\n", encoding="utf-8")
        plot(benchmark, results, ROOT / "benchmarks" / "figures" / f"quality_{benchmark}.png")
        n_q = sum(
            q.kind == ("fact" if benchmark == "fact_tracing" else "trigger")
            for q in workload.queries
        )
        header = (
            "`.venv/bin/python -m "
            f"benchmarks.quality.{benchmark}{' --quick' if args.quick else ''}` — "
            f"{len(workload.examples)} training examples, {n_q} queries, demo model; "
            f"{platform.machine()}, {torch.get_num_threads()} threads, "
            f"{time.strftime('%Y-%m-%d')}. Score matrices are cached in "
            "`benchmarks/quality/.cache/`; `--refresh` recomputes "
            f"them.\n\n![{benchmark}](figures/quality_{benchmark}.png)\n"
        )
        write_results_section(benchmark, header + "\n" + table)
    logger.info("done in %.0f s", time.perf_counter() - t0)
    return results
