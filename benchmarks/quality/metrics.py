"""Retrieval metrics over a ``[Q, N]`` score matrix (higher score = ranked earlier).

Ties are broken by row number (stable sort), the same way for every method, so no method gains
from ties; random tie-breaking would only add noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranks_of_relevant(scores: np.ndarray, relevant: Sequence[frozenset[int]]) -> list[np.ndarray]:
    """For each query the 1-based ranks of its relevant rows."""
    order = np.argsort(-scores, axis=1, kind="stable")  # [Q, N]
    out = []
    for q, rel in enumerate(relevant):
        position = np.empty(scores.shape[1], dtype=np.int64)
        position[order[q]] = np.arange(1, scores.shape[1] + 1)
        out.append(np.sort(position[list(rel)]))
    return out


def fact_tracing_metrics(
    scores: np.ndarray, relevant: Sequence[frozenset[int]]
) -> dict[str, float]:
    """TrackStar-style: a query is a hit at ``k`` when any stating document is in its top ``k``.

    ``recall@k`` is the fraction of queries with a hit, ``mrr`` the mean reciprocal rank of the
    first stating document.
    """
    first = np.array([r[0] for r in ranks_of_relevant(scores, relevant)])
    return {
        "recall@1": float(np.mean(first <= 1)),
        "recall@10": float(np.mean(first <= 10)),
        "mrr": float(np.mean(1.0 / first)),
    }


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise average precision) of one ranking."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(np.float64)
    if hits.sum() == 0:
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def backdoor_metrics(
    scores: np.ndarray, poisoned: frozenset[int], ks: Sequence[int] = (10, 34, 100)
) -> dict[str, float]:
    """RapidIn-style: mean AUPRC and recall@k of the poisoned rows over trigger queries."""
    labels = np.zeros(scores.shape[1], dtype=bool)
    labels[list(poisoned)] = True
    out = {"auprc": float(np.mean([average_precision(s, labels) for s in scores]))}
    order = np.argsort(-scores, axis=1, kind="stable")
    for k in ks:
        out[f"recall@{k}"] = float(np.mean(labels[order[:, :k]].sum(1) / len(poisoned)))
    return out
