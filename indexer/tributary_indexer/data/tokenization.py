"""Corpus records and queries to :class:`~tributary_indexer.data.batching.TokenizedExample`.

Training records and queries go through one code path: the example is built from text
*pieces*, each tokenised on its own with ``add_special_tokens=False`` and concatenated, so the
boundary between a non-target piece (prompt, user turn, template header) and a target piece
(response, assistant turn) is exact. Then the truncation rule of the kind is applied.

- ``text``: ``[BOS] + text``; targets = every token after the first.
- ``prompt_response`` (and :func:`tokenize_query`): ``[BOS] + prompt + response``; targets = the
  response tokens. No EOS is appended (a logged generation may not end with one).
- ``messages``: rendered with ``tokenizer.apply_chat_template(tokenize=False)``; the target
  spans are found by rendering prefixes: for assistant turn ``i`` the span is
  ``render(messages[:i+1])`` minus ``render(messages[:i], add_generation_prompt=True)`` — the
  assistant's content plus whatever the template closes the turn with (e.g. ``<|im_end|>``).
  Training targets = every assistant turn; :func:`tokenize_messages_query` targets = the last
  (assistant) turn only. When a template is not prefix-stable (it rewrites earlier turns, e.g.
  strips reasoning), the span falls back to the assistant content found in the full rendering.
  No BOS is added: chat templates write their own (as ``apply_chat_template`` does).

BOS: by default (``add_bos=None``) the tokenizer's own convention is followed, detected by
encoding a probe with and without special tokens: Llama-style tokenizers add ``<s>``/
``<|begin_of_text|>``, GPT-2 and Qwen add nothing. ``add_bos=True`` forces the tokenizer's
``bos_token`` (raises if it has none), ``False`` never adds one. Without a BOS the first token
has no prefix, so it is never a target.

Truncation to ``max_tokens``:

- ``text`` and training ``messages``: keep the first ``max_tokens`` tokens;
- ``prompt_response`` and queries: the prompt yields first, cut from the *left* (keeping the
  part nearest the response, and the BOS), but never below half the budget; then the response
  is cut from the right. So a long prompt never crowds out the response, and a long response
  still keeps half the budget of context.

Tokens after the last target never change the loss (the model is causal), so they are
dropped (e.g. a trailing user turn). An example left without targets raises
:class:`~tributary_indexer.errors.ExampleError` (``code="no_targets"``); :func:`tokenize_record`
raises it as a :class:`~tributary_indexer.errors.CorpusError` naming the file and line, which
the builder counts with ``CorpusStats.record_bad`` when skipping bad records.

Caveat: tokenising pieces separately assumes the tokenizer does not prepend a "dummy prefix"
space to every string (old SentencePiece Llama-2 tokenizers in legacy mode do); byte-level BPE
tokenizers (GPT-2, Llama 3, Qwen, Mistral v3) do not.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CorpusError, ExampleError, TokenizerError
from .batching import TokenizedExample
from .corpus import CorpusRecord, validate_messages

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "QueryTokens",
    "tokenize_record",
    "tokenize_query",
    "tokenize_messages_query",
    "render_record",
    "special_prefix",
    "assistant_spans",
]

_PROBE = "Hello world"
_prefix_cache: weakref.WeakKeyDictionary[Any, tuple[int, ...]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class QueryTokens:
    """A tokenised query plus what a page needs to highlight its response tokens."""

    example: TokenizedExample
    response_start: int
    """Index in ``example.input_ids`` of the first response token (after truncation)."""
    response_token_strings: tuple[str, ...]
    """The text of each kept response token (decoded; ``"\\ufffd"`` only for split characters
    without offsets)."""
    response_offsets: tuple[tuple[int, int] | None, ...]
    """``(start, end)`` character offsets of each response token in ``response_text``; None
    where unknown (slow tokenizer, or a template token outside the message content)."""
    response_text: str
    """The text the offsets index: the response, or the last assistant message's content."""


@dataclass
class _Piece:
    text: str
    target: bool
    ids: list[int]
    offsets: list[tuple[int, int]] | None = None


# --- tokenizer conventions ---------------------------------------------------------------


