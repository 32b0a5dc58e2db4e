"""The example store ``examples.sqlite``: global id -> text, source, provider, token counts, hash.

Crash safety and resume:

- :class:`ExampleStoreWriter` writes to ``examples.sqlite.partial`` beside the final path, in
  WAL mode with ``synchronous=FULL``; :meth:`~ExampleStoreWriter.flush` commits buffered rows
  durably (the builder flushes before it records a shard as done). Rows are upserts keyed on
  the global id, so a resumed build re-adding rows rewrites the same rows. Reopening the writer
  on an existing ``.partial`` continues it.
- :meth:`~ExampleStoreWriter.finalize` marks the store complete, then ``VACUUM INTO`` a temp
  file that :func:`~tributary_indexer.atomic_io.atomic_output` fsyncs and renames to
  ``examples.sqlite``, and deletes the ``.partial``. ``VACUUM INTO`` writes a fresh, compact,
  rollback-journal database whose bytes depend only on the rows, so a killed-and-resumed
  build produces a byte-identical file.
- So a killed build never leaves an ``examples.sqlite`` that looks complete: the final name
  only ever appears whole, and :class:`ExampleStore` also refuses a file without the
  ``complete`` marker.

:class:`ExampleStore` opens the file read-only (``mode=ro`` URI) with one connection per
thread, so a server can read from many threads at once. Nothing here uses pickle: messages
and metadata are stored as JSON text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_io import atomic_output
from ..errors import IndexIntegrityError, OutputDirectoryError
from .batching import TokenizedExample
from .corpus import CorpusRecord, RecordKind

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "StoredExample",
    "ExampleStoreWriter",
    "ExampleStore",
    "partial_path_for",
]

SCHEMA_VERSION = 1
_MAX_VARS = 500  # ids per IN (...) query, below every SQLite build's variable limit

_COLUMNS = (
    "id",
    "external_id",
    "kind",
    "text",
    "prompt",
    "response",
    "messages_json",
    "source",
    "provider",
    "n_tokens",
    "n_target_tokens",
    "n_truncated",
    "content_hash",
    "extra_json",
    "file",
    "line",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY,
    external_id TEXT,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt TEXT,
    response TEXT,
    messages_json TEXT,
    source TEXT NOT NULL,
    provider TEXT,
    n_tokens INTEGER NOT NULL,
    n_target_tokens INTEGER NOT NULL,
    n_truncated INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    extra_json TEXT NOT NULL,
    file TEXT,
    line INTEGER
);
CREATE INDEX IF NOT EXISTS examples_source ON examples(source);
CREATE INDEX IF NOT EXISTS examples_provider ON examples(provider);
CREATE INDEX IF NOT EXISTS examples_external_id ON examples(external_id);
"""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class StoredExample:
    """One row of the store: a training example's content, provenance and token counts."""

    id: int
    """Dense global id (the FAISS id)."""
    external_id: str | None
    kind: RecordKind
    text: str
    """The training text as one string (prompt + response; the chat-template rendering for
    messages)."""
    prompt: str | None
    response: str | None
    messages: list[dict[str, Any]] | None
    source: str
    provider: str | None
    n_tokens: int
    n_target_tokens: int
    n_truncated: int
    content_hash: str
    metadata: dict[str, Any] = field(default_factory=dict)
    file: str | None = None
    line: int | None = None

    @classmethod
    def from_record(
        cls, id: int, record: CorpusRecord, example: TokenizedExample, text: str | None = None
    ) -> StoredExample:
        """Build the row for ``record`` tokenised as ``example``.

        ``text`` is the rendered training text; pass ``tokenization.render_record(record,
        tokenizer)`` for messages records (the default joins ``role: content`` paragraphs).
        """
        if text is None:
            from .tokenization import render_record

            text = render_record(record)
        return cls(
            id=int(id),
            external_id=record.id,
            kind=record.kind,
            text=text,
            prompt=record.prompt,
            response=record.response,
            messages=record.messages,
            source=record.source,
            provider=record.provider,
            n_tokens=example.n_tokens,
            n_target_tokens=example.n_targets,
            n_truncated=example.n_truncated_tokens,
            content_hash=record.content_hash,
            metadata=dict(record.metadata),
            file=record.file,
            line=record.line,
        )

    def to_record(self) -> CorpusRecord:
        """The corpus record again (to re-tokenise it, e.g. for training-side token scores)."""
        return CorpusRecord(
            file=self.file or "",
            line=self.line or 0,
            id=self.external_id,
            kind=self.kind,
            text=self.text if self.kind == "text" else None,
            prompt=self.prompt,
            response=self.response,
            messages=self.messages,
            source=self.source,
            provider=self.provider,
            metadata=dict(self.metadata),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)

    def _row(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.external_id,
            self.kind,
            self.text,
            self.prompt,
            self.response,
            None if self.messages is None else _dumps(self.messages),
            self.source,
            self.provider,
            self.n_tokens,
            self.n_target_tokens,
            self.n_truncated,
            self.content_hash,
            _dumps(self.metadata),
            self.file,
            self.line,
        )

    @classmethod
    def _from_row(cls, row: Sequence[Any]) -> StoredExample:
        values = dict(zip(_COLUMNS, row, strict=True))
        messages_json = values.pop("messages_json")
        extra_json = values.pop("extra_json")
        return cls(
            messages=None if messages_json is None else json.loads(messages_json),
            metadata=json.loads(extra_json) if extra_json else {},
            **values,
        )


