"""``tributary index verify``: is an index whole, and was it built from this model?

:func:`verify_manifest` checks the manifest against the files it lists (presence, sha256, shard
id ranges), :func:`verify_index` adds what FAISS and the example store hold (headers, vector
counts, ids, rows, tombstones, an unfinished compaction), :func:`verify_model` compares a model
directory's hashes with the ones the index was built from. Each returns its problems, one
sentence each that says what to do; an empty list means all good.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from ..atomic_io import sha256_file
from ..errors import IndexIntegrityError
from .manifest import SHARD_HEADER, Manifest, hash_model_files, hash_tokenizer

logger = logging.getLogger(__name__)

__all__ = ["verify_index", "verify_manifest", "verify_model"]


def _safe_relative(name: str) -> bool:
    pure = PurePosixPath(name)
    return bool(name) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in name


def verify_manifest(directory: str | os.PathLike[str], check_checksums: bool = True) -> list[str]:
    """Problems with an index directory, one sentence each (empty list: all good).

    Checks the manifest parses, shard and other files exist (inside the directory) with their
    sha256 (skip with ``check_checksums=False``), each shard's ``rows == id_end - id_start``,
    shard id ranges tile ``0..n_examples`` in order, and rows sum to ``n_examples``.
    """
    root = Path(directory)
    try:
        manifest = Manifest.load(root)
    except IndexIntegrityError as exc:
        return [str(exc)]
    problems: list[str] = []
    expected_start = 0
    total_rows = 0
    for i, shard in enumerate(manifest.shards):
        label = f"shard {i} ({shard.file})"
        if shard.rows != shard.id_end - shard.id_start:
            problems.append(
                f"{label}: {shard.rows} rows but id range [{shard.id_start}, {shard.id_end})"
            )
        if shard.id_start != expected_start:
            problems.append(
                f"{label}: id range starts at {shard.id_start}, expected {expected_start} (ranges "
                "must be contiguous)"
            )
        expected_start = shard.id_end
        total_rows += shard.rows
    if total_rows != manifest.n_examples:
        problems.append(f"shard rows sum to {total_rows} but n_examples is {manifest.n_examples}")
    checked = [(s.file, s.sha256) for s in manifest.shards] + sorted(manifest.files.items())
    for name, digest in checked:
        if not _safe_relative(name):
            problems.append(f"{name}: not a relative path inside the index directory")
            continue
        path = root / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif check_checksums and sha256_file(path) != digest:
            problems.append(
                f"{name}: sha256 mismatch (file changed or corrupt; rebuild or restore it)"
            )
    for problem in problems:
        logger.warning("verify %s: %s", root, problem)
    return problems


def verify_index(root: str | Path, check_checksums: bool = True) -> list[str]:
    """Problems found (empty = OK): manifest checks, FAISS row counts and ids, store row count."""
    root = Path(root)
    problems = verify_manifest(root, check_checksums=check_checksums)
    if (
        problems
        and any("manifest" in p for p in problems)
        and not (root / "manifest.json").is_file()
    ):
        return problems
    try:
        manifest = Manifest.load(root)
    except Exception as exc:  # already reported by verify_manifest
        return problems or [str(exc)]
    import faiss

    for shard in manifest.shards:
        path = root / shard.file
        if not path.is_file() or not _safe_relative(shard.file):
            continue
        # checked before FAISS reads the file, and whether or not checksums are: a wrong header or
        # size is refused by name instead of being mapped (or silently served with another metric)
        with open(path, "rb") as f:
            header = f.read(len(SHARD_HEADER))
        if header != SHARD_HEADER:
            problems.append(
                f"{shard.file}: does not start like a shard (header {header!r}, expected "
                f"{SHARD_HEADER!r}); rebuild or restore it"
            )
            continue
        size = path.stat().st_size
        if shard.bytes is not None and size != shard.bytes:
            problems.append(
                f"{shard.file}: {size} bytes, manifest says {shard.bytes} (truncated or appended "
                "to); rebuild or restore it"
            )
            continue
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        except RuntimeError as exc:
            problems.append(f"{shard.file}: FAISS cannot read it ({exc}); rebuild the index")
            continue
        if index.metric_type != faiss.METRIC_INNER_PRODUCT or not index.is_trained:
            problems.append(
                f"{shard.file}: header says metric {index.metric_type}, trained "
                f"{index.is_trained}; a shard is an inner-product index, trained; rebuild or "
                "restore it"
            )
            continue
        if index.ntotal != shard.rows:
            problems.append(
                f"{shard.file}: holds {index.ntotal} vectors, manifest says {shard.rows}"
            )
        if index.d != manifest.dim:
            problems.append(f"{shard.file}: dimension {index.d}, manifest says {manifest.dim}")
        if index.ntotal:
            ids = faiss.vector_to_array(faiss.downcast_index(index).id_map)  # type: ignore[attr-defined]  # faiss stubs lack the wrappers
            if int(ids.min()) != shard.id_start or int(ids.max()) != shard.id_end - 1:
                problems.append(
                    f"{shard.file}: ids {ids.min()}..{ids.max()}, manifest says [{shard.id_start}, "
                    f"{shard.id_end})"
                )
    store = root / "examples.sqlite"
    if store.is_file():
        from ..data.example_store import ExampleStore

        try:
            with ExampleStore(store) as examples:
                if examples.count() != manifest.n_examples:
                    problems.append(
                        f"examples.sqlite: {examples.count()} rows, manifest says "
                        f"{manifest.n_examples}"
                    )
        except Exception as exc:
            problems.append(f"examples.sqlite: cannot be read ({exc})")
    from ..data.tombstones import id_space_of, verify_tombstones

    problems += verify_tombstones(root, id_space_of(manifest), manifest.n_examples)
    if (root / "compaction").is_dir():
        problems.append(
            "compaction/: an unfinished compaction; fix: rerun `tributary index compact` to finish "
            "it"
        )
    return problems


def verify_model(root: str | Path, model_dir: str | os.PathLike[str]) -> list[str]:
    """Problems (empty = OK) serving index ``root`` with the model at ``model_dir``: each of the
    config, weights and tokenizer hashes that differs from the manifest's, by name."""
    try:
        manifest = Manifest.load(root)
    except IndexIntegrityError as exc:
        return [str(exc)]
    model_path = Path(model_dir)
    if not (model_path / "config.json").is_file():
        return [f"{model_path}: not a model directory (no config.json)"]
    found = hash_model_files(model_path)
    expected = manifest.model
    problems = []
    for name in ("config_sha256", "weights_sha256"):
        if getattr(found, name) != getattr(expected, name):
            problems.append(
                f"model.{name}: {model_path} has {getattr(found, name)[:12]}, the index was built "
                f"from {getattr(expected, name)[:12]} ({expected.path}); serve it with that model "
                "or rebuild"
            )
    tokenizer = hash_tokenizer(model_path)
    if tokenizer != manifest.tokenizer_sha256:
        problems.append(
            f"tokenizer_sha256: {model_path} has {tokenizer[:12]}, the index was built with "
            f"{manifest.tokenizer_sha256[:12]}; serve it with that tokenizer or rebuild"
        )
    for problem in problems:
        logger.warning("verify %s: %s", root, problem)
    return problems
