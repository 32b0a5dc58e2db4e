"""Tokenised examples and the padded batches the gradient core consumes.

An example is a token sequence plus a *target mask*: ``target_mask[t]`` is True when token ``t``
is a loss target, i.e. the model is scored on predicting it from tokens ``< t``. Plain documents
target every token after the first; prompt/response examples target the response tokens only.
Batches are always right-padded, so a sequence's positions, and therefore its
gradients, do not depend on what it is batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenizedExample:
    """One example as token ids and the mask of its loss targets."""

    input_ids: tuple[int, ...]
    target_mask: tuple[bool, ...]
    """True where token ``t`` is a loss target (predicted from tokens ``< t``); index 0 is always
    False."""
    n_truncated_tokens: int = 0
    """How many tokens were cut to respect ``max_tokens`` (0 when the example fit)."""

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.target_mask):
            raise ValueError(
                f"input_ids has {len(self.input_ids)} tokens but target_mask has "
                f"{len(self.target_mask)}: build both from the same tokenisation"
            )
        if self.target_mask and self.target_mask[0]:
            raise ValueError(
                "target_mask[0] must be False: the first token has no prefix to predict it from"
            )

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(self.target_mask)

    @classmethod
    def document(cls, input_ids: Sequence[int]) -> TokenizedExample:
        """A plain document: every token after the first is a target."""
        ids = tuple(int(i) for i in input_ids)
        return cls(ids, tuple(i > 0 for i in range(len(ids))))

    @classmethod
    def prompt_response(
        cls, prompt_ids: Sequence[int], response_ids: Sequence[int]
    ) -> TokenizedExample:
        """A prompt/response pair: only the response tokens are targets."""
        ids = tuple(int(i) for i in prompt_ids) + tuple(int(i) for i in response_ids)
        mask = tuple([False] * len(prompt_ids) + [True] * len(response_ids))
        if mask and mask[0]:  # an empty prompt: the first response token has no prefix
            mask = (False,) + mask[1:]
        return cls(ids, mask)


@dataclass
class TokenBatch:
    """Right-padded tensors for a list of examples (shapes ``[B, T]``)."""

    input_ids: torch.Tensor  # [B, T] int64, pad positions hold pad_token_id
    attention_mask: torch.Tensor  # [B, T] int64, 1 = real token, 0 = padding
    target_mask: torch.Tensor  # [B, T] bool, True = token t is a loss target

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def emitting_mask(self) -> torch.Tensor:
        """``[B, T]`` bool: the positions whose output predicts a target (``t − 1`` for each target
        ``t``)."""
        mask = torch.zeros_like(self.target_mask)
        mask[:, :-1] = self.target_mask[:, 1:]
        return mask

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.target_mask.to(device)
        )


def collate(examples: Sequence[TokenizedExample], pad_token_id: int = 0) -> TokenBatch:
    """Right-pad ``examples`` into one :class:`TokenBatch`."""
    if not examples:
        raise ValueError("collate() needs at least one example")
    empty = [i for i, e in enumerate(examples) if e.n_tokens == 0]
    if empty:
        raise ValueError(f"examples {empty} have no tokens; drop empty examples before batching")
    width = max(e.n_tokens for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    target_mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for row, example in enumerate(examples):
        n = example.n_tokens
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        target_mask[row, :n] = torch.tensor(example.target_mask, dtype=torch.bool)
    return TokenBatch(input_ids, attention_mask, target_mask)


def pad_token_id(tokenizer: object) -> int:
    """The id to pad with: the tokenizer's pad, else EOS, else UNK, else 0 (pads are never
    scored)."""
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0
