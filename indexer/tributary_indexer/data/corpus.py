"""Reading training corpora: JSONL (optionally gzipped) and Parquet, validated record by record.

Every record is one of three kinds:

- ``text``: ``{"text": "..."}`` — a plain document (every token after the first is a target);
- ``prompt_response``: ``{"prompt": "...", "response": "..."}`` (``completion`` is accepted as
  an alias of ``response``) — only the response tokens are targets;
- ``messages``: ``{"messages": [{"role": ..., "content": ...}, ...]}`` — rendered whole with the
  tokenizer's chat template; the assistant turns are the targets (needs >= 1 assistant turn).

Reserved fields: ``id`` (kept as the external id), ``source`` (defaults to the file's stem),
``provider`` (optional). All other fields go to ``metadata``. ``null`` counts as absent.

Order is deterministic: files in the given order (a directory expands to its corpus files in
sorted order), lines or rows in file order. Parquet files are streamed in record batches, JSONL
line by line, so no file is loaded whole (:mod:`tributary_indexer.data.corpus_files`).

Ids: the index stores a dense global int64 id per example, its ordinal over the whole corpus in
iteration order (:func:`assign_ids`); the record's own ``id`` string, if any, is kept beside it
as the external id. Apply :func:`assign_ids` after every filter so the ids stay dense.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..errors import CorpusError, ExampleError
from .corpus_files import (
    ACCEPTED_FORMS,
    SUPPORTED_SUFFIXES,
    expand_corpus_paths,
    file_stem,
    iter_jsonl_rows,
    iter_parquet_rows,
    jsonable,
    suffix_of,
)

logger = logging.getLogger(__name__)

__all__ = [
    "RecordKind",
    "CorpusRecord",
    "CorpusStats",
    "SUPPORTED_SUFFIXES",
    "expand_corpus_paths",
    "iter_records",
    "parse_record",
    "validate_messages",
    "count_records",
    "assign_ids",
    "content_hash",
]

RecordKind = Literal["text", "prompt_response", "messages"]
MAX_BAD_EXAMPLES = 20
MAX_SKIP_LOG = 100_000
"""Skipped records listed one by one in the skip report (the count is always exact)."""
_RESERVED = ("id", "text", "prompt", "response", "completion", "messages", "source", "provider")
T = TypeVar("T")


@dataclass(frozen=True)
class CorpusRecord:
    """One validated training record and where it came from."""

    file: str
    line: int
    """1-based JSONL line number or Parquet row number within ``file``."""
    id: str | None
    """The record's own ``id`` field (as a string), or None."""
    kind: RecordKind
    text: str | None = None
    prompt: str | None = None
    response: str | None = None
    messages: list[dict[str, Any]] | None = None
    source: str = ""
    provider: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def training_content(self) -> dict[str, Any]:
        """What the model is trained on: the kind plus its text fields (no provenance)."""
        if self.kind == "text":
            return {"kind": "text", "text": self.text}
        if self.kind == "prompt_response":
            return {"kind": "prompt_response", "prompt": self.prompt, "response": self.response}
        return {"kind": "messages", "messages": self.messages}

    @property
    def content_hash(self) -> str:
        """Hex sha256 of :meth:`training_content` as canonical JSON (see :func:`content_hash`)."""
        return content_hash(self)


