"""Where the files of an index directory live, and the manifest the builder writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic_io import sha256_file
from ..config import BuildConfig
from ..gradients.projector import LoGraProjector
from ..gradients.rapidgrad import rapidgrad_dim
from ..hessian.preconditioner import Preconditioner
from .manifest import (
    MANIFEST_NAME,
    DampingInfo,
    Manifest,
    ProjectorInfo,
    ProjectorModule,
    ShardInfo,
    hash_model_files,
    hash_tokenizer,
)


@dataclass(frozen=True)
class IndexPaths:
    """The layout of one index directory."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def projector(self) -> Path:
        return self.root / "projector.safetensors"

    @property
    def hessian(self) -> Path:
        return self.root / "hessian.safetensors"

    @property
    def store(self) -> Path:
        return self.root / "examples.sqlite"

    @property
    def build_config(self) -> Path:
        return self.root / "build_config.json"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def vectors_dir(self) -> Path:
        return self.root / "vectors"

    def shard(self, n: int) -> Path:
        return self.shards_dir / f"shard-{n:05d}.faiss"

    def exact_vectors(self, n: int) -> Path:
        return self.vectors_dir / f"shard-{n:05d}.npy"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def load_manifest(self) -> dict[str, Any] | None:
        """The raw manifest dict, or None when the directory holds no finished index."""
        if not self.manifest.is_file():
            return None
        return json.loads(self.manifest.read_text(encoding="utf-8"))


def shard_entry(paths: IndexPaths, n: int, path: Path) -> dict[str, Any]:
    """Rows, id range, dim and checksum of a written shard (read from the FAISS file)."""
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    ids = faiss.vector_to_array(faiss.downcast_index(index).id_map) if index.ntotal else []  # type: ignore[attr-defined,var-annotated]  # faiss stubs lack the wrappers
    id_start = int(ids[0]) if len(ids) else 0
    return {
        "file": paths.relative(path),
        "rows": int(index.ntotal),
        "id_start": id_start,
        "id_end": id_start + int(index.ntotal),
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "dim": int(index.d),
        "n": n,
    }


def write_manifest(
    paths: IndexPaths,
    *,
    config: BuildConfig,
    created_at: str,
    projector: LoGraProjector,
    preconditioner: Preconditioner,
    shards: list[dict[str, Any]],
    n_examples: int,
    tokenizer: Any,
    summary: dict[str, Any],
    additions: list[dict[str, Any]],
    index_choice: dict[str, Any] | None = None,
) -> Manifest:
    """Write ``manifest.json`` last: model/tokenizer hashes, projector, damping, shards, file
    checksums, and the FAISS factory chosen (``index_choice``)."""
    desc = projector.describe()
    params: dict[str, Any] = {"fingerprint": projector.fingerprint()}
    k = rapidgrad_dim(config.rapidgrad_k, projector.dim)
    if k is not None:
        params["rapidgrad"] = {
            "k": k,
            "seed": config.seed,
            "normalize_layers": config.rapidgrad_normalize,
        }
    files = {
        paths.relative(p): sha256_file(p)
        for p in (paths.projector, paths.hessian, paths.store, paths.build_config)
    }
    if paths.vectors_dir.is_dir():
        files.update(
            {paths.relative(p): sha256_file(p) for p in sorted(paths.vectors_dir.glob("*.npy"))}
        )
    build_config = config.identity() | config.query_settings()
    build_config["summary"] = summary
    build_config["additions"] = additions
    manifest = Manifest(
        package_version=__version__,
        model=hash_model_files(config.model),
        tokenizer_sha256=hash_tokenizer(tokenizer),
        projector=ProjectorInfo(
            kind=desc["kind"],
            seed=desc["seed"],
            modules=[ProjectorModule(**m) for m in desc["modules"]],
            params=params,
        ),
        dim=int(shards[0]["dim"]) if shards else (k or projector.dim),
        dtype="float32",
        score_variant=config.score,
        damping=DampingInfo(**preconditioner.describe()),
        shards=[
            ShardInfo(
                file=s["file"],
                rows=s["rows"],
                id_start=s["id_start"],
                id_end=s["id_end"],
                sha256=s["sha256"],
                bytes=s.get("bytes"),
            )
            for s in shards
        ],
        n_examples=n_examples,
        build_config=build_config,
        files=files,
        created_at=created_at,
        index_choice=dict(index_choice or {}),
    )
    manifest.save(paths.root)
    return manifest
