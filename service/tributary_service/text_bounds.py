"""Refuse text that cannot fit before tokenising it.

Tokenising is linear in the text, and a request body may hold a megabyte of it: seconds of CPU
spent on a request that is refused afterwards anyway. Every token covers at most ``L``
characters, ``L`` the longest token in the vocabulary (for byte-level BPE the token string *is*
its bytes, one character each; a normaliser that composes characters can shrink a text, at most
by :data:`SHRINK_FACTOR`), so a text of more than ``SHRINK_FACTOR · L · max_tokens`` characters
has more than ``max_tokens`` tokens and is refused by its length alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .errors import ServiceError

logger = logging.getLogger(__name__)

SHRINK_FACTOR = 4


def longest_token_chars(tokenizer: Any) -> int:
    """Characters of the vocabulary's longest token string."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return max((len(t) for t in tokens if isinstance(t, str)), default=1)


def max_text_chars(tokenizer: Any, max_tokens: int) -> int:
    """Characters past which a text certainly has more than ``max_tokens`` tokens."""
    return SHRINK_FACTOR * longest_token_chars(tokenizer) * max_tokens


def check_text_chars(
    texts: Iterable[str | None], limit_chars: int, limit: str, param: str, what: str
) -> None:
    """A 400 when the texts together are longer than ``limit_chars`` characters (``limit`` names the
    token limit, e.g. "this server's limit of 1024 tokens")."""
    total = sum(len(t) for t in texts if t)
    if total > limit_chars:
        raise ServiceError(
            400,
            f"the {what} has {total} characters, more tokens than {limit} whatever the tokenizer "
            f"makes of them; fix: shorten the {what}",
            param=param,
            code="too_many_tokens",
        )
