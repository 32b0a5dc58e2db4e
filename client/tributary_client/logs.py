"""Read logged generations (JSONL) into `AttributionRequest`s.

One JSON object per line, in any of these shapes:

* ``{"prompt": ..., "response": ...}`` (``completion`` is accepted for ``response``);
* ``{"messages": [...]}`` whose last message is the assistant's reply (the response);
* OpenAI chat-completion logs: ``{"request": {"messages": [...]}, "response": {"choices":
  [{"message": {"role": "assistant", "content": ...}}]}}``, or the flat variant
  ``{"messages": [...], "choices": [...]}``; legacy completions ``{"prompt": ...,
  "choices": [{"text": ...}]}`` too.

The id of a line is its ``custom_id``, else its ``id`` (top level, or the nested response's
``id``), else ``line-<n>`` (1-based line number). Ids must be unique within a file.

`iter_log_lines` reads every line and reports an unusable one (not JSON, an unknown shape, an
empty reply, a duplicate id) as a `LogLine` with a `problem` instead of stopping: what
``tributary batch`` records as a failed line. `iter_logged_generations` is the strict form: it
raises `LogFormatError`, naming the file and the line, at the first unusable line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .types import AttributionFilters, AttributionRequest, Direction

logger = logging.getLogger(__name__)

__all__ = [
    "LogFormatError",
    "LogLine",
    "iter_log_lines",
    "iter_logged_generations",
    "parse_log_record",
]

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
    raise ValueError(
        f"message content must be a string or a list of parts, got {type(value).__name__}"
    )


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


@dataclass(frozen=True)
class LogLine:
    """One non-blank line of a logs file: its request, or why it cannot be attributed."""

    custom_id: str
    line_no: int
    request: AttributionRequest | None = None
    problem: LogFormatError | None = None
    code: str | None = None
    """Why the line is unusable: ``invalid_json``, ``invalid_log_line`` or ``duplicate_id``."""


def _unused_id(preferred: str, seen: Mapping[str, int]) -> str:
    """`preferred`, or ``preferred#2``, ``#3``... when another line already holds it."""
    candidate, n = preferred, 1
    while candidate in seen:
        n += 1
        candidate = f"{preferred}#{n}"
    return candidate


def iter_log_lines(
    path: str | os.PathLike[str],
    *,
    top_k: int = 10,
    direction: Direction = "helpful",
    token_wise: bool = False,
    filters: AttributionFilters | None = None,
) -> Iterator[LogLine]:
    """Yield a `LogLine` for each non-blank line of a JSONL file, usable or not.

    An unusable line keeps its own id when it has one (``line-<n>`` when it has none, or when
    its id repeats an earlier line's), so its failure can be recorded and retried under it.
    Ids are a function of the file alone: the same file gives the same ids on every read.
    """
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problem = LogFormatError(
                    path, line_no, f"not valid JSON ({exc.msg} at column {exc.colno})"
                )
                custom_id = _unused_id(f"line-{line_no}", seen)
                seen[custom_id] = line_no
                yield LogLine(custom_id, line_no, problem=problem, code="invalid_json")
                continue
            own_id = _record_id(record) if isinstance(record, Mapping) else None
            if own_id is not None and own_id in seen:
                problem = LogFormatError(
                    path, line_no, f"duplicate id {own_id!r} (first seen on line {seen[own_id]})"
                )
                custom_id = _unused_id(f"line-{line_no}", seen)
                seen[custom_id] = line_no
                yield LogLine(custom_id, line_no, problem=problem, code="duplicate_id")
                continue
            custom_id = own_id if own_id is not None else _unused_id(f"line-{line_no}", seen)
            seen[custom_id] = line_no
            try:
                _, request = parse_log_record(
                    record, top_k=top_k, direction=direction, token_wise=token_wise, filters=filters
                )
            except ValueError as exc:
                yield LogLine(
                    custom_id,
                    line_no,
                    problem=LogFormatError(path, line_no, str(exc)),
                    code="invalid_log_line",
                )
                continue
            yield LogLine(custom_id, line_no, request=request)


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
    for item in iter_log_lines(
        path, top_k=top_k, direction=direction, token_wise=token_wise, filters=filters
    ):
        if item.problem is not None:
            raise item.problem
        assert item.request is not None
        yield item.custom_id, item.request