def partial_path_for(path: str | os.PathLike[str]) -> Path:
    """Where :class:`ExampleStoreWriter` writes before :meth:`~ExampleStoreWriter.finalize`."""
    target = Path(path)
    return target.with_name(target.name + ".partial")


class ExampleStoreWriter:
    """Writes ``examples.sqlite`` resumably (see the module docstring).

    Use :meth:`add` / :meth:`add_many`, :meth:`flush` at checkpoints, then :meth:`finalize`.
    Leaving the ``with`` block closes without finalising (the ``.partial`` stays for resume).
    """

    def __init__(self, path: str | os.PathLike[str], batch_size: int = 1000) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = Path(path)
        self.partial_path = partial_path_for(self.path)
        self.batch_size = batch_size
        self._buffer: list[tuple[Any, ...]] = []
        resuming = self.partial_path.exists()
        try:
            self._conn = sqlite3.connect(self.partial_path, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise OutputDirectoryError(
                f"cannot open {self.partial_path} for writing ({exc}); fix: check the output "
                "directory is writable, or delete the .partial file to start the store over"
            ) from exc
        version = self._meta("schema_version")
        if version is not None and version != str(SCHEMA_VERSION):
            self._conn.close()
            raise IndexIntegrityError(
                f"{self.partial_path} has example-store schema {version}, this code writes "
                f"{SCHEMA_VERSION}; fix: delete {self.partial_path} and rerun the build"
            )
        self._set_meta({"schema_version": str(SCHEMA_VERSION), "complete": "0"})
        if resuming:
            logger.info(
                "resuming example store %s (%d rows already written)",
                self.partial_path,
                self.count(),
            )

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, values: dict[str, str]) -> None:
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", values.items()
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def add(self, example: StoredExample) -> None:
        """Queue one row (an upsert on its id); written at the next full batch or :meth:`flush`."""
        self._buffer.append(example._row())
        if len(self._buffer) >= self.batch_size:
            self.flush()

    def add_many(self, examples: Iterable[StoredExample]) -> None:
        """Queue several rows (see :meth:`add`)."""
        for example in examples:
            self.add(example)

    def flush(self) -> None:
        """Commit queued rows in one transaction, durably (fsynced) before returning."""
        if not self._buffer:
            return
        placeholders = ", ".join("?" * len(_COLUMNS))
        sql = f"INSERT OR REPLACE INTO examples ({', '.join(_COLUMNS)}) VALUES ({placeholders})"
        try:
            with self._transaction():
                self._conn.executemany(sql, self._buffer)
        except sqlite3.OperationalError as exc:
            if "full" in str(exc).lower():
                raise OutputDirectoryError(
                    f"disk full while writing {self.partial_path}: free space and rerun; the build "
                    "resumes"
                ) from exc
            raise
        self._buffer.clear()

    def count(self) -> int:
        """Rows committed so far (call :meth:`flush` first to include queued rows)."""
        return int(self._conn.execute("SELECT COUNT(*) FROM examples").fetchone()[0])

    def count_in_range(self, id_start: int, id_end: int) -> int:
        """Committed rows with ``id_start <= id < id_end`` (lets a resumed build skip done
        ranges)."""
        sql = "SELECT COUNT(*) FROM examples WHERE id >= ? AND id < ?"
        return int(self._conn.execute(sql, (id_start, id_end)).fetchone()[0])

    def finalize(self, expected_count: int | None = None) -> Path:
        """Flush, check, mark complete and atomically publish ``examples.sqlite``; return its path.

        Checks that ids are exactly ``0..n-1`` (dense, as FAISS stores them) and, when given,
        that ``n == expected_count``; raises :class:`IndexIntegrityError` otherwise.
        """
        self.flush()
        n, lo, hi = self._conn.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM examples").fetchone()
        if expected_count is not None and n != expected_count:
            raise IndexIntegrityError(
                f"example store has {n} rows but the index has {expected_count} examples; fix: "
                "rerun the build so it resumes and writes the missing rows"
            )
        if n and (lo != 0 or hi != n - 1):
            raise IndexIntegrityError(
                f"example store ids are not dense: {n} rows with ids {lo}..{hi}; fix: assign ids "
                "with corpus.assign_ids() after filtering, then rebuild"
            )
        self._set_meta({"complete": "1", "n_examples": str(n)})
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            with atomic_output(self.path) as tmp:
                self._conn.execute("VACUUM INTO ?", (str(tmp),))
        except sqlite3.OperationalError as exc:
            self._set_meta({"complete": "0"})
            if "full" in str(exc).lower():
                raise OutputDirectoryError(
                    f"disk full while writing {self.path}: free space and rerun; the build resumes"
                ) from exc
            raise
        self.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(self.partial_path) + suffix).unlink()
        logger.info("example store %s complete (%d rows)", self.path, n)
        return self.path

    def close(self) -> None:
        """Close without finalising; queued rows are flushed, the ``.partial`` stays for resume."""
        conn = getattr(self, "_conn", None)
        if conn is None:
            return
        try:
            self.flush()
        finally:
            conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> ExampleStoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._buffer.clear()  # do not commit rows queued by a failing batch
        self.close()


