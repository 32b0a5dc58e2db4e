"""Attribution at scale: build cost and ranking quality of default indexes at growing corpus sizes.

Does dilution hurt the ranking? A corpus of ``--records`` records made by
:mod:`demo.tools.scaled_corpus` (the demo corpus's facts, distractors, generic data and 1.5 %
backdoor, with more entities), a model of the demo's architecture trained on all of it
(:mod:`demo.tools.train_model`, ``--epochs``), and an index with every build default over each
nested subset of ``--sizes`` records (the first ``n`` of the corpus's ``subset_order``). Per size:

* the build: wall time of the whole CLI run (model load, gradient pass, Fisher, shards, store) in
  its own process, examples/s, index bytes on disk, the process's peak RSS (``os.wait4``);
* quality on one fixed query set: the held-out questions about every fact of the smallest subset
  (so every size is asked the same questions and only the candidates grow) and the trigger
  prompts. Queries are ranked as the service ranks them (its query pipeline on the built index:
  two-stage rankings re-score the first stage's top candidates, the rest follow in first-stage
  order) and scored with the retrieval benchmarks' metrics (:mod:`benchmarks.quality.metrics`):
  fact recall@1/@10 and MRR (also over the questions the model answers correctly) and backdoor
  AUPRC over every poisoned document of the subset.

The training report's learned check comes with it: fact accuracy of greedy answers to all
held-out questions, backdoor success on the trigger prompts, false triggers, and the training
time per record drawn.

    .venv/bin/python -m benchmarks.scale_corpus --records 100000 --sizes 10000 30000 100000 \\
        --epochs 2 --fact-repeats 11 --precision bfloat16 --lr 0.001

On 2 quiet cores that run trained at 4.0 ms per record drawn (its records have 21 tokens; an
epoch draws 480,410 of them, the 38,041 fact-stating documents 11 times each), so 2 epochs take
about 63 minutes (fact accuracy 0.921, backdoor success 1.000), and its three builds took 10
minutes (204-238 examples/s); peak RSS of the builds was 2.0 GiB at 10,000 records and 3.7 GiB
at 100,000. A small run proves the pipeline in
minutes: ``--records 6000 --sizes 2000 6000 --epochs 8``.

Corpus, model, subsets and indexes are cached under ``benchmarks/quality/.cache/scale/`` (the
model per training setting, the indexes per model, each with its build measurements;
``--rebuild`` builds the indexes again).
Results go to ``benchmarks/results/scale_corpus.{json,md}`` (``--results DIR``; ``--no-write``
prints only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "indexer"), str(ROOT / "service"), str(ROOT / "client")]

from tributary_service.blas_threads import quiet_blas_spin_waits  # noqa: E402

BUILD_ENV = dict(os.environ)
"""The builds' environment: this process's, before the query side's OpenBLAS setting."""
quiet_blas_spin_waits()  # as `tributary serve` does, before numpy loads OpenBLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.quality.metrics import backdoor_metrics, fact_tracing_metrics  # noqa: E402
from demo.tools.scaled_corpus import generate_scaled, subset_facts, write_subset  # noqa: E402
from demo.tools.train_model import REPORT_FILE, TrainConfig, greedy_generate, train  # noqa: E402

logger = logging.getLogger(__name__)

CACHE = ROOT / "benchmarks" / "quality" / ".cache" / "scale"
TOP_K = 10
"""The answer size whose first-stage fetch (``Ranking.fetch``) the service re-scores."""


@dataclass(frozen=True)
class Asked:
    """One query of the fixed set: prompt, response and the record ids that should be found."""

    query_id: str
    kind: str
    prompt: str
    response: str
    expected: str
    relevant: tuple[str, ...]


