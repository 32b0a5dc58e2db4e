"""Linear datamodeling score (TRAK's protocol) on a down-sized demo setup.

    .venv/bin/python -m benchmarks.quality.lds [--models 64] [--no-write]

Sizing (to run in well under an hour on 2 cores): ``n_train`` records drawn (seeded) from the
demo corpus, the demo tokenizer, a GPT-2 of width 128 × 2 layers trained from scratch. One
"full" model trained on all ``n_train`` records is what every method attributes with; ``M``
models, each trained on a random half of the records (own seed for the subset and the init),
give each held-out query's actual loss. A method's prediction for a subset is the sum of its
scores over the subset; LDS is the mean over queries of the Spearman correlation between
prediction and ``−loss`` (a helpful example lowers the loss). Queries: held-out fact questions
whose stating documents were drawn, and trigger prompts.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tributary_indexer.data.batching import TokenizedExample, collate
from tributary_indexer.gradients.objectives import per_example_target_loss

from demo.tools.train_model import TrainConfig, build_model

from . import baselines, peers
from .methods import GradientCache, LoGraMethod, configuration_grid, logra_scores
from .retrieval import ROOT, markdown_table, plot, tuned_bm25_name, write_results_section
from .workload import Query, Workload, length_batches, load_workload

logger = logging.getLogger(__name__)

CACHE = Path(__file__).resolve().parent / ".cache" / "lds"


@dataclass(frozen=True)
class LdsSetup:
    n_train: int = 480
    max_fact_queries: int = 60
    max_trigger_queries: int = 8
    n_embd: int = 128
    n_layer: int = 2
    n_head: int = 2
    epochs: int = 30
    batch_size: int = 16
    lr: float = 3e-3
    models: int = 64
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(
            json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        ).hexdigest()[:12]


def select(demo: Workload, setup: LdsSetup) -> tuple[list[int], list[Query]]:
    """Training rows drawn from the demo corpus and the held-out queries that can be scored on
    them."""
    rng = random.Random(setup.seed)
    rows = sorted(rng.sample(range(len(demo.examples)), setup.n_train))
    new_row = {old: new for new, old in enumerate(rows)}
    facts, triggers = [], []
    for q in demo.queries:
        relevant = frozenset(new_row[r] for r in q.relevant if r in new_row)
        if not relevant:
            continue
        moved = dataclasses.replace(q, relevant=relevant)
        (facts if q.kind == "fact" else triggers).append(moved)
    return rows, facts[: setup.max_fact_queries] + triggers[: setup.max_trigger_queries]


def train_subset_model(
    examples: list[TokenizedExample],
    keep: np.ndarray,
    setup: LdsSetup,
    seed: int,
    tokenizer: object,
) -> torch.nn.Module:
    """Train the LDS model on ``examples[keep]`` (AdamW, warm-up + cosine, fixed epochs)."""
    torch.manual_seed(seed)
    config = TrainConfig(
        seed=seed, n_embd=setup.n_embd, n_layer=setup.n_layer, n_head=setup.n_head, n_positions=256
    )
    model = build_model(config, tokenizer)
    data = [examples[i] for i in np.flatnonzero(keep)]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=setup.lr, betas=(0.9, 0.98), weight_decay=0.01
    )
    steps = setup.epochs * math.ceil(len(data) / setup.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=setup.lr, total_steps=steps, pct_start=0.1
    )
    rng = random.Random(seed)
    pad = int(tokenizer.pad_token_id)  # type: ignore[attr-defined]
    model.train()
    for _ in range(setup.epochs):
        order = list(range(len(data)))
        rng.shuffle(order)
        for start in range(0, len(order), setup.batch_size):
            batch = collate([data[i] for i in order[start : start + setup.batch_size]], pad)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = (
                per_example_target_loss(logits, batch.input_ids, batch.target_mask).sum()
                / batch.target_mask[:, 1:].sum()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
    model.eval()
    return model


@torch.no_grad()
def query_losses(model: torch.nn.Module, queries: list[Query], pad_id: int) -> np.ndarray:
    """``[Q]`` summed response NLL of each query."""
    out = np.zeros(len(queries))
    for rows, batch in length_batches([q.example for q in queries], pad_id):
        logits = model(input_ids=batch.input_ids).logits
        out[rows] = (
            per_example_target_loss(logits, batch.input_ids, batch.target_mask).double().numpy()
        )
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def lds(scores: np.ndarray, masks: np.ndarray, losses: np.ndarray) -> float:
    """Mean over queries of Spearman(Σ_{i∈S_j} τ(q, i), −loss_j(q)) over the ``M`` subsets."""
    predicted = masks.astype(np.float64) @ scores.T  # [M, Q]
    return float(
        np.mean([spearman(predicted[:, q], -losses[:, q]) for q in range(losses.shape[1])])
    )


def ground_truth(
    setup: LdsSetup, examples: list[TokenizedExample], queries: list[Query], tokenizer: object
) -> tuple[np.ndarray, np.ndarray, float]:
    """Subset masks ``[M, N]``, actual query losses ``[M, Q]`` and the seconds it took (cached on
    disk)."""
    path = CACHE / f"{setup.key()}.npz"
    if path.is_file():
        data = np.load(path)
        return (
            data["masks"],
            data["losses"],
            float(data["seconds"]) if "seconds" in data else float("nan"),
        )
    rng = np.random.default_rng(setup.seed + 1)
    masks = np.zeros((setup.models, len(examples)), dtype=bool)
    losses = np.zeros((setup.models, len(queries)))
    t0 = time.perf_counter()
    for j in range(setup.models):
        masks[j, rng.permutation(len(examples))[: len(examples) // 2]] = True
        model = train_subset_model(examples, masks[j], setup, seed=1000 + j, tokenizer=tokenizer)
        losses[j] = query_losses(model, queries, int(tokenizer.pad_token_id))  # type: ignore[attr-defined]
        logger.info(
            "subset model %d/%d trained (%.0f s so far)",
            j + 1,
            setup.models,
            time.perf_counter() - t0,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - t0
    np.savez(path, masks=masks, losses=losses, seconds=seconds)
    return masks, losses, seconds


def attributed_workload(
    demo: Workload, rows: list[int], queries: list[Query], setup: LdsSetup
) -> Workload:
    """The demo ``rows`` with the "full" model trained on all of them (float64): what every method
    attributes with."""
    examples = [demo.examples[r] for r in rows]
    full = train_subset_model(
        examples,
        np.ones(len(examples), dtype=bool),
        setup,
        seed=setup.seed,
        tokenizer=demo.tokenizer,
    )
    return Workload(
        full.double(),
        demo.tokenizer,
        [demo.records[r] for r in rows],
        [demo.doc_ids[r] for r in rows],
        examples,
        [demo.texts[r] for r in rows],
        queries,
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description="linear datamodeling score on a down-sized demo setup"
    )
    parser.add_argument(
        "--models",
        type=int,
        default=LdsSetup.models,
        help="subset models M (>= 50 for the benchmark)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip Kronfluence and LogIX")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    setup = LdsSetup(models=args.models)
    demo = load_workload()
    rows, queries = select(demo, setup)
    workload = attributed_workload(demo, rows, queries, setup)
    full, examples = workload.model, workload.examples
    masks, losses, train_s = ground_truth(setup, examples, queries, demo.tokenizer)
    cache = GradientCache(workload)
    default = LoGraMethod.default()
    ours = configuration_grid(default, pca_scores=("influence",))
    entries = [(default.name, "default", lambda m=default: logra_scores(m, cache))]
    entries += [(m.name, "ours", (lambda m=m: logra_scores(m, cache))) for m in ours]
    qex = [q.example for q in queries]
    entries += [
        ("random", "baseline", lambda: baselines.random_scores(len(queries), len(examples))),
        (
            "BM25 (prompt + response words)",
            "baseline",
            lambda: baselines.bm25_scores([q.prompt + q.response for q in queries], workload.texts),
        ),
        (
            tuned_bm25_name(),
            "baseline",
            lambda: baselines.bm25_scores(
                [q.prompt + q.response for q in queries], workload.texts, **baselines.BM25_TUNED
            ),
        ),
        (
            "hidden-state embedding cosine",
            "baseline",
            lambda: baselines.embedding_scores(workload.model, qex, examples, workload.pad_id),
        ),
        (
            "full-gradient dot (nll, no projection)",
            "baseline",
            lambda: baselines.full_gradient_dot_scores(
                workload.model, cache.modules, qex, examples, workload.pad_id, "nll"
            ),
        ),
        (
            "full-gradient dot (margin, no projection)",
            "baseline",
            lambda: baselines.full_gradient_dot_scores(
                workload.model, cache.modules, qex, examples, workload.pad_id, "margin"
            ),
        ),
    ]
    if not args.no_peers:
        entries += peers.entries(full, workload)
    results = []
    for name, group, compute in entries:
        t = time.perf_counter()
        try:
            scores = np.asarray(compute(), dtype=np.float64)
        except peers.PeerUnavailable as err:
            logger.warning("%s: %s", name, err)
            continue
        seconds = time.perf_counter() - t
        results.append(
            {
                "method": name,
                "group": group,
                "lds": lds(scores, masks, losses),
                "seconds": round(seconds, 1),
            }
        )
        logger.info("%-70s LDS %.3f (%.1f s)", name, results[-1]["lds"], seconds)
    table = markdown_table("lds", results, seconds=True)
    print(table)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results"
        out.mkdir(exist_ok=True)
        (out / "quality_lds.json").write_text(
            json.dumps(results, indent=1) + "\n", encoding="utf-8"
        )
        plot("lds", results, ROOT / "benchmarks" / "figures" / "quality_lds.png")
        n_params = sum(p.numel() for p in full.parameters())
        header = (
            f"`.venv/bin/python -m benchmarks.quality.lds --models {setup.models}` — "
            f"{setup.n_train} records drawn from the demo corpus, {len(queries)} held-out queries "
            f"({sum(q.kind == 'fact' for q in queries)} fact, "
            f"{sum(q.kind == 'trigger' for q in queries)} trigger), GPT-2 "
            f"{setup.n_embd}×{setup.n_layer} layers ({n_params / 1e6:.2f}M parameters, demo "
            f"tokenizer), {setup.epochs} epochs; M = {setup.models} half-subset models (training "
            f"them took {train_s:.0f} s when first run; cached in "
            "`benchmarks/quality/.cache/lds/`). `seconds` = time to score all queries from the "
            "model, gradients included. "
            f"{time.strftime('%Y-%m-%d')}.\n\n![lds](figures/quality_lds.png)\n"
        )
        write_results_section("lds", header + "\n" + table)
    return results


if __name__ == "__main__":
    main()
