"""Token-wise scores: a returned example's score split over the response's tokens, and over its
own tokens.

A score is linear in the query's projected gradient ``g = Σ_t g^{(t)}``, so
``score = Σ_t ⟨stored(z), q^{(t)}⟩`` exactly. Position ``t``'s term is shown on the token the
model *emits* there (token ``t+1``); positions before the response (the prompt) act only through
attention and are not shown, so the response tokens' scores sum to the influence minus that
context part. Under a two-stage ranking an example's score is its ranking's score; the token-wise
scores stay the shares of its linear influence. The training side is split the same way for the
returned examples only (their gradients are recomputed in one batch). Both use the dual form:
the hooks score each position against fixed vectors (:meth:`QuerySpace.dual_weights`), never
materialising ``[T, D]`` per-position vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..data.batching import TokenizedExample, collate
from ..data.example_store import StoredExample
from ..data.tokenization import QueryTokens, tokenize_record
from ..gradients.computer import GradientComputer
from .space import QuerySpace


class TokenShare(NamedTuple):
    """One token's share of a score, with its character span (``-1, -1`` when not found)."""

    token: str
    token_id: int
    start: int
    end: int
    score: float


def response_token_scores(
    space: QuerySpace,
    computer: GradientComputer,
    tokens: QueryTokens,
    gradient: torch.Tensor,
    stored: np.ndarray,
    pad_id: int,
) -> tuple[list[TokenShare], np.ndarray]:
    """Each of ``stored``'s ``[n, D]`` examples' score split over the response tokens
    (``[n, n_response]``), and the tokens with their summed shares.

    One more forward/backward of the query (``gradient`` ``[D_proj]`` is its whole projected
    gradient), its hooks scoring every position against the dual weights of all ``n`` at once.
    """
    weights = space.dual_weights("query", stored)  # [n, D_proj]
    grads = computer.compute(collate([tokens.example], pad_id), position_weights=weights[None])
    assert grads.position_scores is not None
    per_pos = space.combine_position_scores("query", gradient[None], grads.position_scores)[0]
    start = tokens.response_start
    positions = [start + j - 1 for j in range(len(tokens.response_token_strings))]  # emits token j
    per_token = per_pos[:, positions]  # [n, n_response_tokens]
    totals = per_token.sum(0)
    out = []
    for j, (text, span) in enumerate(zip(tokens.response_token_strings, tokens.response_offsets)):
        a, b = span if span is not None else (-1, -1)
        out.append(
            TokenShare(text, int(tokens.example.input_ids[start + j]), a, b, float(totals[j]))
        )
    return out, per_token


def training_token_scores(
    space: QuerySpace,
    computer: GradientComputer,
    tokenizer: Any,
    records: Sequence[StoredExample],
    influence: np.ndarray,
    pad_id: int,
    max_tokens: int,
) -> list[list[TokenShare]]:
    """The returned examples' scores against the query vector ``influence`` ``[D]``, split over
    each example's target tokens (their gradients recomputed in one batch)."""
    examples = [tokenize_record(r.to_record(), tokenizer, max_tokens) for r in records]
    weights = space.dual_weights("train", influence[None]).expand(len(examples), -1)[:, None, :]
    grads = computer.compute(collate(examples, pad_id), position_weights=weights)  # [n, 1, D_proj]
    assert grads.position_scores is not None
    per_pos = space.combine_position_scores("train", grads.vectors, grads.position_scores)[:, 0]
    return [
        aligned_token_scores(ex, per_pos[n], rec.text, tokenizer)
        for n, (ex, rec) in enumerate(zip(examples, records))
    ]


def aligned_token_scores(
    example: TokenizedExample, per_pos: np.ndarray, text: str, tokenizer: Any
) -> list[TokenShare]:
    """Token strings with character offsets into ``text`` (found left to right), target tokens
    only, each with the score of the position that emits it."""
    out = []
    cursor = 0
    for t, token_id in enumerate(example.input_ids):
        piece = tokenizer.decode(
            [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        found = text.find(piece, cursor) if piece else -1
        if found >= 0 and found - cursor <= 16:
            start, end = found, found + len(piece)
            cursor = end
        else:
            start = end = -1
        if t == 0 or not example.target_mask[t] or start < 0:
            continue
        out.append(TokenShare(piece, int(token_id), start, end, float(per_pos[t - 1])))
    return out
