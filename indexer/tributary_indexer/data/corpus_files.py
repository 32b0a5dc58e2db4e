"""Corpus files: which files a corpus input names, and the raw rows each one holds.

A directory expands to its ``.jsonl``, ``.jsonl.gz`` and ``.parquet`` files in sorted order (other
files are named and left unread); JSONL is read line by line, gunzipped when its first bytes say
gzip, and Parquet is streamed in record batches, so no file is loaded whole. Rows come out as
``(line or row number, object)``, or the :class:`~tributary_indexer.errors.CorpusError` of a line
that is not a JSON object; :mod:`tributary_indexer.data.corpus` validates them into records.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import gzip
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CorpusError

logger = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED_FORMS",
    "SUPPORTED_SUFFIXES",
    "expand_corpus_paths",
    "file_stem",
    "iter_jsonl_rows",
    "iter_parquet_rows",
    "jsonable",
    "suffix_of",
]

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
ACCEPTED_FORMS = (
    'accepted forms are {"text": ...}, {"prompt": ..., "response": ...} (or "completion") and '
    '{"messages": [{"role": ..., "content": ...}, ...]}'
)
"""The record forms, as an error message gives them."""
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_BATCH_ROWS = 1024


def suffix_of(path: Path) -> str | None:
    """The corpus suffix ``path`` ends with (case-insensitive), or None for other files."""
    name = path.name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def file_stem(path: Path) -> str:
    """The file's name without its corpus suffix: a record's default ``source``."""
    suffix = suffix_of(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def expand_corpus_paths(
    paths: Iterable[str | os.PathLike[str]], skipped: list[str] | None = None, *, warn: bool = True
) -> list[Path]:
    """Resolve the corpus inputs to files: directories expand to their corpus files (sorted).

    Other files inside a directory are not read: they are logged by name and, when ``skipped``
    is given, appended to it (hidden files such as ``.DS_Store`` are left out of both).
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            every = sorted(
                (p for p in path.rglob("*") if p.is_file()),
                key=lambda p: p.relative_to(path).as_posix(),
            )
            found = [p for p in every if suffix_of(p)]
            others = [
                p
                for p in every
                if not suffix_of(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            if others and warn:
                names = [p.relative_to(path).as_posix() for p in others]
                logger.warning(
                    "corpus directory %s: not reading %d file(s) that are not %s: %s%s",
                    path,
                    len(others),
                    "/".join(SUPPORTED_SUFFIXES),
                    ", ".join(names[:10]),
                    f" and {len(names) - 10} more" if len(names) > 10 else "",
                )
            if others and skipped is not None:
                skipped.extend(str(p) for p in others)
            if not found:
                listed = f" (it holds {', '.join(p.name for p in others[:5])})" if others else ""
                raise CorpusError(
                    str(path),
                    None,
                    f"directory holds no corpus files{listed}",
                    f"put {', '.join(SUPPORTED_SUFFIXES)} files in it or pass the files directly",
                    code="no_files",
                )
            files.extend(found)
        elif not path.exists():
            raise CorpusError(str(path), None, "file not found", "check the path", code="not_found")
        elif suffix_of(path) is None:
            raise CorpusError(
                str(path),
                None,
                "unsupported file type",
                f"use one of {', '.join(SUPPORTED_SUFFIXES)} (convert CSV etc. to JSONL first)",
                code="unsupported_file",
            )
        else:
            files.append(path)
    return files


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped when it is gzip (by its first two bytes, whatever its name)."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == _GZIP_MAGIC
    if gzipped:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.name.lower().endswith(".gz"):
        logger.warning("%s is named .gz but is not gzip-compressed: reading it as plain text", path)
    return open(path, "rb")


def iter_jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | CorpusError]]:
    """Yield ``(line, parsed object or the error for that line)``; blank lines are skipped."""
    name = str(path)
    try:
        with open_binary(path) as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    yield (
                        line_no,
                        CorpusError(
                            name,
                            line_no,
                            f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
                            "re-encode the file as UTF-8",
                            code="bad_encoding",
                        ),
                    )
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield (
                        line_no,
                        CorpusError(
                            name,
                            line_no,
                            f"malformed JSON ({exc.msg} at column {exc.colno})",
                            "make each line one complete JSON object (JSON Lines)",
                            code="malformed_json",
                        ),
                    )
                    continue
                if not isinstance(obj, dict):
                    yield (
                        line_no,
                        CorpusError(
                            name,
                            line_no,
                            f"expected a JSON object, got {type(obj).__name__}",
                            f"make each line an object; {ACCEPTED_FORMS}",
                            code="not_an_object",
                        ),
                    )
                    continue
                yield line_no, obj
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CorpusError(
            name,
            None,
            f"cannot read file ({exc})",
            "check the file is complete and readable",
            code="unreadable_file",
        ) from exc


def iter_parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | CorpusError]]:
    """Yield ``(row number, row dict)``, streaming record batches (never the whole file)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for corrupt files
        raise CorpusError(
            str(path),
            None,
            f"cannot open as Parquet ({exc})",
            "check the file is a complete Parquet file",
            code="unreadable_file",
        ) from exc
    row_no = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row


def jsonable(value: Any) -> Any:
    """Parquet values made JSON-serialisable: dates as ISO strings, Decimals as strings, bytes as
    base64."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)
