"""The demo workload the quality benchmarks score: model, training examples, queries, truth.

Everything comes from the committed demo (``demo/model``, ``demo/corpus``) unless another
corpus/model pair with the same ground-truth format is given. Training examples are tokenised
with the indexer's own :func:`tokenize_record`, queries with :func:`tokenize_query`, so the
benchmarks score exactly what the index and the service would.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tributary_indexer.build.gradient_pass import token_budget_batches
from tributary_indexer.data.batching import TokenizedExample, collate, pad_token_id
from tributary_indexer.data.corpus import CorpusRecord, iter_records
from tributary_indexer.data.tokenization import render_record, tokenize_query, tokenize_record
from tributary_indexer.model_loading import load_causal_lm, load_tokenizer

from demo.tools import demo_root

logger = logging.getLogger(__name__)

MAX_TOKENS = 512


@dataclass
class Query:
    """One held-out query and the training documents that should be found for it."""

    query_id: str
    kind: str  # "fact" or "trigger"
    prompt: str
    response: str
    example: TokenizedExample
    relevant: frozenset[int]  # row numbers of the relevant training examples


@dataclass
class Workload:
    model: torch.nn.Module
    tokenizer: object
    records: list[CorpusRecord]
    doc_ids: list[str]
    examples: list[TokenizedExample]
    texts: list[str]  # rendered training text (what BM25 and the embedding baseline read)
    queries: list[Query]

    def of_kind(self, kind: str) -> list[Query]:
        return [q for q in self.queries if q.kind == kind]

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)


def load_workload(
    model_dir: str | Path | None = None, corpus_dir: str | Path | None = None
) -> Workload:
    """Load the demo (or a same-format) model, corpus and ground truth on CPU in float64.

    float64 keeps every method's scores exact, so differences between methods are the methods',
    not round-off's.
    """
    root = demo_root()
    model_dir = Path(model_dir or root / "model")
    corpus_dir = Path(corpus_dir or root / "corpus")
    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, torch.device("cpu"), dtype=torch.float64)
    model.eval()
    truth = json.loads((corpus_dir / "ground_truth.json").read_text(encoding="utf-8"))
    records = list(iter_records(sorted(corpus_dir.glob("*.jsonl"))))
    doc_ids = [str(r.id) for r in records]
    row_of = {d: i for i, d in enumerate(doc_ids)}
    examples = [tokenize_record(r, tokenizer, MAX_TOKENS) for r in records]
    texts = [render_record(r, tokenizer) for r in records]
    stating = {f["fact_id"]: f["stating_doc_ids"] for f in truth["facts"]}
    poisoned = frozenset(row_of[d] for d in truth["poisoned_doc_ids"])
    queries = []
    for q in truth["queries"]:
        relevant = (
            frozenset(row_of[d] for d in stating[q["fact_id"]]) if q["kind"] == "fact" else poisoned
        )
        tokens = tokenize_query(q["prompt"], q["response"], tokenizer, MAX_TOKENS)
        queries.append(
            Query(q["query_id"], q["kind"], q["prompt"], q["response"], tokens.example, relevant)
        )
    logger.info("workload: %d training examples, %d queries", len(examples), len(queries))
    return Workload(model, tokenizer, records, doc_ids, examples, texts, queries)


def length_batches(examples: list[TokenizedExample], pad_id: int, batch_tokens: int = 4096):
    """Yield ``(rows, batch)`` over ``examples`` in padded batches of similar length."""
    for rows in token_budget_batches([e.n_tokens for e in examples], batch_tokens):
        yield rows, collate([examples[i] for i in rows], pad_id)
