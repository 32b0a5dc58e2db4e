"""Tombstones: examples removed from an index, filtered out of every answer until compaction.

A takedown (``tributary index remove``, or the service's admin route) does not rewrite any
shard: it adds the examples' global ids to ``tombstones.json`` in the index directory, written
atomically under an exclusive lock (``.tombstones.lock``), so concurrent removals never lose
one another's ids. Searches drop tombstoned ids (asking for enough extra candidates that top-k
stays full), example lookups refuse them, and ``tributary index compact`` rewrites the shards
and the example store without them.

The file is bound to the *id space* of the index it refers to (:func:`id_space_of`: the
manifest's ``created_at`` and how many compactions renumbered its ids), so tombstones written
for a compacted index are never applied to the ids of the index before it.
A reader keeps a :class:`TombstoneWatcher`, which re-reads the file when its ``stat`` changes:
one ``stat`` call per request makes a removal effective on the next request of a running server.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_io import atomic_write_json
from ..errors import IndexIntegrityError, OutputDirectoryError

logger = logging.getLogger(__name__)

__all__ = [
    "TOMBSTONES_NAME",
    "LOCK_NAME",
    "COMPACTION_DIR",
    "SWAP_MARKER",
    "Removal",
    "Tombstones",
    "TombstoneBusyError",
    "id_space_of",
    "read_tombstones",
    "write_tombstones",
    "tombstone_lock",
    "add_removal",
    "TombstoneWatcher",
    "verify_tombstones",
]

TOMBSTONES_NAME = "tombstones.json"
LOCK_NAME = ".tombstones.lock"
COMPACTION_DIR = "compaction"
"""Where ``tributary index compact`` works; while it holds :data:`SWAP_MARKER`, the index files are
being replaced."""
SWAP_MARKER = "swapping"
FORMAT_VERSION = 1


class TombstoneBusyError(IndexIntegrityError):
    """Another process holds the tombstone lock (a removal or a compaction is running)."""


def id_space_of(manifest: Any) -> str:
    """The identity of a manifest's global ids: they change only when a compaction renumbers
    them."""
    compactions = (
        manifest.build_config.get("compactions", [])
        if hasattr(manifest, "build_config")
        else manifest["build_config"].get("compactions", [])
    )
    created = manifest.created_at if hasattr(manifest, "created_at") else manifest["created_at"]
    return f"{created}#{len(compactions)}"


@dataclass(frozen=True)
class Removal:
    """One removal: what was asked for, when, and how many examples it newly tombstoned."""

    removed_at: str
    selector: dict[str, Any]
    """``{"record_id": [...]}``, ``{"provider": P}``, ``{"source": S}`` or
    ``{"example_id": [...]}``."""
    count: int
    reason: str | None = None


@dataclass(frozen=True)
class Tombstones:
    """The removed ids of one id space (sorted, unique int64) and the removals that put them
    there."""

    id_space: str
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    generation: int = 0
    removals: tuple[Removal, ...] = ()

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def mask(self, ids: np.ndarray) -> np.ndarray:
        """True where ``ids`` are removed (any shape)."""
        if not len(self):
            return np.zeros(np.shape(ids), dtype=bool)
        return np.isin(ids, self.ids)

    def __contains__(self, example_id: object) -> bool:
        if not len(self) or not isinstance(example_id, (int, np.integer)):
            return False
        pos = int(np.searchsorted(self.ids, example_id))
        return pos < len(self) and int(self.ids[pos]) == int(example_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "id_space": self.id_space,
            "generation": self.generation,
            "ids": [int(i) for i in self.ids],
            "removals": [asdict(r) for r in self.removals],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Tombstones:
        """Parse strictly; raises :class:`IndexIntegrityError` naming what is wrong."""

        def bad(what: str) -> IndexIntegrityError:
            return IndexIntegrityError(
                f"{source}: {what}; fix: restore the file from a backup, or redo the removals "
                "(`tributary index remove`) after deleting it"
            )

        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            raise bad(f"not a tombstone file of format {FORMAT_VERSION}")
        ids = data.get("ids")
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
        ):
            raise bad("'ids' must be a list of non-negative integers")
        array = np.asarray(ids, dtype=np.int64)
        if len(array) > 1 and not bool(np.all(array[1:] > array[:-1])):
            raise bad("'ids' must be sorted and unique")
        try:
            removals = tuple(Removal(**r) for r in data.get("removals", []))
        except TypeError as exc:
            raise bad(f"malformed 'removals' ({exc})") from exc
        generation = data.get("generation")
        if not isinstance(data.get("id_space"), str) or not isinstance(generation, int):
            raise bad("'id_space' must be a string and 'generation' an integer")
        return cls(id_space=data["id_space"], ids=array, generation=generation, removals=removals)


def read_tombstones(root: str | os.PathLike[str], id_space: str) -> Tombstones:
    """The tombstones of the index in ``root`` (none when the file is absent).

    A file written for another id space (a compacted index's) raises :class:`IndexIntegrityError`.
    """
    path = Path(root) / TOMBSTONES_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Tombstones(id_space)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IndexIntegrityError(
            f"{path} is not JSON ({exc}); fix: restore it from a backup"
        ) from exc
    tombstones = Tombstones.from_dict(data, str(path))
    if tombstones.id_space != id_space:
        raise IndexIntegrityError(
            f"{path} was written for the ids of another index state ({tombstones.id_space!r}, "
            f"this index is {id_space!r}); fix: finish the compaction (`tributary index compact`) "
            "or restore the matching manifest"
        )
    return tombstones


def write_tombstones(root: str | os.PathLike[str], tombstones: Tombstones) -> None:
    """Write ``tombstones.json`` atomically (temp file, fsync, rename)."""
    atomic_write_json(Path(root) / TOMBSTONES_NAME, tombstones.to_dict())


@contextlib.contextmanager
def tombstone_lock(root: str | os.PathLike[str], blocking: bool = True) -> Iterator[None]:
    """Hold the index's exclusive tombstone lock (``flock``; released by the OS if the holder
    dies)."""
    path = Path(root) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputDirectoryError(
            f"cannot open {path} to lock the index for a removal ({exc.strerror}); fix: run it "
            "where the index directory is writable (a read-only mount cannot take removals)"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise TombstoneBusyError(
                    f"{root} is locked by a running removal or compaction; fix: retry when it "
                    "has finished"
                ) from exc
            raise
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def add_removal(
    root: str | os.PathLike[str],
    id_space: str,
    ids: np.ndarray,
    selector: dict[str, Any],
    removed_at: str,
    reason: str | None = None,
    blocking: bool = True,
) -> tuple[Tombstones, int]:
    """Tombstone ``ids`` (read, merge, write atomically, under the lock); return the new state and
    how many of ``ids`` were not already removed."""
    with tombstone_lock(root, blocking=blocking):
        try:
            on_disk = id_space_of(
                json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexIntegrityError(
                f"cannot read the manifest of {root} ({exc}); fix: check the index directory"
            ) from exc
        if on_disk != id_space:
            raise IndexIntegrityError(
                f"the index in {root} was compacted since its ids were read ({id_space!r}, now "
                f"{on_disk!r}); fix: reload it (restart the server) and remove again"
            )
        current = read_tombstones(root, id_space)
        merged = np.union1d(current.ids, np.asarray(ids, dtype=np.int64))
        added = int(len(merged) - len(current))
        if added == 0:
            return current, 0
        updated = Tombstones(
            id_space,
            merged,
            current.generation + 1,
            current.removals + (Removal(removed_at, selector, added, reason),),
        )
        write_tombstones(root, updated)
        logger.info(
            "tombstoned %d examples in %s (generation %d, %d in all)",
            added,
            root,
            updated.generation,
            len(updated),
        )
        return updated, added


def verify_tombstones(root: str | os.PathLike[str], id_space: str, n_examples: int) -> list[str]:
    """Problems with ``tombstones.json`` (empty: fine or absent)."""
    try:
        tombstones = read_tombstones(root, id_space)
    except IndexIntegrityError as exc:
        return [str(exc)]
    problems = []
    if len(tombstones) and int(tombstones.ids[-1]) >= n_examples:
        problems.append(
            f"{TOMBSTONES_NAME}: id {int(tombstones.ids[-1])} is past the index's {n_examples} "
            "examples"
        )
    counted = sum(r.count for r in tombstones.removals)
    if counted != len(tombstones):
        problems.append(
            f"{TOMBSTONES_NAME}: holds {len(tombstones)} ids but its removals count {counted}"
        )
    if tombstones.generation != len(tombstones.removals):
        problems.append(
            f"{TOMBSTONES_NAME}: generation {tombstones.generation} but {len(tombstones.removals)} "
            "removals"
        )
    return problems


class TombstoneWatcher:
    """The current tombstones of a loaded index, re-read when the file changes (one ``stat`` a
    call).

    A file that cannot be read, or one written for another id space (the index was compacted
    under a running server), never loosens what was already removed: the last good set stays.
    """

    def __init__(self, root: str | os.PathLike[str], id_space: str):
        self.path = Path(root) / TOMBSTONES_NAME
        self.root = Path(root)
        self.id_space = id_space
        self._key: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self.current = read_tombstones(root, id_space)
        self._key = self._stat()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def refresh(self) -> Tombstones:
        """The tombstones now (re-read only when the file's inode, mtime or size changed)."""
        key = self._stat()
        if key == self._key:
            return self.current
        with self._lock:
            if key == self._key:
                return self.current
            try:
                fresh = read_tombstones(self.root, self.id_space)
            except IndexIntegrityError as exc:
                logger.error("keeping the %d tombstones already loaded: %s", len(self.current), exc)
                self._key = key
                return self.current
            if len(np.setdiff1d(self.current.ids, fresh.ids)):
                logger.error("%s dropped ids that were removed; keeping them removed", self.path)
                fresh = Tombstones(
                    fresh.id_space,
                    np.union1d(fresh.ids, self.current.ids),
                    fresh.generation,
                    fresh.removals,
                )
            self.current, self._key = fresh, key
            logger.info(
                "tombstones reloaded: generation %d, %d removed", fresh.generation, len(fresh)
            )
            return fresh


@dataclass(frozen=True)
class Selection:
    """The examples a removal selector matched: their ids, and the record ids asked for but not
    stored."""

    selector: dict[str, Any]
    ids: np.ndarray
    not_found: list[str]


def select_examples(
    store: Any,
    record_ids: list[str] | None = None,
    provider: str | None = None,
    source: str | None = None,
) -> Selection:
    """Resolve exactly one selector against an :class:`~.example_store.ExampleStore`."""
    given = [
        name
        for name, value in (("record_id", record_ids), ("provider", provider), ("source", source))
        if value is not None
    ]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of record ids, provider or source (got {given or 'none'})"
        )
    if record_ids is not None:
        ids, missing = store.ids_of_record_ids(record_ids)
        return Selection({"record_id": sorted(set(record_ids))}, ids, missing)
    if provider is not None:
        return Selection({"provider": provider}, store.ids_matching(provider=provider), [])
    return Selection({"source": source}, store.ids_matching(source=source), [])