class ExampleStore:
    """Read-only access to a complete ``examples.sqlite``; safe to share across threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            hint = (
                f"only {partial_path_for(self.path).name} exists: the build did not finish; rerun "
                "it"
                if partial_path_for(self.path).exists()
                else "build the index first (or check the path)"
            )
            raise IndexIntegrityError(f"example store {self.path} not found; fix: {hint}")
        self._uri = self.path.resolve().as_uri() + "?mode=ro"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        conn = self._conn()
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise IndexIntegrityError(
                f"{self.path} is not a readable example store ({exc}); fix: rebuild the index"
            ) from exc
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise IndexIntegrityError(
                f"{self.path} has example-store schema {meta.get('schema_version')}, this code "
                f"reads {SCHEMA_VERSION}; fix: rebuild the index with this version of tributary"
            )
        if meta.get("complete") != "1":
            raise IndexIntegrityError(
                f"{self.path} is incomplete (the build was interrupted); fix: rerun the build"
            )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
            except sqlite3.Error as exc:
                raise IndexIntegrityError(
                    f"cannot open {self.path} ({exc}); fix: check the file and its permissions"
                ) from exc
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _select(self, where: str, params: Sequence[Any]) -> list[StoredExample]:
        rows = self._conn().execute(
            f"SELECT {', '.join(_COLUMNS)} FROM examples WHERE {where}", params
        )
        return [StoredExample._from_row(row) for row in rows.fetchall()]

    def get(self, id: int) -> StoredExample | None:
        """The example with global id ``id``, or None."""
        found = self._select("id = ?", (int(id),))
        return found[0] if found else None

    def get_many(self, ids: Iterable[int]) -> dict[int, StoredExample]:
        """Examples by global id; ids not in the store are absent from the result."""
        wanted = sorted({int(i) for i in ids})
        result: dict[int, StoredExample] = {}
        for start in range(0, len(wanted), _MAX_VARS):
            chunk = wanted[start : start + _MAX_VARS]
            for example in self._select(f"id IN ({', '.join('?' * len(chunk))})", chunk):
                result[example.id] = example
        return result

    def get_by_external_id(self, external_id: str) -> list[StoredExample]:
        """Examples whose record ``id`` field was ``external_id`` (usually one)."""
        return self._select("external_id = ? ORDER BY id", (external_id,))

    def ids_of_record_ids(self, record_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Sorted int64 ids of the examples whose record ``id`` is in ``record_ids``, and the record
        ids not found."""
        wanted = sorted(set(record_ids))
        found: dict[str, list[int]] = {}
        for start in range(0, len(wanted), _MAX_VARS):
            chunk = wanted[start : start + _MAX_VARS]
            sql = (
                "SELECT id, external_id FROM examples WHERE external_id IN "
                f"({', '.join('?' * len(chunk))})"
            )
            for example_id, external_id in self._conn().execute(sql, chunk).fetchall():
                found.setdefault(external_id, []).append(int(example_id))
        ids = np.array(sorted(i for group in found.values() for i in group), dtype=np.int64)
        return ids, [r for r in wanted if r not in found]

    def count(self) -> int:
        """Number of examples."""
        return int(self._conn().execute("SELECT COUNT(*) FROM examples").fetchone()[0])

    def ids_matching(
        self, source: str | Sequence[str] | None = None, provider: str | Sequence[str] | None = None
    ) -> np.ndarray:
        """Sorted int64 ids whose source is in ``source`` and provider in ``provider``.

        Each filter is a value or a list of values; None means any. The array feeds FAISS id
        selectors directly (``set(arr.tolist())`` for a Python set).
        """
        clauses: list[str] = []
        params: list[Any] = []
        for column, wanted in (("source", source), ("provider", provider)):
            if wanted is None:
                continue
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            if not values:
                return np.zeros(0, dtype=np.int64)
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            params.extend(values)
        where = " AND ".join(clauses) if clauses else "1"
        rows = (
            self._conn()
            .execute(f"SELECT id FROM examples WHERE {where} ORDER BY id", params)
            .fetchall()
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def sources(self) -> list[str]:
        """Distinct sources, sorted."""
        return [
            r[0]
            for r in self._conn().execute("SELECT DISTINCT source FROM examples ORDER BY source")
        ]

    def providers(self) -> list[str]:
        """Distinct non-null providers, sorted."""
        sql = "SELECT DISTINCT provider FROM examples WHERE provider IS NOT NULL ORDER BY provider"
        return [r[0] for r in self._conn().execute(sql)]

    def iter_identities(self, below: int) -> Iterator[tuple[int, str | None, str]]:
        """``(id, external_id, content_hash)`` of every example with id < ``below``, in id order."""
        sql = "SELECT id, external_id, content_hash FROM examples WHERE id < ? ORDER BY id"
        yield from self._conn().execute(sql, (int(below),))

    def first_of_kind(self, kind: RecordKind, limit: int) -> list[StoredExample]:
        """Up to ``limit`` examples of one record kind, lowest ids first."""
        return self._select("kind = ? ORDER BY id LIMIT ?", (kind, int(limit)))

    def composition(
        self, exclude: np.ndarray | None = None
    ) -> list[tuple[str, str | None, int, int]]:
        """``(group_by, key, examples, tokens)`` per provider then per source (key None: no
        provider).

        ``exclude`` (ids, e.g. removed examples) are not counted; a group left empty is dropped.
        """
        gone: dict[tuple[str, str | None], list[int]] = {}
        wanted = [int(i) for i in exclude] if exclude is not None else []
        for start in range(0, len(wanted), _MAX_VARS):
            chunk = wanted[start : start + _MAX_VARS]
            sql = (
                "SELECT provider, source, n_tokens FROM examples WHERE id IN "
                f"({', '.join('?' * len(chunk))})"
            )
            for provider, source, n_tokens in self._conn().execute(sql, chunk).fetchall():
                for key in (("provider", provider), ("source", source)):
                    counts = gone.setdefault(key, [0, 0])
                    counts[0] += 1
                    counts[1] += int(n_tokens)
        out: list[tuple[str, str | None, int, int]] = []
        for column in ("provider", "source"):
            sql = (
                f"SELECT {column}, COUNT(*), SUM(n_tokens) FROM examples GROUP BY {column} ORDER "
                f"BY {column}"
            )
            for key, n, tokens in self._conn().execute(sql):
                minus = gone.get((column, key), [0, 0])
                if int(n) - minus[0] > 0:
                    out.append((column, key, int(n) - minus[0], int(tokens or 0) - minus[1]))
        return out

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> ExampleStore:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()
