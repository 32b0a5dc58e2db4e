"""Index directories for the index benchmarks: a built index's frame around other vectors.

:class:`IndexWriter` writes a loadable index (``AttributionIndex``, ``tributary serve``) whose
projector, Hessian and manifest come from a real index and whose shards are written, one
shard at a time, with any FAISS factory: the real index's own stored vectors
(:func:`write_copy`, to compare factories on the same vectors) or synthetic ones (the scale and
latency benchmarks). Compressed factories keep exact re-rank vectors in ``vectors/`` as the
builder does; the store is the real one (hard-linked) or :func:`synthetic_store`'s copies of
one real row.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

LINKED = ("projector.safetensors", "hessian.safetensors")
"""Files every copy shares with its source (hard links)."""


def synthetic_store(real: Path, path: Path, rows: int) -> None:
    """An example store of ``rows`` copies of ``real``'s first example (ids ``0..rows-1``)."""
    db = sqlite3.connect(path)
    src = sqlite3.connect(real)
    schema = src.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")
    db.executescript(";".join(r[0] for r in schema))
    db.executemany("INSERT INTO meta VALUES (?, ?)", src.execute("SELECT key, value FROM meta"))
    template = src.execute("SELECT * FROM examples WHERE id = 0").fetchone()
    db.executemany(
        f"INSERT INTO examples VALUES ({','.join('?' * len(template))})",
        ((i, f"syn-{i}", *template[2:]) for i in range(rows)),
    )
    db.execute("UPDATE meta SET value = ? WHERE key = 'n_examples'", (str(rows),))
    db.commit()
    db.close()
    src.close()


def shard_vectors(index: Any, n: int) -> np.ndarray:
    """Shard ``n``'s stored vectors ``[rows, D]`` float32 of an open ``AttributionIndex``."""
    shard = index.shards[n]
    source = shard.exact if shard.exact is not None else shard.flat
    if source is None:
        ids = np.arange(shard.id_start, shard.id_end)
        return index.stored_vectors(ids)  # type: ignore[no-any-return]
    return np.asarray(source, dtype=np.float32)


class IndexWriter:
    """Writes ``dst`` as ``src``'s frame around shards added in order (:meth:`add_shard`).

    ``trained``: the trained FAISS index every shard of a compressed ``factory`` starts from
    (``None`` for ``Flat``); ``store_rows``: write a :func:`synthetic_store` of that many rows
    instead of linking ``src``'s store; ``choice``: the manifest's ``index_choice`` record (a
    ``FactoryChoice.to_dict()``; ``None``: none, the factory is ``build_config``'s).
    :meth:`finish` writes the manifest last.
    """

    def __init__(
        self,
        src: Path,
        dst: Path,
        factory: str,
        trained: Any = None,
        exact_dtype: str = "float16",
        store_rows: int | None = None,
        choice: dict[str, Any] | None = None,
    ):
        from tributary_indexer.build.layout import IndexPaths
        from tributary_indexer.build.shards import is_flat

        self.src, self.factory, self.trained = Path(src), factory, trained
        self.choice = choice
        self.exact_dtype = exact_dtype
        self.compressed = not is_flat(factory)
        if self.compressed and trained is None:
            raise ValueError(f"{factory!r} needs a trained index (train_index)")
        shutil.rmtree(dst, ignore_errors=True)
        self.paths = IndexPaths(Path(dst))
        self.paths.shards_dir.mkdir(parents=True)
        if self.compressed:
            self.paths.vectors_dir.mkdir()
        for name in LINKED + (() if store_rows else ("examples.sqlite", "tombstones.json")):
            if (self.src / name).is_file():
                os.link(self.src / name, self.paths.root / name)
        if store_rows:
            synthetic_store(self.src / "examples.sqlite", self.paths.store, store_rows)
        self.shards: list[dict[str, Any]] = []
        self.rows = 0
        self.dim: int | None = None

    def add_shard(self, vectors: np.ndarray) -> float:
        """Write the next shard (``[rows, D]``, ids continuing); return FAISS's add seconds."""
        from tributary_indexer.atomic_io import atomic_output
        from tributary_indexer.build.layout import shard_entry
        from tributary_indexer.build.shards import write_shard

        n = len(self.shards)
        self.dim = int(vectors.shape[1])
        ids = np.arange(self.rows, self.rows + vectors.shape[0], dtype=np.int64)
        if self.compressed:
            with atomic_output(self.paths.exact_vectors(n)) as tmp, open(tmp, "wb") as f:
                np.save(f, vectors.astype(self.exact_dtype))
        t0 = time.perf_counter()
        write_shard(self.paths.shard(n), vectors, ids, self.factory, trained=self.trained)
        seconds = time.perf_counter() - t0
        keys = ("file", "rows", "id_start", "id_end", "sha256", "bytes")
        entry = shard_entry(self.paths, n, self.paths.shard(n))
        self.shards.append({k: entry[k] for k in keys})
        self.rows += int(vectors.shape[0])
        return seconds

    def finish(self) -> Path:
        """Write ``build_config.json`` and the manifest (with every file's checksum)."""
        from tributary_indexer.atomic_io import sha256_file

        root = self.paths.root
        config = json.loads((self.src / "build_config.json").read_text(encoding="utf-8"))
        dtype = {"vector_dtype": self.exact_dtype} if self.compressed else {}
        config.update(index_factory=self.factory, **dtype)
        (root / "build_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        data = json.loads((self.src / "manifest.json").read_text(encoding="utf-8"))
        files = {k: v for k, v in data["files"].items() if not k.startswith("vectors/")}
        for path in [root / "build_config.json", self.paths.store]:
            files[self.paths.relative(path)] = sha256_file(path)
        for path in sorted(self.paths.vectors_dir.glob("*.npy")):
            files[self.paths.relative(path)] = sha256_file(path)
        data.update(shards=self.shards, files=files, n_examples=self.rows)
        data["dim"] = self.dim if self.dim is not None else data["dim"]
        data["build_config"].update(index_factory=self.factory, **dtype)
        data.pop("index_choice", None)  # the source's record, not the copy's
        if self.choice:
            data["index_choice"] = dict(self.choice)
        (root / "manifest.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return root


def write_copy(
    src: Path,
    dst: Path,
    factory: str,
    train_examples: int,
    seed: int = 0,
    polysemous: bool = True,
    choice: dict[str, Any] | None = None,
) -> dict[str, float]:
    """``src``'s stored vectors written under ``dst`` as ``factory`` (compressed: one quantizer
    trained on ``train_examples`` seeded rows, FAISS's polysemous training as ``polysemous``
    says, exact vectors as float16), shard for shard, with the ``choice`` record; return the
    train and add seconds."""
    from tributary_indexer.build.shards import is_flat, train_index
    from tributary_indexer.query.index import AttributionIndex

    source = AttributionIndex(src, verify_checksums=False)
    trained, train_s = None, 0.0
    if not is_flat(factory):
        rng = np.random.default_rng(seed)
        n = source.n_examples
        pick = np.sort(rng.choice(n, size=min(train_examples, n), replace=False))
        t0 = time.perf_counter()
        sample = source.stored_vectors(pick)
        trained = train_index(source.dim, factory, sample, seed=seed, polysemous=polysemous)
        train_s = time.perf_counter() - t0
    writer = IndexWriter(src, dst, factory, trained, choice=choice)
    add_s = sum(writer.add_shard(shard_vectors(source, n)) for n in range(len(source.shards)))
    source.close()
    writer.finish()
    return {"train_s": train_s, "add_s": add_s}