def special_prefix(
    tokenizer: PreTrainedTokenizerBase, add_bos: bool | None = None
) -> tuple[int, ...]:
    """The token ids to put before a text or prompt: the tokenizer's BOS convention.

    ``add_bos=None`` detects what ``tokenizer(text)`` prepends by default (cached per
    tokenizer); ``True`` forces ``bos_token_id``; ``False`` returns ``()``.
    """
    if add_bos is False:
        return ()
    if add_bos is True:
        if tokenizer.bos_token_id is None:
            raise TokenizerError(
                f"add_bos=True but the tokenizer {type(tokenizer).__name__} has no bos_token; fix: "
                "pass add_bos=None to follow the tokenizer's convention, or set tokenizer.bos_token"
            )
        return (int(tokenizer.bos_token_id),)
    try:
        return _prefix_cache[tokenizer]
    except (KeyError, TypeError):
        pass
    with_special = list(tokenizer(_PROBE, add_special_tokens=True, verbose=False)["input_ids"])
    plain = list(tokenizer(_PROBE, add_special_tokens=False, verbose=False)["input_ids"])
    prefix: tuple[int, ...] = ()
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            prefix = tuple(with_special[:start])
            break
    else:  # the tokenizer rewrites the text when adding specials: fall back to its BOS if it leads
        bos = tokenizer.bos_token_id
        if bos is not None and with_special[:1] == [bos]:
            prefix = (int(bos),)
    try:
        _prefix_cache[tokenizer] = prefix
    except TypeError:
        pass
    return prefix


def _encode(
    tokenizer: PreTrainedTokenizerBase, text: str, with_offsets: bool
) -> tuple[list[int], list[tuple[int, int]] | None]:
    if not text:
        return [], ([] if with_offsets and tokenizer.is_fast else None)
    want_offsets = with_offsets and bool(tokenizer.is_fast)
    encoding = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=want_offsets, verbose=False
    )
    ids = [int(i) for i in encoding["input_ids"]]
    offsets = [(int(s), int(e)) for s, e in encoding["offset_mapping"]] if want_offsets else None
    return ids, offsets


def _render(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[dict[str, Any]],
    add_generation_prompt: bool,
) -> str:
    rendered = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(rendered, str):  # pragma: no cover - transformers contract
        raise TokenizerError(
            "apply_chat_template(tokenize=False) did not return a string; fix: upgrade transformers"
        )
    return rendered


def assistant_spans(
    messages: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages`` and find the character span of each assistant turn in the rendering.

    Returns ``(rendered, spans)`` with one ``(start, end)`` per assistant message, in order.
    Raises :class:`TokenizerError` if the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TokenizerError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} "
            "has no chat_template, so messages records cannot be rendered; fix: give the tokenizer "
            "a chat template (tokenizer.chat_template = ..., or a tokenizer_config.json that has "
            'one) or convert the data to {"prompt": ..., "response": ...} records'
        )
    full = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        span = None
        if i > 0:
            before = _render(tokenizer, messages[:i], add_generation_prompt=True)
            after = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
            if after.startswith(before) and full.startswith(after) and len(before) >= cursor:
                span = (len(before), len(after))
        if span is None:  # first turn, or a template that is not prefix-stable
            start = full.find(message["content"], cursor)
            if start < 0:
                raise TokenizerError(
                    f"cannot locate assistant turn {i} in the chat template's rendering; fix: use "
                    "a chat template that renders message content verbatim, or prompt/response "
                    "records"
                )
            span = (start, start + len(message["content"]))
            logger.debug("assistant turn %d located by content search", i)
        spans.append(span)
        cursor = span[1]
    return full, spans


# --- building -----------------------------------------------------------------------------


def _message_pieces(
    messages: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase
) -> list[_Piece]:
    """The rendering cut into alternating non-target / assistant-turn pieces (empty ones
    dropped)."""
    rendered, spans = assistant_spans(messages, tokenizer)
    pieces: list[_Piece] = []
    cursor = 0
    for start, end in spans:
        pieces.append(_Piece(rendered[cursor:start], False, []))
        pieces.append(_Piece(rendered[start:end], True, []))
        cursor = end
    pieces.append(_Piece(rendered[cursor:], False, []))
    return [p for p in pieces if p.text]


def _fill(
    pieces: list[_Piece], tokenizer: PreTrainedTokenizerBase, offsets_for: _Piece | None
) -> None:
    for piece in pieces:
        piece.ids, piece.offsets = _encode(tokenizer, piece.text, with_offsets=piece is offsets_for)


