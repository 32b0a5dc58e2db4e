"""Checking a corpus before a build loads its model or writes anything.

:func:`check_corpus` reads every record once: a malformed record, a missing or unsupported input,
or a corpus with no usable record fails here, naming the file and line, so a build that fails on
its corpus leaves nothing behind and the rerun after the fix starts clean. It also finds
**duplicate record ids**: a record's ``id`` names it in every result and in removals, so ids must
be unique. A build refuses the second use of an id, naming both places; with ``--skip-bad`` the
later record is skipped instead (and listed in the skip report). Detection keeps 8 bytes per id
(a sorted array of hashes); only ids whose hash repeats are looked at again, by a second read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic_io import atomic_write_text
from ..errors import CorpusError
from .corpus import CorpusRecord, CorpusStats, iter_records

logger = logging.getLogger(__name__)

__all__ = ["CorpusCheck", "UniqueIds", "check_corpus", "id_hash", "write_skip_report"]


def id_hash(text: str) -> int:
    """A 64-bit hash of a record id or content hash (for sets that must stay small in memory)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _duplicate_error(record: CorpusRecord, first: str) -> CorpusError:
    return CorpusError(
        record.file,
        record.line,
        f"record id {record.id!r} is already used at {first}",
        "give every record its own id (it names the record in results and removals), or drop the "
        "duplicate; --skip-bad skips the later one",
        code="duplicate_id",
    )


@dataclass
class CorpusCheck:
    """What :func:`check_corpus` found."""

    stats: CorpusStats
    duplicate_ids: frozenset[str] = field(default_factory=frozenset)
    """Ids used more than once (only with ``skip_bad``; otherwise the check raised)."""

    def lines(self) -> list[str]:
        """What a build prints about the corpus beyond the counts."""
        out = []
        if self.stats.skipped_files:
            names = ", ".join(os.path.basename(f) for f in self.stats.skipped_files[:5])
            more = (
                f" and {len(self.stats.skipped_files) - 5} more"
                if len(self.stats.skipped_files) > 5
                else ""
            )
            out.append(
                f"not corpus files, not read: {len(self.stats.skipped_files)} ({names}{more})"
            )
        if self.stats.empty_files:
            out.append(f"empty corpus files: {', '.join(self.stats.empty_files)}")
        return out


def check_corpus(paths: Sequence[str | os.PathLike[str]], *, skip_bad: bool) -> CorpusCheck:
    """Validate every record of ``paths`` (see the module docstring); raise :class:`CorpusError` on
    the first problem."""
    stats = CorpusStats()
    hashes = array("Q")
    for record in iter_records(paths, skip_bad=skip_bad, stats=stats):
        if record.id is not None:
            hashes.append(id_hash(record.id))
    if stats.records == 0:
        why = []
        if stats.empty_files:
            why.append(f"empty files: {', '.join(stats.empty_files)}")
        if stats.bad:
            why.append(f"{stats.bad} malformed records skipped (first: {stats.bad_examples[0][2]})")
        raise CorpusError(
            None,
            None,
            "the corpus has no usable record" + (f" ({'; '.join(why)})" if why else ""),
            "check the --corpus paths and files",
            code="empty_corpus",
        )
    ordered = (
        np.sort(np.frombuffer(hashes, dtype=np.uint64))
        if len(hashes)
        else np.zeros(0, dtype=np.uint64)
    )
    repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    duplicates: set[str] = set()
    if repeated:
        first: dict[str, str] = {}
        for record in iter_records(paths, skip_bad=skip_bad):
            if record.id is None or id_hash(record.id) not in repeated:
                continue
            if record.id not in first:
                first[record.id] = f"{record.file}:{record.line}"
                continue
            if not skip_bad:
                raise _duplicate_error(record, first[record.id])
            duplicates.add(record.id)
        if duplicates:
            logger.warning(
                "corpus: %d record id(s) used more than once; the later records are skipped "
                "(--skip-bad)",
                len(duplicates),
            )
    logger.info("corpus check: %s", stats.summary())
    return CorpusCheck(stats, frozenset(duplicates))


class UniqueIds:
    """Skips the later records of ids used more than once (``CorpusCheck.duplicate_ids``),
    deterministically."""

    def __init__(self, duplicate_ids: frozenset[str]) -> None:
        self.duplicate_ids = duplicate_ids
        self._first: dict[str, str] = {}

    def error(self, record: CorpusRecord) -> CorpusError | None:
        """The error for ``record`` when it reuses an id, else None (and remembers its first
        use)."""
        if record.id is None or record.id not in self.duplicate_ids:
            return None
        if record.id in self._first:
            return _duplicate_error(record, self._first[record.id])
        self._first[record.id] = f"{record.file}:{record.line}"
        return None


def write_skip_report(stats: CorpusStats, path: Path) -> None:
    """One JSON line ``{file, line, code, reason}`` per skipped record (and a last line when the
    list was cut)."""
    lines = "".join(
        json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n" for item in stats.skipped
    )
    if stats.bad > len(stats.skipped):
        lines += (
            json.dumps({"truncated": True, "listed": len(stats.skipped), "skipped": stats.bad})
            + "\n"
        )
    atomic_write_text(path, lines)
    logger.warning("%d bad records skipped; each is listed in %s", stats.bad, path)
