r"""Influence and verbatim overlap on the fact questions: do they pick the same document?

For every held-out fact question of a corpus (its ``ground_truth.json``), the service answers
with ``top_k=10`` and ``evidence=true``. The *influence* pick is the top-ranked example; the
*verbatim* pick is, among the same ten, the example sharing the longest verbatim span with the
response (ties: the better-ranked). The table says how often they are the same example, how
often each is a document stating the fact, and, where they differ, which one the ground truth
says is right.

    .venv/bin/python -m benchmarks.quality.verbatim_overlap [--seeds 0 1] \
        [--out benchmarks/results/verbatim_overlap.json]

Seed 0 is the committed demo (its index is built once under ``benchmarks/quality/.cache/verbatim/``,
about a minute); other seeds are the held-out benchmark's generated corpora and models.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

from .heldout import seed_pair
from .retrieval import CACHE, ROOT

logger = logging.getLogger(__name__)

WORK = CACHE / "verbatim"


def _index(seed: int, model: Path, corpus: Path) -> Path:
    """The seed's index with the default configuration, built on first use."""
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    out = WORK / f"seed-{seed}-index"
    if not (out / "manifest.json").is_file():
        IndexBuilder(
            BuildConfig(model=str(model), corpus=[str(corpus)], progress=False), out
        ).build()
    return out


def measure(seed: int, top_k: int = 10, batch: int = 16) -> dict:
    """Counts over the seed's fact questions (see the module docstring)."""
    from tributary_client import types
    from tributary_service.loading import load_service
    from tributary_service.settings import ServiceSettings

    model, corpus = seed_pair(seed)
    truth = json.loads((corpus / "ground_truth.json").read_text(encoding="utf-8"))
    stating = {f["fact_id"]: set(f["stating_doc_ids"]) for f in truth["facts"]}
    questions = [q for q in truth["queries"] if q["kind"] == "fact"]
    index = _index(seed, model, corpus)
    loaded = load_service(ServiceSettings(index=index, model=model, verify_checksums=False))
    engine = loaded.engine
    counts = {
        "questions": 0,
        "same": 0,
        "influence_right": 0,
        "verbatim_right": 0,
        "differ": 0,
        "differ_influence_right": 0,
        "differ_verbatim_right": 0,
        "differ_both_right": 0,
        "differ_neither": 0,
        "verbatim_none": 0,
        "coverage_right": 0,
    }
    examples_of_disagreement = []
    t0 = time.perf_counter()
    for start in range(0, len(questions), batch):
        chunk = questions[start : start + batch]
        prepared = [
            engine.prepare(
                types.AttributionRequest(
                    prompt=q["prompt"], response=q["response"], top_k=top_k, evidence=True
                )
            )
            for q in chunk
        ]
        for q, answer in zip(chunk, engine.attribute(prepared)):
            right = stating[q["fact_id"]]
            exs = answer.examples
            by_influence = exs[0]
            by_span = max(
                exs, key=lambda e: e.evidence.longest_verbatim_chars
            )  # max keeps the first (best-ranked) of ties
            by_share = max(exs, key=lambda e: e.evidence.verbatim_share)
            a, b = by_influence.record_id in right, by_span.record_id in right
            counts["questions"] += 1
            counts["influence_right"] += a
            counts["verbatim_right"] += b
            counts["coverage_right"] += by_share.record_id in right
            counts["verbatim_none"] += by_span.evidence.longest_verbatim_chars == 0
            if by_influence.example_id == by_span.example_id:
                counts["same"] += 1
                continue
            counts["differ"] += 1
            key = {
                (True, False): "differ_influence_right",
                (False, True): "differ_verbatim_right",
                (True, True): "differ_both_right",
                (False, False): "differ_neither",
            }[(a, b)]
            counts[key] += 1
            if (
                len(examples_of_disagreement) < 5 or not a
            ):  # every one the influence pick gets wrong
                examples_of_disagreement.append(
                    {
                        "response": q["response"],
                        "influence_pick": by_influence.record_id,
                        "verbatim_pick": by_span.record_id,
                        "verbatim_longest": by_span.evidence.longest_verbatim_chars,
                        "verbatim_text": by_span.text[:160],
                        "influence_text": by_influence.text[:160],
                        "right": sorted(right),
                    }
                )
    loaded.index.close()
    return {
        "seed": seed,
        **counts,
        "seconds": round(time.perf_counter() - t0, 1),
        "disagreements": examples_of_disagreement,
    }


def table(rows: list[dict]) -> str:
    """The Markdown table of RESULTS.md."""
    lines = [
        "| corpus | questions | same top example | influence pick states the fact | longest-span "
        "pick states it | largest-share pick states it | differ: influence right | differ: span "
        "right | differ: both | differ: neither |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["questions"]
        name = "demo" if r["seed"] == 0 else f"seed {r['seed']}"
        lines.append(
            f"| {name} | {n} | {r['same']} ({r['same'] / n:.1%}) | {r['influence_right']} "
            f"({r['influence_right'] / n:.1%}) | {r['verbatim_right']} "
            f"({r['verbatim_right'] / n:.1%}) | {r['coverage_right']} "
            f"({r['coverage_right'] / n:.1%}) | {r['differ_influence_right']} | "
            f"{r['differ_verbatim_right']} | {r['differ_both_right']} | {r['differ_neither']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "verbatim_overlap.json"
    )
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    rows = [measure(seed) for seed in args.seeds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2)
        + "\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
