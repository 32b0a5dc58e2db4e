"""``POST /v1/generate``: let the served model answer (greedy or sampled), for the chat page.

``messages`` are rendered with the model's chat template. A reply ends at the model's
end-of-text token, at any end-of-turn token its tokenizer knows (``<|im_end|>``, ``<|eot_id|>``,
...), at a requested stop string (cut off the reply), or after ``max_new_tokens``. A prompt the
model cannot read whole (over its context length, or leaving no room for a reply that can still be
attributed) is a 400 that says how long it is and what the limit is; ``max_new_tokens`` is capped
at the server's maximum and at the room the prompt leaves. A temperature under
:data:`GREEDY_BELOW` decodes greedily (sampling at such a temperature is greedy decoding, and
dividing the logits by it overflows).

A request is checked and tokenised off the event loop and off the model thread
(:func:`prepare_generation`); only :func:`run_generation` runs on the model thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tributary_client import types
from tributary_indexer.model_loading import context_length

from .errors import ServiceError

logger = logging.getLogger(__name__)

__all__ = [
    "END_OF_TURN_TOKENS",
    "GREEDY_BELOW",
    "PreparedGeneration",
    "generate_text",
    "prepare_generation",
    "run_generation",
    "stop_token_ids",
]

GREEDY_BELOW = 1e-2
"""Temperatures below this decode greedily."""

END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
)
"""Special tokens that end a turn in common chat formats; those the tokenizer has end a reply."""


def stop_token_ids(tokenizer: Any, model: torch.nn.Module) -> list[int]:
    """The tokenizer's and the model's end-of-text ids and the end-of-turn tokens the vocabulary
    holds."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value if isinstance(v, int))
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    special |= set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    for token in END_OF_TURN_TOKENS:
        if token in special:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id >= 0 and token_id != tokenizer.unk_token_id:
                ids.add(token_id)
    return sorted(ids)


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    positions = [text.find(s) for s in stop if s and s in text]
    if not positions:
        return text, False
    return text[: min(positions)], True


@dataclass
class PreparedGeneration:
    """A checked generation request: the rendered prompt, its ids and the decoding settings."""

    prompt: str
    input_ids: torch.Tensor
    max_new_tokens: int
    temperature: float
    stop: list[str]


def prepare_generation(
    loaded: object, body: types.GenerateRequest, cap: int, max_request_tokens: int
) -> PreparedGeneration:
    """Render (chat template for ``messages``), tokenise and check the prompt.

    ``cap`` bounds ``max_new_tokens``; ``max_request_tokens`` (the attribution limit) bounds
    prompt plus reply, so a generated reply can always be explained.
    """
    tokenizer = loaded.tokenizer  # type: ignore[attr-defined]
    model = loaded.model  # type: ignore[attr-defined]
    if body.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise ServiceError(
                400,
                "this model's tokenizer has no chat template; fix: send `prompt` instead of "
                "`messages`",
                param="messages",
                code="no_chat_template",
            )
        prompt = tokenizer.apply_chat_template(
            [m.model_dump() for m in body.messages], tokenize=False, add_generation_prompt=True
        )
        param = "messages"
    else:
        prompt = body.prompt or ""
        param = "prompt"
    # a chat template writes its own BOS, as in training (tokenization.tokenize_record)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=body.messages is None).input_ids
    n_prompt = int(ids.shape[1])
    if n_prompt == 0:
        raise ServiceError(
            400,
            "the prompt is empty; fix: type something for the model to answer",
            param=param,
            code="empty_prompt",
        )
    context = context_length(model)
    limit = min(max_request_tokens, context) if context else max_request_tokens
    whose = (
        "the model's context length"
        if context and context <= max_request_tokens
        else "this server's request limit"
    )
    if n_prompt >= limit:
        raise ServiceError(
            400,
            f"the prompt has {n_prompt} tokens and {whose} is {limit}, which leaves no room for a "
            f"reply; fix: shorten the prompt to well under {limit} tokens",
            param=param,
            code="prompt_too_long",
        )
    temperature = body.temperature if body.temperature >= GREEDY_BELOW else 0.0
    return PreparedGeneration(
        prompt,
        ids,
        min(body.max_new_tokens, cap, limit - n_prompt),
        temperature,
        list(body.stop or []),
    )


def run_generation(loaded: object, prepared: PreparedGeneration) -> types.GenerateResponse:
    """Run ``model.generate`` (on the model thread)."""
    tokenizer = loaded.tokenizer  # type: ignore[attr-defined]
    model = loaded.model  # type: ignore[attr-defined]
    n_prompt = int(prepared.input_ids.shape[1])
    stops = stop_token_ids(tokenizer, model)
    pad = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    )
    ids = prepared.input_ids.to(next(model.parameters()).device)
    extra: dict[str, Any] = {}
    if prepared.stop:
        extra.update(stop_strings=prepared.stop, tokenizer=tokenizer)
    sample = prepared.temperature > 0
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=prepared.max_new_tokens,
            do_sample=sample,
            temperature=prepared.temperature if sample else None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
            eos_token_id=stops or None,
            **extra,
        )
    new = out[0, n_prompt:].tolist()
    ended = bool(new) and new[-1] in stops
    text = tokenizer.decode(new, skip_special_tokens=True)
    text, stopped = _cut_at_stop(text, prepared.stop)
    finish: Literal["stop", "length"] = "stop" if ended or stopped else "length"
    return types.GenerateResponse(
        prompt=prepared.prompt, response=text, n_tokens=len(new), finish_reason=finish
    )


def generate_text(
    loaded: object, body: types.GenerateRequest, cap: int, max_request_tokens: int
) -> types.GenerateResponse:
    """:func:`prepare_generation` and :func:`run_generation` in one call (on the model thread)."""
    return run_generation(loaded, prepare_generation(loaded, body, cap, max_request_tokens))
