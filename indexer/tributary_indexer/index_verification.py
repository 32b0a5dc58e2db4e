"""``tributary index verify``: is an index directory whole and self-consistent?"""

from __future__ import annotations

import logging
from pathlib import Path

from .manifest import Manifest, verify_manifest

logger = logging.getLogger(__name__)


def verify_index(root: str | Path, check_checksums: bool = True) -> list[str]:
    """Problems found (empty = OK): manifest checks, FAISS row counts and ids, store row count."""
    root = Path(root)
    problems = verify_manifest(root, check_checksums=check_checksums)
    if problems and any("manifest" in p for p in problems) and not (root / "manifest.json").is_file():
        return problems
    try:
        manifest = Manifest.load(root)
    except Exception as exc:  # already reported by verify_manifest
        return problems or [str(exc)]
    import faiss

    for shard in manifest.shards:
        path = root / shard.file
        if not path.is_file():
            continue
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        except RuntimeError as exc:
            problems.append(f"{shard.file}: FAISS cannot read it ({exc}); rebuild the index")
            continue
        if index.ntotal != shard.rows:
            problems.append(f"{shard.file}: holds {index.ntotal} vectors, manifest says {shard.rows}")
        if index.d != manifest.dim:
            problems.append(f"{shard.file}: dimension {index.d}, manifest says {manifest.dim}")
        if index.ntotal:
            ids = faiss.vector_to_array(faiss.downcast_index(index).id_map)  # type: ignore[attr-defined]  # faiss stubs lack the wrappers
            if int(ids.min()) != shard.id_start or int(ids.max()) != shard.id_end - 1:
                problems.append(f"{shard.file}: ids {ids.min()}..{ids.max()}, manifest says [{shard.id_start}, {shard.id_end})")
    store = root / "examples.sqlite"
    if store.is_file():
        from .example_store import ExampleStore

        try:
            with ExampleStore(store) as examples:
                if examples.count() != manifest.n_examples:
                    problems.append(f"examples.sqlite: {examples.count()} rows, manifest says {manifest.n_examples}")
        except Exception as exc:
            problems.append(f"examples.sqlite: cannot be read ({exc})")
    return problems