def _assemble(pieces: Sequence[_Piece]) -> tuple[list[int], list[bool]]:
    ids: list[int] = []
    mask: list[bool] = []
    for piece in pieces:
        ids.extend(piece.ids)
        mask.extend([piece.target] * len(piece.ids))
    return ids, mask


def _finish(ids: list[int], mask: list[bool], n_truncated: int) -> TokenizedExample:
    if mask:
        mask[0] = False  # the first token has no prefix to predict it from
    last = max((i for i, m in enumerate(mask) if m), default=-1)
    if last < 0:
        raise ExampleError(
            "no target tokens left"
            + (f" after truncating {n_truncated} tokens" if n_truncated else ""),
            "raise max_tokens, shorten the prompt, or drop the example",
            code="no_targets",
        )
    return TokenizedExample(
        tuple(ids[: last + 1]), tuple(mask[: last + 1]), n_truncated_tokens=n_truncated
    )


def _head(ids: list[int], mask: list[bool], max_tokens: int) -> TokenizedExample:
    cut = max(0, len(ids) - max_tokens)
    return _finish(ids[:max_tokens], mask[:max_tokens], cut)


def _fit_prompt_response(
    n_pinned: int, n_prompt: int, n_response: int, max_tokens: int
) -> tuple[int, int]:
    """How many prompt tokens (from the right) and response tokens (from the left) to keep."""
    avail = max_tokens - n_pinned
    if avail < 1:
        raise ExampleError(
            f"max_tokens={max_tokens} leaves no room after the {n_pinned} BOS token(s)",
            "raise max_tokens",
            code="no_targets",
        )
    if n_prompt + n_response <= avail:
        return n_prompt, n_response
    keep_prompt = min(n_prompt, max(avail // 2, avail - n_response))
    return keep_prompt, avail - keep_prompt


def _check_max_tokens(max_tokens: int) -> None:
    if max_tokens < 2:
        raise ValueError(
            f"max_tokens must be >= 2 (one context token and one target), got {max_tokens}"
        )


def _prompt_response_tokens(
    pinned: Sequence[int], context: _Piece, response: _Piece, max_tokens: int
) -> tuple[TokenizedExample, int, int]:
    """Prompt/response truncation; returns the example, the response start and how many response
    tokens were kept."""
    if pinned and context.ids[: len(pinned)] == list(pinned):
        context_ids = context.ids[len(pinned) :]  # a rendered chat context that starts with BOS
    else:
        context_ids = context.ids
    keep_prompt, keep_response = _fit_prompt_response(
        len(pinned), len(context_ids), len(response.ids), max_tokens
    )
    kept_context = list(pinned) + context_ids[len(context_ids) - keep_prompt :]
    n_truncated = (len(context_ids) - keep_prompt) + (len(response.ids) - keep_response)
    ids = kept_context + response.ids[:keep_response]
    mask = [False] * len(kept_context) + [True] * keep_response
    return _finish(ids, mask, n_truncated), len(kept_context), keep_response


def tokenize_record(
    record: CorpusRecord,
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
    *,
    add_bos: bool | None = None,
) -> TokenizedExample:
    """Tokenise a training record (any kind) with its target mask, truncated to ``max_tokens``.

    Raises :class:`CorpusError` (with the record's file and line) when the example has no
    target tokens, and :class:`TokenizerError` when the tokenizer cannot render it (no chat
    template).
    """
    _check_max_tokens(max_tokens)
    try:
        if record.kind == "messages":
            assert record.messages is not None
            pieces = _message_pieces(record.messages, tokenizer)
            _fill(pieces, tokenizer, None)
            return _head(*_assemble(pieces), max_tokens)
        pinned = special_prefix(tokenizer, add_bos)
        if record.kind == "text":
            assert record.text is not None
            text_ids, _ = _encode(tokenizer, record.text, with_offsets=False)
            return _head(
                list(pinned) + text_ids, [False] * len(pinned) + [True] * len(text_ids), max_tokens
            )
        assert record.prompt is not None and record.response is not None
        prompt = _Piece(record.prompt, False, _encode(tokenizer, record.prompt, False)[0])
        response = _Piece(record.response, True, _encode(tokenizer, record.response, False)[0])
        return _prompt_response_tokens(pinned, prompt, response, max_tokens)[0]
    except CorpusError:
        raise
    except ExampleError as err:
        raise CorpusError.at(record.file, record.line, err) from err


def render_record(record: CorpusRecord, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """The training text of a record as one string (the chat-template rendering for messages).

    Without a tokenizer (or without a chat template) messages are rendered as
    ``"role: content"`` paragraphs, for display only.
    """
    if record.kind == "text":
        return record.text or ""
    if record.kind == "prompt_response":
        return (record.prompt or "") + (record.response or "")
    messages = record.messages or []
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return _render(tokenizer, messages, add_generation_prompt=False)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


# --- queries ------------------------------------------------------------------------------


def _query_tokens(
    tokenizer: PreTrainedTokenizerBase,
    pinned: Sequence[int],
    context: _Piece,
    response: _Piece,
    max_tokens: int,
    response_text: str,
    content_start: int | None,
) -> QueryTokens:
    """Truncate like a prompt/response example; map response tokens to ``response_text`` offsets.

    ``content_start`` is where ``response_text`` begins inside ``response.text`` (None: unknown,
    so no offsets).
    """
    example, start, kept = _prompt_response_tokens(pinned, context, response, max_tokens)
    ids = response.ids[:kept]
    offsets: list[tuple[int, int] | None] = []
    strings: list[str] = []
    for k, token_id in enumerate(ids):
        span = response.offsets[k] if response.offsets is not None else None
        if (
            span is not None
            and content_start is not None
            and content_start <= span[0]
            and span[1] <= content_start + len(response_text)
        ):
            offset: tuple[int, int] | None = (span[0] - content_start, span[1] - content_start)
        else:
            offset = None
        text = str(
            tokenizer.decode(
                [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )
        if "\ufffd" in text and span is not None and span[1] > span[0]:
            text = response.text[span[0] : span[1]]  # a character split over byte-level tokens
        offsets.append(offset)
        strings.append(text)
    # _finish may drop trailing non-targets but never response tokens, so the counts agree.
    return QueryTokens(example, start, tuple(strings), tuple(offsets), response_text)


def tokenize_query(
    prompt: str,
    response: str,
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
    *,
    add_bos: bool | None = None,
) -> QueryTokens:
    """Tokenise a ``(prompt, response)`` query exactly like a prompt/response training record.

    Raises :class:`ExampleError` when the response is empty or no response token survives.
    """
    _check_max_tokens(max_tokens)
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise ExampleError(
            "prompt and response must be strings", "send text for both", code="bad_query"
        )
    if not response.strip():
        raise ExampleError(
            "the response is empty: there is nothing to attribute",
            "send the model's response text",
            code="empty_response",
        )
    pinned = special_prefix(tokenizer, add_bos)
    context = _Piece(prompt, False, _encode(tokenizer, prompt, False)[0])
    ids, offsets = _encode(tokenizer, response, with_offsets=True)
    return _query_tokens(
        tokenizer, pinned, context, _Piece(response, True, ids, offsets), max_tokens, response, 0
    )


def tokenize_messages_query(
    messages: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, max_tokens: int
) -> QueryTokens:
    """Tokenise a chat query: the last message is the assistant response to attribute.

    The conversation is rendered with the chat template; earlier turns (assistant ones too) are
    context and the last turn is the target, truncated like a prompt/response query. Offsets
    index the last message's ``content``.
    """
    _check_max_tokens(max_tokens)
    checked = validate_messages(messages)
    if checked[-1]["role"] != "assistant":
        raise ExampleError(
            f"the last message has role {checked[-1]['role']!r}, not 'assistant'",
            "end the conversation with the assistant response to attribute",
            code="no_assistant_turn",
        )
    if not checked[-1]["content"].strip():
        raise ExampleError(
            "the last assistant message is empty: there is nothing to attribute",
            "send the model's response text",
            code="empty_response",
        )
    # Same pieces as training (so the same token boundaries); only the last turn is a target.
    pieces = _message_pieces(checked, tokenizer)
    target_at = max(i for i, p in enumerate(pieces) if p.target)
    response = pieces[target_at]
    _fill(pieces[: target_at + 1], tokenizer, response)
    context = _Piece(
        "".join(p.text for p in pieces[:target_at]),
        False,
        [i for p in pieces[:target_at] for i in p.ids],
    )
    content = checked[-1]["content"]
    found = response.text.find(content)
    pinned = special_prefix(tokenizer, None)
    if context.ids[: len(pinned)] != list(pinned):
        pinned = ()
    return _query_tokens(
        tokenizer, pinned, context, response, max_tokens, content, found if found >= 0 else None
    )