def content_hash(record: CorpusRecord) -> str:
    """Hex sha256 of a record's training content as canonical JSON.

    Canonical: sorted keys, no whitespace, UTF-8, non-ASCII kept as is. Two records with the
    same kind and text fields hash the same whatever their id, source or metadata.
    """
    text = json.dumps(
        record.training_content(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class CorpusStats:
    """Counts of good and bad records, filled in while iterating (see :func:`iter_records`)."""

    records: int = 0
    bad: int = 0
    files: int = 0
    bad_examples: list[tuple[str, int | None, str]] = field(default_factory=list)
    """The first :data:`MAX_BAD_EXAMPLES` bad records as ``(file, line, reason)``."""
    bad_by_code: Counter[str] = field(default_factory=Counter)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    """Every skipped record (up to :data:`MAX_SKIP_LOG`) as ``{file, line, code, reason}``: the skip
    report."""
    skipped_files: list[str] = field(default_factory=list)
    """Files inside directory inputs that are not corpus files (not read)."""
    empty_files: list[str] = field(default_factory=list)
    """Corpus files that hold no record at all."""

    def record_bad(self, error: CorpusError) -> None:
        """Count one skipped record (also used by the builder for tokenisation failures)."""
        self.bad += 1
        self.bad_by_code[error.code] += 1
        if len(self.bad_examples) < MAX_BAD_EXAMPLES:
            self.bad_examples.append((error.path or "", error.line, str(error)))
        if len(self.skipped) < MAX_SKIP_LOG:
            self.skipped.append(
                {"file": error.path, "line": error.line, "code": error.code, "reason": error.reason}
            )

    def summary(self) -> str:
        """One line for logs: counts and the most common reasons."""
        reasons = ", ".join(f"{code}={n}" for code, n in self.bad_by_code.most_common())
        return f"{self.records} records from {self.files} files, {self.bad} skipped" + (
            f" ({reasons})" if reasons else ""
        )


def iter_records(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    skip_bad: bool = False,
    stats: CorpusStats | None = None,
    warn: bool = True,
) -> Iterator[CorpusRecord]:
    """Yield the validated records of ``paths`` in deterministic order.

    ``warn=False`` leaves out the warnings about unread and empty files (a later pass over a
    corpus already checked); ``stats`` records them either way.

    A bad record raises :class:`CorpusError` naming its file and line, unless ``skip_bad`` is
    true: then it is skipped and counted in ``stats`` (pass a :class:`CorpusStats` to read the
    counts during or after iteration). Whole-file problems (missing file, unsupported type,
    unreadable Parquet) always raise.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    stats = stats if stats is not None else CorpusStats()
    for path in expand_corpus_paths(paths, stats.skipped_files, warn=warn):
        stats.files += 1
        rows = iter_parquet_rows(path) if suffix_of(path) == ".parquet" else iter_jsonl_rows(path)
        seen_rows = 0
        for line, row in rows:
            seen_rows += 1
            try:
                if isinstance(row, CorpusError):
                    raise row
                record = parse_record(row, str(path), line, default_source=file_stem(path))
            except CorpusError as err:
                if not skip_bad:
                    raise
                stats.record_bad(err)
                continue
            stats.records += 1
            yield record
        if seen_rows == 0:
            if warn:
                logger.warning("corpus file %s is empty: it holds no record", path)
            stats.empty_files.append(str(path))
    if stats.bad and warn:
        logger.warning("corpus: %s", stats.summary())


def parse_record(
    obj: dict[str, Any], file: str, line: int, *, default_source: str | None = None
) -> CorpusRecord:
    """Validate one raw record (a JSON object or Parquet row) into a :class:`CorpusRecord`.

    Raises :class:`CorpusError` naming ``file`` and ``line``; ``source`` defaults to
    ``default_source`` (the caller passes the file's stem).
    """
    try:
        return _parse(
            obj, file, line, default_source if default_source is not None else file_stem(Path(file))
        )
    except CorpusError:
        raise
    except ExampleError as err:
        raise CorpusError.at(file, line, err) from err


def _parse(obj: dict[str, Any], file: str, line: int, default_source: str) -> CorpusRecord:
    present = {k: v for k, v in obj.items() if v is not None}
    if "response" in present and "completion" in present:
        raise ExampleError(
            'record has both "response" and "completion"',
            "keep one of them",
            code="ambiguous_record",
        )
    response_key = "response" if "response" in present else "completion"
    forms = [
        name
        for name, keys in (
            ("text", ("text",)),
            ("prompt/response", ("prompt", response_key)),
            ("messages", ("messages",)),
        )
        if any(k in present for k in keys)
    ]
    if not forms:
        raise ExampleError(
            f"record has none of the training fields (keys: {sorted(obj)})",
            ACCEPTED_FORMS,
            code="no_content",
        )
    if len(forms) > 1:
        raise ExampleError(
            f"record mixes {' and '.join(forms)}",
            f"give exactly one form; {ACCEPTED_FORMS}",
            code="ambiguous_record",
        )

    text = prompt = response = None
    messages: list[dict[str, Any]] | None = None
    kind: RecordKind
    if forms[0] == "text":
        kind = "text"
        text = _string_field(present, "text")
        if not text.strip():
            raise ExampleError(
                '"text" is empty', "drop the record or fill in its text", code="empty_text"
            )
    elif forms[0] == "prompt/response":
        kind = "prompt_response"
        if "prompt" not in present:
            raise ExampleError(
                f'record has "{response_key}" but no "prompt"',
                'add a "prompt" (it may be "")',
                code="missing_prompt",
            )
        if response_key not in present:
            raise ExampleError(
                'record has "prompt" but no "response"',
                'add a "response" (or use {"text": ...})',
                code="missing_response",
            )
        prompt = _string_field(present, "prompt")
        response = _string_field(present, response_key)
        if not response.strip():
            raise ExampleError(
                f'"{response_key}" is empty: there is nothing to attribute',
                "drop the record or fill in its response",
                code="empty_response",
            )
    else:
        kind = "messages"
        messages = validate_messages(present["messages"])

    raw_id = present.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
        raise ExampleError(
            f'"id" must be a string or an integer, got {type(raw_id).__name__}',
            'use a string "id"',
            code="bad_id",
        )
    source = present.get("source", default_source)
    provider = present.get("provider")
    for key, value in (("source", source), ("provider", provider)):
        if value is not None and not isinstance(value, str):
            raise ExampleError(
                f'"{key}" must be a string, got {type(value).__name__}',
                f'make "{key}" a string',
                code=f"bad_{key}",
            )
    metadata = {k: jsonable(v) for k, v in obj.items() if k not in _RESERVED}
    return CorpusRecord(
        file=file,
        line=line,
        id=None if raw_id is None else str(raw_id),
        kind=kind,
        text=text,
        prompt=prompt,
        response=response,
        messages=messages,
        source=source,
        provider=provider,
        metadata=metadata,
    )


def _string_field(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise ExampleError(
            f'"{key}" must be a string, got {type(value).__name__}',
            f'make "{key}" a string',
            code=f"bad_{key}",
        )
    return value


def validate_messages(value: Any) -> list[dict[str, Any]]:
    """Check a chat conversation: a non-empty list of ``{"role": str, "content": str}``.

    Needs at least one non-empty assistant turn (the targets). Returns clean copies (``None``
    values dropped); raises :class:`ExampleError` saying what to fix.
    """
    fix_shape = (
        'make "messages" a list of {"role": "system"|"user"|"assistant"|..., "content": "<text>"}'
    )
    if not isinstance(value, (list, tuple)) or not value:
        raise ExampleError('"messages" must be a non-empty list', fix_shape, code="bad_messages")
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise ExampleError(f"messages[{i}] is not an object", fix_shape, code="bad_messages")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ExampleError(
                f'messages[{i}] has no "role" string', fix_shape, code="bad_messages"
            )
        if not isinstance(content, str):
            raise ExampleError(
                f"messages[{i}].content must be a string, got {type(content).__name__}",
                "flatten multi-part content to text (only text training data is supported)",
                code="bad_messages",
            )
        messages.append({k: jsonable(v) for k, v in message.items() if v is not None})
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant:
        raise ExampleError(
            'messages has no "assistant" turn, so there are no target tokens to attribute',
            'add the assistant reply, or use {"text": ...} for plain documents',
            code="no_assistant_turn",
        )
    if not any(m["content"].strip() for m in assistant):
        raise ExampleError(
            "every assistant turn is empty",
            "drop the record or fill in the assistant reply",
            code="empty_response",
        )
    return messages


def assign_ids(items: Iterable[T], start: int = 0) -> Iterator[tuple[int, T]]:
    """Pair items with dense global int64 ids ``start, start+1, ...`` in iteration order.

    This is the id FAISS stores and the example store is keyed on. Call it on the final stream
    (after ``skip_bad`` and tokenisation filtering) so ids stay dense (0..N-1); the record's own
    ``id`` string is kept separately as the external id.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    for offset, item in enumerate(items):
        global_id = start + offset
        if global_id >= 2**63:
            raise OverflowError("global ids exceed int64")
        yield global_id, item


def count_records(
    paths: Sequence[str | os.PathLike[str]], *, skip_bad: bool = False
) -> CorpusStats:
    """Validate a corpus without keeping it: the counts a dry run reports."""
    stats = CorpusStats()
    for _ in iter_records(paths, skip_bad=skip_bad, stats=stats):
        pass
    return stats
