"""``POST /v1/generate``: let the served model answer (greedy or sampled), for the demo page."""

from __future__ import annotations

import torch
from tributary_client import types

from .errors import ServiceError


def generate_text(loaded: object, body: types.GenerateRequest, cap: int) -> types.GenerateResponse:
    """Run ``model.generate`` on the prompt (chat template for ``messages``)."""
    tokenizer = loaded.tokenizer  # type: ignore[attr-defined]
    model = loaded.model  # type: ignore[attr-defined]
    if body.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise ServiceError(400, "this model's tokenizer has no chat template; fix: send `prompt` instead of `messages`",
                               param="messages", code="no_chat_template")
        prompt = tokenizer.apply_chat_template([m.model_dump() for m in body.messages], tokenize=False, add_generation_prompt=True)
    else:
        prompt = body.prompt or ""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=True).input_ids.to(next(model.parameters()).device)
    max_new = min(body.max_new_tokens, cap)
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=body.temperature > 0,
            temperature=body.temperature if body.temperature > 0 else None, top_p=None, top_k=None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new = out[0, ids.shape[1]:]
    text = tokenizer.decode(new, skip_special_tokens=True)
    return types.GenerateResponse(prompt=prompt, response=text, n_tokens=int(new.shape[0]))