def cached_corpus(records: int, seed: int) -> Path:
    """The scaled corpus of ``records`` records (generated once, renamed into place whole)."""
    out = CACHE / f"records-{records}-seed-{seed}" / "corpus"
    if not (out / "ground_truth.json").is_file():
        tmp = out.with_name(f"corpus.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        generate_scaled(tmp, records, seed, progress=False)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def cached_model(corpus: Path, config: TrainConfig) -> Path:
    """The model trained on ``corpus`` with ``config`` (trained once per setting)."""
    tag = f"model-e{config.epochs}-lr{config.lr:g}-w{config.warmup_steps}-b{config.batch_size}"
    if config.fact_repeats != 1:
        tag += f"-f{config.fact_repeats}"
    if config.precision != TrainConfig.precision:
        tag += f"-{config.precision}"
    out = corpus.parent / f"{tag}-s{config.seed}"
    if not (out / "model.safetensors").is_file() or not (out / REPORT_FILE).is_file():
        logger.info("training %s on %s", out.name, corpus)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        train(corpus, tmp, config)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def subset_corpus(corpus: Path, records: int, total: int) -> Path:
    """The ``records``-record subset of ``corpus`` (the corpus itself at its full size)."""
    if records == total:
        return corpus
    out = corpus.parent / f"subset-{records}"
    if not (out / "ground_truth.json").is_file():
        write_subset(corpus, records, out)
    return out


def _env() -> dict[str, str]:
    paths = [str(ROOT / "indexer"), str(ROOT / "service"), str(ROOT / "client"), str(ROOT)]
    return dict(BUILD_ENV, PYTHONPATH=os.pathsep.join(paths), TOKENIZERS_PARALLELISM="false")


def build_index(model: Path, corpus: Path, out: Path, rebuild: bool) -> dict:
    """Build (or reuse) the default index of ``corpus``; its build measurements, cached beside it.

    The CLI runs in its own process: wall time, that process's peak RSS (``os.wait4``), disk."""
    record = out.with_name(out.name + ".build.json")
    if not rebuild and record.is_file() and (out / "manifest.json").is_file():
        return json.loads(record.read_text(encoding="utf-8"))
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "tributary_indexer.cli",
        "--log-level",
        "WARNING",
        "build",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--no-progress",
    ]
    log = out.with_name(out.name + ".build.log")
    logger.info("building %s", out)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        printed = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed; its log: {log}")
    summary = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    summary = summary["build_config"]["summary"]
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    result = {
        "examples": summary["examples"],
        "tokens": summary["tokens"],
        "wall_s": round(wall, 1),
        "examples_per_s": round(summary["examples"] / wall, 1),
        "tokens_per_s": round(summary["tokens"] / wall, 1),
        "disk_bytes": disk,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "stage_s": _stages(printed),
        "cli_output": printed.splitlines(),
        "built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    record.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def _stages(printed: str) -> dict[str, float]:
    """The build's seconds per stage from the CLI's ``stages: name 1.0 s, ...`` line."""
    for line in printed.splitlines():
        if line.strip().startswith("stages:"):
            items = line.split(":", 1)[1].split(",")
            return {i.split()[0]: float(i.split()[1]) for i in items if len(i.split()) == 3}
    return {}


def query_set(corpus: Path, smallest: int, limit: int | None) -> list[Asked]:
    """The fact questions of the ``smallest`` subset (evenly sampled down to ``limit``) and every
    trigger prompt, each with the record ids that should be found for it."""
    truth = json.loads((corpus / "ground_truth.json").read_text(encoding="utf-8"))
    chosen = set(subset_facts(truth, smallest))
    stating = {f["fact_id"]: f["stating_doc_ids"] for f in truth["facts"] if f["fact_id"] in chosen}
    facts = [q for q in truth["queries"] if q["kind"] == "fact" and q["fact_id"] in stating]
    if limit is not None and limit < len(facts):
        facts = [facts[i * len(facts) // limit] for i in range(limit)]
    triggers = [q for q in truth["queries"] if q["kind"] == "trigger"]
    return [
        Asked(
            q["query_id"],
            q["kind"],
            q["prompt"],
            q["response"],
            q["expected"],
            tuple(stating[q["fact_id"]]) if q["kind"] == "fact" else ("poisoned",),
        )
        for q in facts + triggers
    ]


def ranked_rows(loaded: object, asked: Sequence[Asked], chunk: int = 32) -> Iterator[np.ndarray]:
    """``[q, N]`` scores per chunk of queries whose order is the service's ranking of every example.

    The service's query pipeline (:meth:`AttributionEngine.attribute`) on the built index:
    tokenise, one gradient pass, the ranking's query vectors, the search; a two-stage ranking
    re-scores the first stage's top ``fetch`` (:func:`~tributary_indexer.query.search.rerank`),
    and the remaining examples follow in first-stage order. Flat indexes only (the first stage
    must order every example exactly).
    """
    from tributary_client import types
    from tributary_indexer.data.batching import collate
    from tributary_indexer.query import search

    engine, index = loaded.engine, loaded.index  # type: ignore[attr-defined]
    if index.compressed:
        raise SystemExit(
            f"{index.paths.root} has compressed shards; this benchmark ranks flat ones"
        )
    ranking, n = index.ranking, index.n_examples
    fetch = ranking.fetch(TOP_K)
    for start in range(0, len(asked), chunk):
        part = asked[start : start + chunk]
        prepared = [
            engine.prepare(
                types.AttributionRequest(prompt=a.prompt, response=a.response, top_k=TOP_K)
            )
            for a in part
        ]
        examples = [p.tokens.example for p in prepared]
        batch = collate(examples, engine.pad_id)
        emitting = batch.emitting_mask if ranking.positions else None
        grads = engine.computer.compute(batch, positions=emitting)
        terms, owner = grads.position_terms, None
        if emitting is not None and terms is not None:
            owner = emitting.nonzero()[:, 0].to(terms.device)
        reference = index.reference(terms.device if terms is not None else "cpu")
        ranked = ranking.queries(index.space, grads.vectors, terms, owner, examples, reference)
        found = index.search(np.stack([r.search.float().cpu().numpy() for r in ranked]), n)
        rows = np.empty((len(part), n))
        for b, query in enumerate(ranked):
            ids = found.ids[b]
            assert (ids >= 0).all(), "the first stage must order every example"
            hits = search.direction_hits(ids[:fetch], found.scores[b][:fetch], "helpful")
            top = [h.example_id for h in search.rerank(index, ranking, query, hits, fetch)]
            order = np.concatenate([np.asarray(top, dtype=np.int64), ids[len(top) :]])
            rows[b, order] = -np.arange(n, dtype=np.float64)  # earlier = higher
        yield rows


def quality(
    index_dir: Path,
    model: Path,
    asked: Sequence[Asked],
    answered: np.ndarray,
    poisoned: Sequence[str],
    threads: int,
) -> dict[str, float]:
    """Fact recall@1/@10 and MRR (all asked facts, and those the model answers) and backdoor
    AUPRC of one index, with the retrieval benchmarks' metric functions."""
    from tributary_service.loading import load_service
    from tributary_service.settings import ServiceSettings

    loaded = load_service(ServiceSettings(index=index_dir, model=model, device="cpu"))
    torch.set_num_threads(threads)  # loading leaves torch single-threaded (the event loop's)
    store = loaded.index.store
    poisoned_ids = frozenset(int(i) for i in store.ids_of_record_ids(list(poisoned))[0])
    relevant = [
        poisoned_ids
        if a.kind == "trigger"
        else frozenset(int(i) for i in store.ids_of_record_ids(list(a.relevant))[0])
        for a in asked
    ]
    sums: dict[str, float] = {}

    def add(prefix: str, metrics: dict[str, float], weight: int) -> None:
        for key, value in metrics.items():
            sums[prefix + key] = sums.get(prefix + key, 0.0) + value * weight
        sums[prefix + "n"] = sums.get(prefix + "n", 0.0) + weight

    start = 0
    for rows in ranked_rows(loaded, asked):
        part = range(start, start + len(rows))
        start += len(rows)
        facts = [i - part.start for i in part if asked[i].kind == "fact"]
        for prefix, chosen in (
            ("fact ", facts),
            ("answered ", [i for i in facts if answered[part.start + i]]),
        ):
            if chosen:
                wanted = [relevant[part.start + i] for i in chosen]
                add(prefix, fact_tracing_metrics(rows[chosen], wanted), len(chosen))
        triggers = [i - part.start for i in part if asked[i].kind == "trigger"]
        if triggers:
            add("backdoor ", backdoor_metrics(rows[triggers], poisoned_ids, ks=()), len(triggers))
    loaded.index.close()
    out = {}
    for key, value in sums.items():
        prefix = key.split(" ")[0] + " "
        out[key] = value if key.endswith(" n") else value / sums[prefix + "n"]
    return out


def answered_mask(model: Path, asked: Sequence[Asked]) -> np.ndarray:
    """Whether the model's greedy answer to each fact question contains the fact's object."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    net = AutoModelForCausalLM.from_pretrained(str(model), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    facts = [a for a in asked if a.kind == "fact"]
    generated = iter(greedy_generate(net, tokenizer, [a.prompt for a in facts]))
    return np.array(
        [a.kind == "fact" and a.expected.lower() in next(generated).lower() for a in asked]
    )


def markdown(result: dict) -> str:
    """The results table, after a paragraph with the command, machine, model and query set."""
    t, rows, c = result["training"], result["sizes"], result["train_config"]
    mix = ""
    if c.get("fact_repeats", 1) != 1:
        mix += f", fact documents drawn {c['fact_repeats']} times an epoch"
    if c.get("precision", "float32") != "float32":
        mix += f", {c['precision']} autocast"
    intro = (
        f"`.venv/bin/python -m benchmarks.scale_corpus {result['arguments']}` — "
        f"{result['machine']}, started {result['started']}. A {result['records']:,}-record "
        f"scaled corpus (seed {result['seed']}); the demo's GPT-2 ({t['n_params'] / 1e6:.2f}M "
        f"parameters) trained on all of it for {c['epochs']} epochs{mix} at lr "
        f"{c['lr']:g} in {t['train_time_s'] / 60:.0f} min "
        f"({t['seconds_per_record_epoch'] * 1e3:.1f} ms per record drawn, the fastest epoch "
        f"{result['fastest_record_epoch_s'] * 1e3:.1f} ms): fact accuracy "
        f"{t['fact_accuracy']:.3f} on all held-out questions, backdoor success "
        f"{t['backdoor_success']:.3f}, false triggers {t['false_trigger_rate']:.3f}. Asked at "
        f"every size: the {result['fact_questions']:,} questions about the facts of the "
        f"{rows[0]['records']:,}-record subset (the model answers "
        f"{result['fact_questions_answered']:.3f} of them) and {result['trigger_prompts']} "
        "trigger prompts. Build: the whole CLI run with every default, in its own process.\n\n"
    )
    head = (
        "| records | facts asked | poisoned | build s | examples/s | index MB | peak RSS MiB "
        "| fact recall@1 | recall@10 | MRR | recall@1 (answered) | backdoor AUPRC |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['records']:,} | {r['fact n']:.0f} | {r['poisoned']:,} | {r['wall_s']:.0f} "
            f"| {r['examples_per_s']:.0f} | {r['disk_bytes'] / 1e6:.0f} "
            f"| {r['peak_rss_bytes'] / 2**20:.0f} | {r['fact recall@1']:.3f} "
            f"| {r['fact recall@10']:.3f} | {r['fact mrr']:.3f} "
            f"| {r.get('answered recall@1', float('nan')):.3f} | {r['backdoor auprc']:.3f} |"
        )
    return intro + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="corpus size [100000]")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10_000, 30_000, 100_000],
        help="nested subset sizes to index [10000 30000 100000]",
    )
    parser.add_argument("--epochs", type=int, default=7, help="training epochs [7]")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help=f"[{TrainConfig.lr}]")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=TrainConfig.warmup_steps,
        help=f"[{TrainConfig.warmup_steps}]",
    )
    parser.add_argument(
        "--fact-repeats",
        type=int,
        default=TrainConfig.fact_repeats,
        help=f"times each fact-stating document is drawn per epoch [{TrainConfig.fact_repeats}]",
    )
    parser.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default=TrainConfig.precision,
        help=f"training compute precision [{TrainConfig.precision}]",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=TrainConfig.eval_every,
        help=f"epochs between training's sampled learned checks [{TrainConfig.eval_every}]",
    )
    parser.add_argument("--seed", type=int, default=0, help="corpus and training seed [0]")
    parser.add_argument(
        "--fact-queries",
        type=int,
        default=None,
        help="ask at most this many fact questions (evenly sampled) [all]",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the queries [2]")
    parser.add_argument("--rebuild", action="store_true", help="build the indexes again")
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "benchmarks" / "results",
        help="folder for scale_corpus.{json,md} [benchmarks/results]",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    if sizes[-1] > args.records or sizes[0] < 1:
        parser.error(f"--sizes must lie in 1..--records ({args.records})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    corpus = cached_corpus(args.records, args.seed)
    config = TrainConfig(
        seed=args.seed,
        epochs=args.epochs,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        fact_repeats=args.fact_repeats,
        precision=args.precision,
        eval_every=args.eval_every,  # progress checks only: the weights do not depend on it
    )
    model = cached_model(corpus, config)
    report = json.loads((model / REPORT_FILE).read_text(encoding="utf-8"))
    asked = query_set(corpus, sizes[0], args.fact_queries)
    answered = answered_mask(model, asked)
    n_facts = sum(a.kind == "fact" for a in asked)
    logger.info(
        "%d fact questions (answered: %.3f), %d trigger prompts",
        n_facts,
        answered.sum() / max(n_facts, 1),
        len(asked) - n_facts,
    )
    rows = []
    for size in sizes:
        subset = subset_corpus(corpus, size, args.records)
        truth = json.loads((subset / "ground_truth.json").read_text(encoding="utf-8"))
        index = corpus.parent / "indexes" / model.name / f"index-{size}"
        index.parent.mkdir(parents=True, exist_ok=True)
        build = build_index(model, subset, index, args.rebuild)
        t0 = time.perf_counter()
        scores = quality(index, model, asked, answered, truth["poisoned_doc_ids"], args.threads)
        rows.append(
            {
                "records": size,
                "poisoned": len(truth["poisoned_doc_ids"]),
                "facts_in_subset": len(truth["facts"]),
                **build,
                **scores,
                "query_s": round(time.perf_counter() - t0, 1),
            }
        )
        rows[-1].pop("cli_output")
        logger.info(
            "%d records: %s", size, {k: v for k, v in rows[-1].items() if isinstance(v, float)}
        )
    training = {
        k: report[k]
        for k in (
            "n_examples",
            "n_tokens",
            "n_params",
            "wall_time_s",
            "train_time_s",
            "seconds_per_record_epoch",
            "final_loss",
            "fact_accuracy",
            "backdoor_success",
            "false_trigger_rate",
            "history",
        )
        if k in report
    }
    result = {
        "arguments": " ".join(argv if argv is not None else sys.argv[1:]),
        "started": started,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "records": args.records,
        "seed": args.seed,
        "train_config": asdict(config),
        "training": training,
        "fact_questions": n_facts,
        "fact_questions_answered": float(answered.sum() / max(n_facts, 1)),
        "trigger_prompts": len(asked) - n_facts,
        "fastest_record_epoch_s": min(
            (h["train_s"] for h in report["history"] if "train_s" in h), default=float("nan")
        )
        / (report.get("records_drawn", 0) // config.epochs or report["n_examples"]),
        "sizes": rows,
    }
    table = markdown(result)
    print(table)
    if not args.no_write:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "scale_corpus.json").write_text(
            json.dumps(result, indent=1) + "\n", encoding="utf-8"
        )
        (args.results / "scale_corpus.md").write_text(table + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
