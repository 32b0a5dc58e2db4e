"""Read logged generations (JSONL) into `AttributionRequest`s.

One JSON object per line, in any of these shapes:

* ``{"prompt": ..., "response": ...}`` (``completion`` is accepted for ``response``);
* ``{"messages": [...]}`` whose last message is the assistant's reply (the response);
* OpenAI chat-completion logs: ``{"request": {"messages": [...]}, "response": {"choices":
  [{"message": {"role": "assistant", "content": ...}}]}}``, or the flat variant
  ``{"messages": [...], "choices": [...]}``; legacy completions ``{"prompt": ...,
  "choices": [{"text": ...}]}`` too.

The id of a line is its ``custom_id``, else its ``id`` (top level, or the nested response's
``id``), else ``line-<n>`` (1-based line number). Ids must be unique within a file. A line
that cannot be read raises `LogFormatError` naming the file and the line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from .types import AttributionFilters, AttributionRequest, Direction

logger = logging.getLogger(__name__)

__all__ = ["LogFormatError", "iter_logged_generations", "parse_log_record"]

_ROLE_ALIASES = {"developer": "system", "human": "user", "ai": "assistant", "bot": "assistant"}


class LogFormatError(ValueError):
    """A line of a logs file is not a usable logged generation."""

    def __init__(self, path: str | os.PathLike[str], line_no: int, reason: str) -> None:
        super().__init__(f"{os.fspath(path)}:{line_no}: {reason}")
        self.path = os.fspath(path)
        self.line_no = line_no
        self.reason = reason


def _content(value: Any) -> str:
    """Message content as text: a string, or OpenAI content parts (text parts joined)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    raise ValueError(f"message content must be a string or a list of parts, got {type(value).__name__}")


def _message(raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"a message must be an object, got {type(raw).__name__}")
    role = raw.get("role")
    if not isinstance(role, str):
        raise ValueError("a message has no 'role'")
    role = _ROLE_ALIASES.get(role, role)
    return {"role": role, "content": _content(raw.get("content"))}


def _choice_message(choices: Any) -> dict[str, str]:
    """The first choice as an assistant message ({'message': ...} or legacy {'text': ...})."""
    if not isinstance(choices, list) or not choices:
        raise ValueError("'choices' must be a non-empty list")
    first = choices[0]
    if not isinstance(first, Mapping):
        raise ValueError("choices[0] must be an object")
    if isinstance(first.get("message"), Mapping):
        msg = _message(first["message"])
        msg["role"] = "assistant"
        return msg
    if "text" in first:
        return {"role": "assistant", "content": _content(first["text"])}
    raise ValueError("choices[0] has neither 'message' nor 'text'")


def _record_id(record: Mapping[str, Any]) -> str | None:
    for key in ("custom_id", "id"):
        value = record.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    nested = record.get("response")
    if isinstance(nested, Mapping) and isinstance(nested.get("id"), str) and nested["id"]:
        return str(nested["id"])
    return None


def _request_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt/response or messages of one record, in AttributionRequest's terms."""
    nested_req = record.get("request")
    nested_resp = record.get("response")
    if isinstance(nested_req, Mapping):  # {"request": {...}, "response": {"choices": ...}}
        if not isinstance(nested_resp, Mapping):
            raise ValueError("'request' is present but 'response' is not an object with 'choices'")
        if "body" in nested_resp and isinstance(nested_resp["body"], Mapping):
            nested_resp = nested_resp["body"]  # OpenAI Batch API output wraps the body
        if "body" in nested_req and isinstance(nested_req["body"], Mapping):
            nested_req = nested_req["body"]
        reply = _choice_message(nested_resp.get("choices"))
        if "messages" in nested_req:
            return {"messages": [*_messages(nested_req["messages"]), reply]}
        if "prompt" in nested_req:
            return {"prompt": _content(nested_req["prompt"]), "response": reply["content"]}
        raise ValueError("'request' has neither 'messages' nor 'prompt'")
    if "messages" in record:
        messages = _messages(record["messages"])
        if "choices" in record:  # flat chat-completion log: messages are the prompt
            return {"messages": [*messages, _choice_message(record["choices"])]}
        return {"messages": messages}
    if "prompt" in record:
        if "choices" in record:
            reply = _choice_message(record["choices"])
            return {"prompt": _content(record["prompt"]), "response": reply["content"]}
        response = record.get("response", record.get("completion"))
        if response is None:
            raise ValueError("has 'prompt' but no 'response' (or 'completion')")
        return {"prompt": _content(record["prompt"]), "response": _content(response)}
    raise ValueError(
        "unrecognised shape: expected {prompt, response}, {messages}, "
        "{request, response: {choices}} or {messages, choices}"
    )


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list):
        raise ValueError("'messages' must be a list")
    return [_message(m) for m in raw]


def parse_log_record(
    record: Any,
    *,
    top_k: int = 10,
    direction: Direction = "helpful",
    token_wise: bool = False,
    filters: AttributionFilters | None = None,
) -> tuple[str | None, AttributionRequest]:
    """One decoded JSON record -> (its id or None, the request). Raises ValueError."""
    if not isinstance(record, Mapping):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    fields = _request_fields(record)
    try:
        request = AttributionRequest(
            **fields, top_k=top_k, direction=direction, token_wise=token_wise, filters=filters
        )
    except ValidationError as exc:
        msgs = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise ValueError(msgs) from exc
    return _record_id(record), request


def iter_logged_generations(
    path: str | os.PathLike[str],
    *,
    top_k: int = 10,
    direction: Direction = "helpful",
    token_wise: bool = False,
    filters: AttributionFilters | None = None,
) -> Iterator[tuple[str, AttributionRequest]]:
    """Yield ``(custom_id, AttributionRequest)`` for each non-blank line of a JSONL file.

    Raises `LogFormatError` (file and line number in the message) on a malformed line or a
    duplicate id.
    """
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LogFormatError(path, line_no, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
            try:
                custom_id, request = parse_log_record(
                    record, top_k=top_k, direction=direction, token_wise=token_wise, filters=filters
                )
            except ValueError as exc:
                raise LogFormatError(path, line_no, str(exc)) from exc
            if custom_id is None:
                custom_id = f"line-{line_no}"
            if custom_id in seen:
                raise LogFormatError(
                    path, line_no, f"duplicate id {custom_id!r} (first seen on line {seen[custom_id]})"
                )
            seen[custom_id] = line_no
            yield custom_id, request
