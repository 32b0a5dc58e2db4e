"""Parsing a ``POST /v1/batches`` body (JSON or JSONL) into request lines, a piece at a time.

Runs in a worker thread, and never holds the interpreter for long: a JSON body is walked one
request line at a time (``json.JSONDecoder.raw_decode`` per element) and a JSONL body one line at
a time, each validated on its own, so the event loop (``/healthz``) keeps its turns while a
50 MB batch is parsed. Every refusal is a 400 that names the line or field at fault: invalid
JSON or UTF-8, an unknown field, a line that is not ``{custom_id, body}``, a duplicate
``custom_id``, text that cannot be stored (a lone surrogate), more than ``max_lines`` lines.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError
from tributary_client import types

from .errors import ServiceError, describe_errors

logger = logging.getLogger(__name__)

MEDIA_TYPES = ("application/json", "application/jsonl", "application/x-ndjson")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _bad(message: str, param: str | None = None, code: str = "invalid_batch") -> ServiceError:
    return ServiceError(400, message, param=param, code=code)


class _Lines:
    """Validated lines with unique custom_ids, at most ``max_lines`` of them."""

    def __init__(self, max_lines: int):
        self.max_lines = max_lines
        self.lines: list[types.BatchRequestLine] = []
        self.seen: dict[str, str] = {}

    def add(self, value: Any, where: str, *, from_json: str | None = None) -> None:
        if len(self.lines) == self.max_lines:
            raise _bad(
                f"the batch has more than {self.max_lines} request lines, this server's limit; "
                "fix: split it into several batches",
                code="too_many_requests",
            )
        try:
            line = (
                types.BatchRequestLine.model_validate_json(from_json)
                if from_json is not None
                else types.BatchRequestLine.model_validate(value)
            )
        except ValidationError as exc:
            message, _ = describe_errors(exc.errors())
            raise _bad(
                f"{where} is not a request line {{custom_id, body}}: {message}",
                where,
                "invalid_batch_line",
            ) from None
        try:
            line.custom_id.encode("utf-8")
            line.body.model_dump_json().encode("utf-8")
        except (UnicodeEncodeError, PydanticSerializationError):
            raise _bad(
                f"{where} holds text that is not valid Unicode (a lone surrogate such as \\ud800); "
                "fix: send well-formed text",
                where,
                "invalid_text",
            ) from None
        if line.custom_id in self.seen:
            raise _bad(
                f"{where}: custom_id {line.custom_id!r} is also in {self.seen[line.custom_id]}; "
                "fix: make custom_ids unique",
                where,
                "duplicate_custom_id",
            )
        self.seen[line.custom_id] = where
        self.lines.append(line)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _bad(
            f"the body is not valid UTF-8 (line {line}, byte {exc.start}); fix: send UTF-8 text",
            f"line {line}",
            "invalid_batch_line",
        ) from None


def _value(text: str, pos: int, where: str) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, pos)
    except (json.JSONDecodeError, ValueError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise _bad(
            f"the body is not valid JSON at character {pos} ({where}): {detail}; fix the batch "
            "body",
            where,
        ) from None


def _expect(text: str, pos: int, char: str, where: str) -> int:
    pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
    if text[pos : pos + 1] != char:
        raise _bad(
            f"the body is not valid JSON at character {pos}: expected {char!r} ({where}); fix the "
            "batch body",
            where,
        )
    return _WHITESPACE.match(text, pos + 1).end()  # type: ignore[union-attr]


def _parse_json(text: str, max_lines: int) -> types.BatchCreateRequest:
    lines = _Lines(max_lines)
    metadata: Any = None
    has_requests = False
    pos = _expect(text, 0, "{", "the body must be an object {requests, metadata}")
    first = True
    while text[pos : pos + 1] != "}":
        if not first:
            pos = _expect(text, pos, ",", "between fields")
        first = False
        key, pos = _value(text, pos, "a field name")
        if not isinstance(key, str):
            raise _bad("the body's field names must be strings; fix the batch body")
        pos = _expect(text, pos, ":", f"after {key!r}")
        if key == "requests":
            has_requests = True
            pos = _expect(text, pos, "[", "requests must be an array")
            n = 0
            while text[pos : pos + 1] != "]":
                if n:
                    pos = _expect(text, pos, ",", f"after requests.{n - 1}")
                value, pos = _value(text, pos, f"requests.{n}")
                lines.add(value, f"requests.{n}")
                n += 1
                pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
            pos += 1
        elif key == "metadata":
            metadata, pos = _value(text, pos, "metadata")
            if metadata is not None and not isinstance(metadata, dict):
                raise _bad("metadata must be an object or null; fix the batch body", "metadata")
            try:
                json.dumps(metadata, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise _bad(
                    "metadata holds text that is not valid Unicode (a lone surrogate); fix: send "
                    "well-formed text",
                    "metadata",
                    "invalid_text",
                ) from None
        else:
            raise _bad(
                f"unknown field {key[:64]!r} in the batch body (fields: requests, metadata); fix "
                "the batch body",
                key[:64],
            )
        pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
    if text[pos + 1 :].strip(" \t\n\r"):
        raise _bad(
            f"the body has more after its closing brace (character {pos + 1}); fix the batch body"
        )
    if not has_requests or not lines.lines:
        raise _bad(
            'the batch has no requests; fix: send {"requests": [{custom_id, body}, ...]}',
            "requests",
            "empty_batch",
        )
    return types.BatchCreateRequest.model_construct(requests=lines.lines, metadata=metadata)


def _parse_jsonl(text: str, max_lines: int) -> types.BatchCreateRequest:
    lines = _Lines(max_lines)
    for n, line_text in enumerate(text.splitlines(), start=1):
        if line_text.strip():
            lines.add(None, f"line {n}", from_json=line_text)
    if not lines.lines:
        raise _bad(
            "the batch has no request lines; fix: send JSONL lines {custom_id, body}",
            code="empty_batch",
        )
    return types.BatchCreateRequest.model_construct(requests=lines.lines, metadata=None)


def parse_batch_body(raw: bytes, media_type: str, max_lines: int) -> types.BatchCreateRequest:
    """The batch in ``raw`` (``media_type`` one of :data:`MEDIA_TYPES`), validated line by line."""
    text = _decode(raw)
    return (
        _parse_json(text, max_lines)
        if media_type == "application/json"
        else _parse_jsonl(text, max_lines)
    )
