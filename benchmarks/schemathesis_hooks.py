"""Schemathesis hooks for the reliability runs: the request rules JSON Schema cannot state.

The OpenAPI document states every rule it can (one input form, non-empty response, bounds);
the rules it can only describe in prose are applied to the *positive* (schema-valid) cases
before they are sent, so that ``positive_data_acceptance`` stays strict for everything else:

* a ``messages`` conversation ends with the assistant's reply, which is not blank;
* with an empty ``prompt`` the response needs two tokens (its first has nothing to be predicted
  from): the repair gives such a case a prompt;
* a batch's ``custom_id`` values are unique;
* the text of a request fits the model's context (the fixture model has 256 positions): long
  generated strings are cut and conversations are kept to their last few turns (over-long
  requests are probed by the bad-input list instead).

Negative cases are sent as generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_CHARS = 24
"""Characters kept per text field (a character can be up to 4 byte-level tokens)."""
MAX_TURNS = 3


def _repair(body: Any) -> None:
    if not isinstance(body, dict):
        return
    for name in ("prompt", "response"):
        if isinstance(body.get(name), str):
            body[name] = body[name][:MAX_CHARS]
    if body.get("prompt") == "" and isinstance(body.get("response"), str):
        body["prompt"] = "Q:"
    messages = body.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        del messages[:-MAX_TURNS]
        for message in messages:
            if isinstance(message.get("content"), str):
                message["content"] = message["content"][:MAX_CHARS]
        last = messages[-1]
        if last.get("role") != "assistant" or not (
            isinstance(last.get("content"), str) and last["content"].strip()
        ):
            messages.append({"role": "assistant", "content": "It is so."})


@schemathesis.hook
def before_call(ctx: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """Apply the prose rules to a positive case's body (every line's body for a batch)."""
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("requests"), list):
        seen: set[Any] = set()
        for n, line in enumerate(body["requests"]):
            if isinstance(line, dict):
                _repair(line.get("body"))
                if line.get("custom_id") in seen:
                    line["custom_id"] = f"{line['custom_id']}-{n}"
                seen.add(line.get("custom_id"))
    else:
        _repair(body)
