"""``tributary index compact``: rewrite the shards and the example store without the tombstoned
examples.

The surviving examples keep their order and are renumbered densely (FAISS ids and store ids stay
``0..n-1``); shards keep their boundaries (a shard left empty is dropped); compressed shards are
refilled through the quantizer the index was trained with. The projector, the Fisher and the
damping are kept frozen, as ``index add`` keeps them: the preconditioner still includes the
removed examples' gradients (rebuild the index to drop them from it too), and the manifest says
so in its ``build_config.compactions`` entry, with what was removed and when.

Crash safety, like the build: everything new is written under ``compaction/new/`` (each file
atomically), and ``compaction/state.json`` pins what is being compacted and when, so a rerun
after a kill redoes the same deterministic work. Once every new file is durable the state says
``swap``, and the files are moved over the old ones one by one (each an atomic rename, so a
rerun finishes the moves that did not happen), the tombstones left over are renumbered, and the
new manifest is written last. A killed and rerun compaction ends byte-identical to an
uninterrupted one. The tombstone lock is held throughout, so no removal interleaves.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_io import atomic_output, atomic_write_json, sha256_file
from ..data.example_store import ExampleStore, ExampleStoreWriter
from ..data.tombstones import (
    COMPACTION_DIR,
    SWAP_MARKER,
    TOMBSTONES_NAME,
    Tombstones,
    id_space_of,
    read_tombstones,
    tombstone_lock,
    write_tombstones,
)
from ..errors import IndexIntegrityError
from .crash_points import crash_point
from .factory_choice import recorded_factory
from .layout import IndexPaths
from .manifest import Manifest, ShardInfo, utc_timestamp
from .shards import is_flat, read_shard, write_shard
from .verification import verify_index

logger = logging.getLogger(__name__)

__all__ = ["CompactionSummary", "compact_index"]

HESSIAN_NOTE = (
    "frozen: the projector, Fisher and damping are those of the index before compaction and still "
    "include the removed examples; rebuild the index to drop them from the preconditioner too"
)
_STORE_CHUNK = 500


@dataclass
class CompactionSummary:
    """What a compaction did."""

    examples_before: int = 0
    examples_after: int = 0
    removed: int = 0
    shards: int = 0

    def lines(self) -> list[str]:
        if not self.removed:
            return [f"nothing to compact: no tombstones ({self.examples_before} examples)"]
        return [
            f"removed {self.removed} tombstoned examples: {self.examples_before} -> "
            f"{self.examples_after} examples in {self.shards} shard"
            + ("s" if self.shards != 1 else ""),
            "Fisher, projector and damping kept frozen (see the manifest)",
        ]


def compact_index(root: str | os.PathLike[str]) -> CompactionSummary:
    """Compact the index in ``root`` (resuming a killed compaction); see the module docstring."""
    paths = IndexPaths(Path(root))
    work = paths.root / COMPACTION_DIR
    with tombstone_lock(paths.root, blocking=False):
        state = _read_state(work)
        if state is None:
            shutil.rmtree(
                work, ignore_errors=True
            )  # nothing pinned: leftovers of a finished run, or of none
            manifest = Manifest.load(paths.root)
            tombstones = read_tombstones(paths.root, id_space_of(manifest))
            if not len(tombstones):
                return CompactionSummary(manifest.n_examples, manifest.n_examples)
            problems = verify_index(paths.root)
            if problems:
                raise IndexIntegrityError(
                    f"{paths.root} failed verification, not compacting it: "
                    + "; ".join(problems[:3])
                    + "; fix: restore the damaged files first (`tributary index verify` lists them)"
                )
            state = {
                "phase": "write",
                "source_manifest_sha256": sha256_file(paths.manifest),
                "compacted_at": utc_timestamp(),
                "tombstones": tombstones.to_dict(),
            }
            work.mkdir()
            atomic_write_json(work / "state.json", state)
        removed = np.asarray(state["tombstones"]["ids"], dtype=np.int64)
        if state["phase"] == "write":
            if sha256_file(paths.manifest) != state["source_manifest_sha256"]:
                raise IndexIntegrityError(
                    f"{paths.root} changed since the compaction in {work} started; fix: delete "
                    f"{work} and run `tributary index compact` again"
                )
            new_manifest = _write_compacted(
                paths, Manifest.load(paths.root), removed, work / "new", state
            )
            state = dict(state, phase="swap", manifest=new_manifest.to_dict())
            atomic_write_json(work / "state.json", state)
            crash_point("compact_before_swap")
        marker = (
            work / SWAP_MARKER
        )  # from here on a running server refuses rather than read half-replaced files
        if not marker.exists():
            marker.touch()
            _fsync_dir(work)
        new_manifest = Manifest.from_dict(state["manifest"], source=str(work / "state.json"))
        old_space = (
            f"{state['manifest']['created_at']}#{len(new_manifest.build_config['compactions']) - 1}"
        )
        _swap(
            paths,
            work / "new",
            new_manifest,
            removed,
            int(state["tombstones"]["generation"]),
            old_space,
        )
        (work / "state.json").unlink()  # done: a run killed while removing the rest only cleans up
        _fsync_dir(work)
        crash_point("compact_before_cleanup")
        shutil.rmtree(work)
        entry = new_manifest.build_config["compactions"][-1]
        return CompactionSummary(
            entry["examples_before"],
            entry["examples_after"],
            entry["removed"],
            len(new_manifest.shards),
        )


def _read_state(work: Path) -> dict[str, Any] | None:
    path = work / "state.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexIntegrityError(
            f"{path} is unreadable ({exc}); fix: delete {work} and rerun the compaction"
        ) from exc


def _shard_vectors(paths: IndexPaths, n: int, shard: ShardInfo, compressed: bool) -> np.ndarray:
    """The stored vectors of old shard ``n`` ``[rows, D]`` (exact file or flat shard)."""
    if compressed:
        return np.load(paths.exact_vectors(n), mmap_mode="r")
    index = read_shard(paths.root / shard.file, mmap=False)
    return (
        index.index.reconstruct_n(0, index.ntotal)  # type: ignore[attr-defined]
        if index.ntotal
        else np.zeros((0, index.d), np.float32)
    )


def _write_compacted(
    paths: IndexPaths, manifest: Manifest, removed: np.ndarray, new_dir: Path, state: dict[str, Any]
) -> Manifest:
    """Write the new shards, exact vectors and store under ``new_dir``; return the new manifest."""
    import faiss

    factory = recorded_factory(manifest)
    compressed = not is_flat(factory)
    new_paths = IndexPaths(new_dir)
    new_paths.shards_dir.mkdir(parents=True, exist_ok=True)
    trained = None
    if compressed:
        new_paths.vectors_dir.mkdir(parents=True, exist_ok=True)
        trained = faiss.read_index(str(paths.root / manifest.shards[0].file))
        trained.reset()
    shards: list[ShardInfo] = []
    files = {k: v for k, v in manifest.files.items() if not k.startswith("vectors/")}
    next_id = 0
    for n, shard in enumerate(manifest.shards):
        old_ids = np.arange(shard.id_start, shard.id_end, dtype=np.int64)
        keep = ~np.isin(old_ids, removed)
        if not keep.any():
            continue
        m = len(shards)
        vectors = np.asarray(_shard_vectors(paths, n, shard, compressed))[keep]
        ids = np.arange(next_id, next_id + vectors.shape[0], dtype=np.int64)
        if compressed:
            with atomic_output(new_paths.exact_vectors(m)) as tmp, open(tmp, "wb") as f:
                np.save(f, vectors)
            files[new_paths.relative(new_paths.exact_vectors(m))] = sha256_file(
                new_paths.exact_vectors(m)
            )
        write_shard(new_paths.shard(m), vectors.astype(np.float32), ids, factory, trained=trained)
        shards.append(
            ShardInfo(
                file=new_paths.relative(new_paths.shard(m)),
                rows=int(vectors.shape[0]),
                id_start=next_id,
                id_end=next_id + int(vectors.shape[0]),
                sha256=sha256_file(new_paths.shard(m)),
            )
        )
        next_id += int(vectors.shape[0])
        crash_point(f"compact_after_shard_{m}")
    _write_store(paths, new_paths, manifest.n_examples, removed, next_id)
    files[new_paths.relative(new_paths.store)] = sha256_file(new_paths.store)
    crash_point("compact_after_store")
    data = copy.deepcopy(manifest.to_dict())
    build_config = data["build_config"]
    build_config["additions"] = [
        dict(a, id_start=_renumber(a["id_start"], removed), id_end=_renumber(a["id_end"], removed))
        for a in build_config.get("additions", [])
    ]
    if "summary" in build_config:
        build_config["summary"]["examples"] = next_id
    build_config["compactions"] = list(build_config.get("compactions", [])) + [
        {
            "compacted_at": state["compacted_at"],
            "examples_before": manifest.n_examples,
            "examples_after": next_id,
            "removed": int(len(removed)),
            "removals": state["tombstones"]["removals"],
            "hessian": HESSIAN_NOTE,
        }
    ]
    data.update(
        shards=[dataclasses.asdict(s) for s in shards],
        n_examples=next_id,
        files=files,
        build_config=build_config,
    )
    return Manifest.from_dict(data)


def _renumber(old_id: int, removed: np.ndarray) -> int:
    """The new id of old id ``old_id`` (or of the first survivor after it): removed ids below it no
    longer count."""
    return int(old_id - np.searchsorted(removed, old_id))


def _write_store(
    paths: IndexPaths, new_paths: IndexPaths, n_old: int, removed: np.ndarray, n_new: int
) -> None:
    """Copy the surviving rows into a new store, renumbered in order (deterministic bytes)."""
    with ExampleStore(paths.store) as old, ExampleStoreWriter(new_paths.store) as writer:
        next_id = 0
        for start in range(0, n_old, _STORE_CHUNK):
            ids = np.arange(start, min(start + _STORE_CHUNK, n_old), dtype=np.int64)
            ids = ids[~np.isin(ids, removed)]
            rows = old.get_many(ids.tolist())
            for old_id in ids.tolist():
                writer.add(dataclasses.replace(rows[old_id], id=next_id))
                next_id += 1
        writer.finalize(expected_count=n_new)


def _swap(
    paths: IndexPaths,
    new_dir: Path,
    manifest: Manifest,
    removed: np.ndarray,
    pinned_generation: int,
    old_space: str,
) -> None:
    """Move the new files over the old ones, renumber leftover tombstones, write the manifest
    last."""
    moves = sorted(
        p
        for p in new_dir.rglob("*")
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".partial")
    )
    for i, source in enumerate(moves):
        target = paths.root / source.relative_to(new_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        _fsync_dir(target.parent)
        crash_point(f"compact_swap_{i}")
    wanted = {s.file for s in manifest.shards} | set(manifest.files)
    for folder in (paths.shards_dir, paths.vectors_dir):
        for stale in sorted(folder.glob("shard-*")) if folder.is_dir() else []:
            if paths.relative(stale) not in wanted:
                stale.unlink()
    _carry_tombstones(paths, removed, pinned_generation, old_space, id_space_of(manifest))
    crash_point("compact_before_manifest")
    manifest.save(paths.root)
    logger.info("compacted %s: %d examples", paths.root, manifest.n_examples)


def _carry_tombstones(
    paths: IndexPaths, removed: np.ndarray, pinned_generation: int, old_space: str, new_space: str
) -> None:
    """Tombstones added after the compaction was pinned move to the new ids; the compacted ones
    go."""
    path = paths.root / TOMBSTONES_NAME
    if not path.is_file():
        return
    try:
        current = read_tombstones(paths.root, old_space)
    except IndexIntegrityError:
        read_tombstones(
            paths.root, new_space
        )  # already carried over by an earlier, killed run (raises if neither)
        return
    extra = np.setdiff1d(current.ids, removed)
    if not len(extra):
        path.unlink()
        _fsync_dir(paths.root)
        return
    later = current.removals[pinned_generation:]  # the removals that added exactly these ids
    renumbered = (extra - np.searchsorted(removed, extra)).astype(np.int64)
    write_tombstones(paths.root, Tombstones(new_space, renumbered, len(later), later))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
