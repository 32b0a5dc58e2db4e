"""Search an index in a query's directions, and re-score the candidates of a two-stage ranking.

A hit's score is signed by its direction here and nowhere else: ``helpful`` hits carry the score
(larger is more helpful), ``harmful`` hits its negation (a harmful example scores below zero). A
harmful search is the helpful search of ``−q``, and a ranking re-scores harmful candidates by
the negated token scores, so every search and re-score works in its direction's own terms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, Protocol

import numpy as np
import torch

from ..build.shards import SearchResult
from .ranking import Ranking, RankingQuery

Direction = Literal["helpful", "harmful"]


class Hit(NamedTuple):
    """One returned example: its id, signed score and direction."""

    example_id: int
    score: float
    direction: Direction


class VectorIndex(Protocol):
    """What a search needs of an index (an :class:`~.index.AttributionIndex`)."""

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> SearchResult: ...

    def stored_vectors(self, ids: np.ndarray) -> np.ndarray: ...


def sign(direction: Direction) -> float:
    """``+1`` for ``helpful``, ``−1`` for ``harmful``."""
    return 1.0 if direction == "helpful" else -1.0


def direction_hits(ids: np.ndarray, scores: np.ndarray, direction: Direction) -> list[Hit]:
    """Hits from ids and their scores in ``direction`` (the largest first), signed."""
    s = sign(direction)
    return [Hit(int(i), s * float(v), direction) for i, v in zip(ids, scores)]


def search(
    index: VectorIndex,
    vectors: np.ndarray,
    directions: Sequence[Sequence[Direction]],
    fetch: Sequence[int],
    allowed_ids: np.ndarray | None = None,
) -> list[list[Hit]]:
    """One batched search: query ``b`` (``vectors[b]``, ``[B, D]`` float32) in each of its
    ``directions[b]``, ``fetch[b]`` results per direction, helpful hits before harmful ones."""
    rows, owners, row_directions = [], [], []
    for b, wanted in enumerate(directions):
        for direction in wanted:
            rows.append(vectors[b] * sign(direction))  # harmful: the largest ⟨stored, −q⟩
            owners.append(b)
            row_directions.append(direction)
    out: list[list[Hit]] = [[] for _ in directions]
    if not rows:
        return out
    result = index.search(np.stack(rows), max(fetch[b] for b in owners), allowed_ids=allowed_ids)
    for n, (b, direction) in enumerate(zip(owners, row_directions)):
        ids, scores = result.ids[n][: fetch[b]], result.scores[n][: fetch[b]]
        found = ids >= 0
        out[b] += direction_hits(ids[found], scores[found], direction)
    return out


def rerank(
    index: VectorIndex, ranking: Ranking, query: RankingQuery, hits: list[Hit], top_k: int
) -> list[Hit]:
    """A two-stage ranking's second stage: re-score the candidates exactly, keep ``top_k`` per
    direction (a one-stage ranking's hits are returned as they are)."""
    if query.tokens is None or not hits:
        return hits
    device = query.tokens.vectors.device
    out: list[Hit] = []
    for direction in dict.fromkeys(h.direction for h in hits):
        ids = np.array([h.example_id for h in hits if h.direction == direction], dtype=np.int64)
        stored = torch.from_numpy(index.stored_vectors(ids)).to(device, torch.float64)  # [C, D]
        scores = ranking.rescore(query, stored, harmful=direction == "harmful")
        assert scores is not None
        values = scores.cpu().numpy()  # [C]
        order = np.argsort(-values, kind="stable")[:top_k]
        out += direction_hits(ids[order], values[order], direction)
    return out
