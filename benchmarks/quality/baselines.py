"""Baselines every attribution method must beat: random, BM25, hidden-state embeddings, and the
exact full-gradient dot product (TracIn at one checkpoint, no projection, no Hessian).

Each returns a ``[Q, N]`` float64 score matrix (higher = more influential).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from tributary_indexer.data.batching import TokenizedExample
from tributary_indexer.gradients.module_selection import TrackedModule

from .gradients import full_module_gradients
from .workload import length_batches

_WORD = re.compile(r"\w+", re.UNICODE)


def random_scores(n_queries: int, n_train: int, seed: int = 0) -> np.ndarray:
    """Uniform random scores: the floor."""
    return np.random.default_rng(seed).random((n_queries, n_train))


BM25_TUNED = {"k1": 0.9, "b": 0.75}
"""The best of a 20-setting sweep (k1 ∈ {0.6, 0.9, 1.2, 1.5, 2}, b ∈ {0.3, 0.5, 0.75, 1}) on the
demo's own fact queries (``benchmarks/RESULTS.md``): an oracle-tuned BM25, to show how
much of its fact-tracing lead is its two constants."""


def bm25_scores(
    query_texts: Sequence[str], train_texts: Sequence[str], k1: float = 1.5, b: float = 0.75
) -> np.ndarray:
    """Okapi BM25 (``rank_bm25``; its defaults k1=1.5, b=0.75) over lower-cased words, query =
    prompt + response."""
    from rank_bm25 import BM25Okapi

    bm25 = BM25Okapi([_WORD.findall(t.lower()) for t in train_texts], k1=k1, b=b)
    return np.stack([bm25.get_scores(_WORD.findall(q.lower())) for q in query_texts])


@torch.no_grad()
def _mean_hidden(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], pad_id: int
) -> torch.Tensor:
    """``[N, H]`` last-layer hidden states averaged over each example's real tokens."""
    out = torch.zeros(len(examples), model.config.hidden_size, dtype=torch.float64)
    for rows, batch in length_batches(list(examples), pad_id):
        hidden = model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states[
            -1
        ]  # [B, T, H]
        mask = batch.attention_mask[..., None].to(hidden.dtype)  # [B, T, 1]
        out[rows] = ((hidden * mask).sum(1) / mask.sum(1)).to(torch.float64)
    return out


def embedding_scores(
    model: torch.nn.Module,
    queries: Sequence[TokenizedExample],
    train: Sequence[TokenizedExample],
    pad_id: int,
) -> np.ndarray:
    """Cosine similarity of mean-pooled last hidden states (a representation-similarity
    baseline)."""
    q = torch.nn.functional.normalize(_mean_hidden(model, queries, pad_id), dim=1)
    t = torch.nn.functional.normalize(_mean_hidden(model, train, pad_id), dim=1)
    return (q @ t.T).numpy()


def full_gradient_dot_scores(
    model: torch.nn.Module,
    modules: Sequence[TrackedModule],
    queries: Sequence[TokenizedExample],
    train: Sequence[TokenizedExample],
    pad_id: int,
    objective: str = "nll",
    chunk: int = 512,
) -> np.ndarray:
    """``⟨∇θ L(query), ∇θ L(z)⟩`` over every tracked weight, exactly, one module at a time.

    Streams the training set in chunks so that no more than ``chunk`` full per-module gradients
    are held at once (``lm_head`` of the demo model is 0.67M weights per example).
    """
    scores = torch.zeros(len(queries), len(train), dtype=torch.float64)
    for module in modules:
        q = full_module_gradients(model, module, queries, pad_id, objective=objective)  # [Q, d]
        for start in range(0, len(train), chunk):
            g = full_module_gradients(
                model, module, train[start : start + chunk], pad_id, objective=objective
            )
            scores[:, start : start + chunk] += (q @ g.T).to(torch.float64)
            del g
        del q
    return scores.numpy()
