"""The staging area of a build: per-shard raw vectors and example rows, written atomically.

``<index>/staging/`` holds, per shard ``s``:

- ``chunk-SSSSS.npy`` — the raw per-example vectors ``[n, D]`` float32 (before the score
  transform), written through a memory-mapped temporary file and renamed when complete;
- ``chunk-SSSSS.jsonl`` — the example-store rows of the shard, written after the vectors.

A chunk is complete iff its ``.jsonl`` exists (it is renamed last), so a killed build redoes at
most the chunks it was working on. ``state.json`` pins the build identity and ``created_at`` so a
resumed build writes the same manifest as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_io import atomic_output, atomic_write_text

logger = logging.getLogger(__name__)

ROWS_PER_STEP = 4096
"""Staged rows read per step of the Fisher and the score transform (bounds their memory)."""


class Staging:
    """Paths and atomic writers of a build's staging directory."""

    def __init__(self, root: Path):
        self.root = root

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def vectors_path(self, chunk: int) -> Path:
        return self.root / f"chunk-{chunk:05d}.npy"

    def rows_path(self, chunk: int) -> Path:
        return self.root / f"chunk-{chunk:05d}.jsonl"

    def is_complete(self, chunk: int) -> bool:
        return self.rows_path(chunk).is_file() and self.vectors_path(chunk).is_file()

    def write_vectors(self, chunk: int, shape: tuple[int, int]) -> _VectorWriter:
        """A context manager giving a ``[n, D]`` float32 memmap that becomes the chunk's vectors."""
        return _VectorWriter(self.vectors_path(chunk), shape)

    def write_rows(self, chunk: int, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
        atomic_write_text(self.rows_path(chunk), text)

    def read_vectors(self, chunk: int) -> np.ndarray:
        return np.load(self.vectors_path(chunk), mmap_mode="r")

    def read_rows(self, chunk: int) -> Iterator[dict[str, Any]]:
        with open(self.rows_path(chunk), encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)

    def read_state(self) -> dict[str, Any] | None:
        if not self.state_path.is_file():
            return None
        return json.loads(self.state_path.read_text(encoding="utf-8"))

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.state_path, json.dumps(state, sort_keys=True, indent=2) + "\n")

    def remove(self) -> None:
        """Delete the staging directory (after the manifest is written)."""
        if not self.root.is_dir():
            return
        for path in sorted(self.root.iterdir()):
            path.unlink()
        self.root.rmdir()


class _VectorWriter:
    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path = path
        self.shape = shape
        self._ctx = atomic_output(path)

    def __enter__(self) -> np.memmap:
        tmp = self._ctx.__enter__()
        self._array = np.lib.format.open_memmap(
            str(tmp), mode="w+", dtype=np.float32, shape=self.shape
        )
        return self._array

    def __exit__(self, *exc: Any) -> bool | None:
        self._array.flush()
        del self._array
        return self._ctx.__exit__(*exc)
