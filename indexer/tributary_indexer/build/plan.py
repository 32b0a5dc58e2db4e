"""``tributary index plan``: disk, RAM and time of a build, measured on this machine first.

The plan runs the real build on a sample and extrapolates each stage by what it scales with,
instead of assuming constants:

1. **Sample build.** The real :class:`~tributary_indexer.build.builder.IndexBuilder` runs on the
   corpus's first examples (enough for one warm-up batch and ``timed_batches`` more at the
   configured ``batch_tokens``) into a temporary directory, with the real model, device,
   threads and settings. It reports wall seconds per stage and per gradient batch.
2. **Time.** Model load, projector and the fixed part of the finish (hashing the model and
   the Fisher file) are taken as measured. The gradient pass is the warm-up batch plus the
   measured seconds per *padded* token of the other batches times the padded tokens of the
   whole corpus (the corpus's lengths, up to 2,000 tokenised, batched exactly as the build
   batches them), plus the sample's per-example overhead (tokenising, staging) times the
   examples. The Fisher and its inverse are timed on synthetic vectors of the real dimension,
   taking the path the full build takes (the exact Gram form for fewer than half the
   dimension's examples, else the dense update per row and one dense inversion); the score
   transform per row, the shard and store writes per row and the checksums per byte come from
   the sample.
3. **Disk.** Every file of the sample index, by kind: per-index files (projector, Fisher
   inverse, configuration) as written; shards from their measured header and bytes per row;
   the example store from two sizes (the sample and half of it) so its fixed pages are not
   counted per row; the manifest per shard; staging (raw vectors and rows) per row.
4. **RAM.** The plan process's own peak resident memory after the sample build and the
   synthetic Fisher (model, activations of full batches, Fisher and its inversion), plus what
   grows with the rows of one shard: the staged vectors written during the gradient pass and
   read back, transformed and indexed when the shard is written (three ``rows × D`` float32
   copies).
"""

from __future__ import annotations

import json
import logging
import math
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..config import BuildConfig
from ..data.corpus import CorpusError, CorpusStats, iter_records
from ..data.example_store import ExampleStoreWriter, StoredExample
from ..data.tokenization import tokenize_record
from ..gradients.projector import Block, LoGraProjector
from ..gradients.rapidgrad import RapidGradCompressor, rapidgrad_dim
from ..hessian.fisher import FisherAccumulator
from ..hessian.preconditioner import Preconditioner
from ..hessian.scores import ScoreTransform
from ..model_loading import load_tokenizer
from .builder import IndexBuilder
from .factory_choice import AUTO, resolve_factory
from .gradient_pass import token_budget_batches
from .shards import is_flat
from .staging import ROWS_PER_STEP

logger = logging.getLogger(__name__)

_LENGTH_SAMPLE = 2000  # records tokenised for the length distribution
_SYNTHETIC_BYTES = (
    256 * 2**20
)  # cap on the synthetic vectors timed for the Fisher and the transform
_STORE_ROWS = 1024  # rows of the larger of the two stores written to size the example store
_DENSE_ROWS_TIMED = 1024  # synthetic rows whose dense Fisher update is timed
_SHARD_COPIES = (
    3  # rows × D float32 copies of one shard held at once (staged pages, transformed, FAISS)
)
_STEP_BYTES_PER_VALUE = 24  # a step's rows as float64 input, preconditioned product and output


@dataclass
class BuildPlan:
    """What a build will take, with the breakdown it was computed from."""

    examples: int
    tokens: int
    mean_tokens: float
    dim: int
    shards: int
    sample_examples: int
    measured_tokens_per_s: float
    seconds: float
    disk_bytes: int
    staging_bytes: int
    ram_bytes: int
    time_s: dict[str, float] = field(default_factory=dict)
    """Estimated seconds per stage."""
    files: dict[str, int] = field(default_factory=dict)
    """Estimated bytes per file kind of the finished index (``shards/shard-*.faiss``, ...)."""
    staging_files: dict[str, int] = field(default_factory=dict)
    ram_parts: dict[str, int] = field(default_factory=dict)
    index_choice: dict[str, Any] = field(default_factory=dict)
    """The FAISS factory the build will write and why (what ``--index-factory auto`` chooses
    for these examples and this dimension)."""

    def lines(self) -> list[str]:
        """The human-readable plan."""
        gib = 1024**3
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in self.time_s.items() if v >= 0.5)
        files = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in self.files.items())
        return [
            f"examples: {self.examples} (about {self.mean_tokens:.0f} tokens each, {self.tokens} "
            "in all)",
            f"vector dimension: {self.dim}, {self.shards} shard(s)",
            f"index: {self.index_choice.get('requested', '?')} -> "
            f"{self.index_choice.get('reason', '?')}",
            f"measured on {self.sample_examples} examples: gradient pass "
            f"{self.measured_tokens_per_s:.0f} tokens/s",
            f"estimated time: {self.seconds / 3600:.2f} h ({self.seconds:.0f} s) for one process "
            f"({stages})",
            f"disk: {self.disk_bytes / gib:.2f} GiB index ({files}) + "
            f"{self.staging_bytes / gib:.2f} GiB staging during the build (peak "
            f"{(self.disk_bytes + self.staging_bytes) / gib:.2f} GiB)",
            f"peak RAM: about {self.ram_bytes / gib:.2f} GiB",
        ]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def _process_age_s() -> float:
    """Seconds since this process started (Linux; 0 elsewhere)."""
    try:
        import os

        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return 0.0


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _file_kind(rel: str) -> str:
    if rel.startswith("shards/"):
        return "shards/shard-*.faiss"
    if rel.startswith("vectors/"):
        return "vectors/vectors-*.npy"
    return rel


def _sizes(root: Path) -> dict[str, int]:
    """Bytes per file kind under `root` (staging excluded)."""
    out: dict[str, int] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and "staging" not in p.relative_to(root).parts:
            kind = _file_kind(p.relative_to(root).as_posix())
            out[kind] = out.get(kind, 0) + p.stat().st_size
    return out


def _length_sample(config: BuildConfig) -> tuple[int, list[int]]:
    """(records in the corpus, token counts of the first 2,000 usable ones)."""
    tokenizer = load_tokenizer(config.model)
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(config.model)
    context = getattr(model_config, "max_position_embeddings", None) or getattr(
        model_config, "n_positions", None
    )
    max_tokens = min(config.max_tokens, int(context)) if context else config.max_tokens
    stats = CorpusStats()
    lengths: list[int] = []
    n_records = 0
    for record in iter_records(config.corpus, skip_bad=True, stats=stats):
        n_records += 1
        if len(lengths) < _LENGTH_SAMPLE:
            try:
                lengths.append(tokenize_record(record, tokenizer, max_tokens).n_tokens)
            except CorpusError:  # counted as bad in a real build
                pass
    lengths = [n for n in lengths if n > 0]
    if not lengths:
        raise ValueError(
            "no usable example in the corpus; check --corpus (see `tributary index build "
            "--skip-bad`)"
        )
    return n_records, lengths


def _padded_tokens(
    lengths: list[int], n_examples: int, shard_size: int, batch_tokens: int
) -> float:
    """Padded tokens of the whole build: the sampled lengths batched as the build batches a
    shard."""
    chunk = lengths[: max(1, min(shard_size, len(lengths)))]
    padded = 0
    for idx in token_budget_batches(chunk, batch_tokens):
        padded += len(idx) * max(chunk[i] for i in idx)
    return padded / len(chunk) * n_examples


def _sample_size(lengths: list[int], batch_tokens: int, timed_batches: int) -> int:
    """The fewest first examples whose build batches hold one warm-up and `timed_batches` more."""
    for n in range(1, len(lengths) + 1):
        if len(token_budget_batches(lengths[:n], batch_tokens)) > timed_batches:
            return n
    return len(lengths)


def _synthetic_fisher(
    blocks: list[Block], n_examples: int, alpha: float, score: str, seed: int, tmp: Path
) -> dict[str, float]:
    """Time the Fisher, its inversion and the score transform on random vectors of the real
    dimension, along the path a build of `n_examples` takes."""
    dim = blocks[-1].stop
    gen = torch.Generator().manual_seed(seed)
    rows_cap = max(64, _SYNTHETIC_BYTES // (8 * dim))
    fisher = FisherAccumulator(blocks)
    low_rank = n_examples <= fisher.max_rows
    rows = min(n_examples, rows_cap) if low_rank else min(rows_cap, _DENSE_ROWS_TIMED)
    vectors = torch.randn(rows, dim, generator=gen, dtype=torch.float32)
    if not low_rank:
        fisher = FisherAccumulator(blocks, max_rows=0)
    t0 = time.perf_counter()
    fisher.update(vectors)
    update_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preconditioner = Preconditioner.from_fisher(fisher, alpha)
    invert_s = time.perf_counter() - t0
    del fisher
    t0 = time.perf_counter()
    preconditioner.save(tmp / "hessian-timing.safetensors")
    save_s = time.perf_counter() - t0
    (tmp / "hessian-timing.safetensors").unlink()
    transform = ScoreTransform(score, preconditioner)
    t0 = time.perf_counter()
    transform.train(vectors)
    transform_s = time.perf_counter() - t0
    scale = n_examples / rows
    # the Gram form's inversion grows with the rows kept; the dense one is one K×K inversion
    precondition_s = (invert_s * scale if low_rank else invert_s) + save_s
    return {
        "fisher": update_s * scale,
        "precondition": precondition_s,
        "transform": transform_s * scale,
        "rows": rows,
    }


def _store_bytes(staging: Path, tmp: Path) -> tuple[int, int]:
    """(fixed bytes, bytes per example) of the example store: two real stores of the sample's
    rows (repeated under new ids to 512 and 1,024 rows, so SQLite's pages average out)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(staging.glob("chunk-*.jsonl")):
        rows += [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    sizes = []
    for n in (_STORE_ROWS // 2, _STORE_ROWS):
        path = tmp / f"store-{n}.sqlite"
        with ExampleStoreWriter(path) as writer:
            writer.add_many(StoredExample(**{**rows[i % len(rows)], "id": i}) for i in range(n))
            writer.finalize(expected_count=n)
        sizes.append((n, path.stat().st_size))
        path.unlink()
    (n1, s1), (n2, s2) = sizes
    per_row = (s2 - s1) / (n2 - n1)
    return int(max(s2 - per_row * n2, 0)), int(math.ceil(per_row))


def estimate_build(
    config: BuildConfig, timed_batches: int = 3, workdir: str | Path | None = None
) -> BuildPlan:
    """Run the build on a sample of the corpus and extrapolate time, disk and RAM to all of it."""
    if config.index_factory == AUTO or not is_flat(config.index_factory):
        logger.info(
            "the sample is built flat; compressed shard sizes come from the factory's code size"
        )
    startup_s = _process_age_s()  # interpreter start and imports: a build's command pays them too
    n_records, lengths = _length_sample(config)
    sample = _sample_size(lengths, config.batch_tokens, timed_batches)
    tmp = Path(tempfile.mkdtemp(prefix="tributary-plan-", dir=workdir))
    try:
        return _estimate(config, n_records, lengths, sample, tmp, startup_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _estimate(
    config: BuildConfig,
    n_records: int,
    lengths: list[int],
    sample: int,
    tmp: Path,
    startup_s: float,
) -> BuildPlan:
    cfg = replace(config, progress=False)
    sample_cfg = replace(cfg, index_factory="Flat")
    builder = IndexBuilder(sample_cfg, tmp / "index", keep_staging=True, max_examples=sample)
    summary = builder.build()
    n = n_records
    s = summary.examples
    stage = summary.stage_s
    dim = summary.dim
    shard_rows = min(cfg.shard_size, n)
    n_shards = max(1, math.ceil(n / cfg.shard_size))
    choice = resolve_factory(cfg, n, dim)
    factory = choice.factory

    # ---- time
    batches = summary.batch_timings
    warm, timed = batches[0], batches[1:] or batches
    padded_timed = sum(b[1] for b in timed)
    per_padded = sum(b[2] for b in timed) / max(padded_timed, 1)
    padded_total = _padded_tokens(lengths, n, cfg.shard_size, cfg.batch_tokens)
    batch_s = sum(b[2] for b in batches)
    other_per_example = max(stage.get("gradients", 0.0) - batch_s, 0.0) / max(s, 1)
    gradients = warm[2] + per_padded * max(padded_total - warm[1], 0.0) + other_per_example * n
    projector = LoGraProjector.load(tmp / "index" / "projector.safetensors")
    k = rapidgrad_dim(cfg.rapidgrad_k, projector.dim)
    blocks = (
        RapidGradCompressor(projector.blocks, k, seed=cfg.seed).out_blocks
        if k is not None and cfg.rapidgrad_k is not None
        else projector.blocks
    )
    synthetic = _synthetic_fisher(blocks, n, cfg.damping, cfg.score, cfg.seed, tmp)
    rss_peak = _peak_rss_bytes()

    sizes = _sizes(tmp / "index")
    shard_bytes_sample = sizes.get("shards/shard-*.faiss", 0)
    flat_row = 4 * dim + 8
    sample_shards = max(summary.shards, 1)
    shard_header = max(shard_bytes_sample - s * flat_row, 0) / sample_shards
    if is_flat(factory):
        shards_total = n_shards * shard_header + n * flat_row
    else:
        header = _compressed_shard_header(dim, factory)
        shards_total = n_shards * header + n * (_code_size(dim, factory) + 8)
    write_per_row = max(stage.get("shards", 0.0) - stage.get("transform", 0.0), 0.0) / max(s, 1)
    store_fixed, store_row = _store_bytes(tmp / "index" / "staging", tmp)
    manifest = json.loads((tmp / "index" / "manifest.json").read_text(encoding="utf-8"))
    per_shard_entry = (
        len(json.dumps(manifest["shards"][0], indent=2)) + 8
    )  # indented one level deeper, comma
    manifest_total = sizes.get("manifest.json", 0) + (n_shards - sample_shards) * per_shard_entry
    files = {
        k: v
        for k, v in sizes.items()
        if k not in ("shards/shard-*.faiss", "examples.sqlite", "manifest.json")
    }
    files["shards/shard-*.faiss"] = int(shards_total)
    if not is_flat(factory):
        itemsize = 2 if cfg.vector_dtype == "float16" else 4
        files["vectors/vectors-*.npy"] = n_shards * 128 + n * dim * itemsize
    files["examples.sqlite"] = store_fixed + store_row * n
    files["manifest.json"] = manifest_total
    files = dict(sorted(files.items()))
    disk = sum(files.values())

    staging_dir = tmp / "index" / "staging"
    staging_files: dict[str, int] = {}
    for p in sorted(staging_dir.glob("*")):
        if p.is_file():
            kind = "chunk-*" + p.suffix if p.name.startswith("chunk-") else p.name
            staging_files[kind] = staging_files.get(kind, 0) + p.stat().st_size
    staging = {  # vectors and rows grow with the examples; the state file does not
        kind: int(size * n / max(s, 1)) if kind.startswith("chunk-") else size
        for kind, size in staging_files.items()
    }

    hashed_sample = sum(sizes.values()) + _model_bytes(cfg.model)
    hashed_total = disk + _model_bytes(cfg.model)
    finish_fixed = max(stage.get("finish", 0.0) - stage.get("store", 0.0), 0.0)
    time_s = {
        "start-up": startup_s,
        "load": stage.get("load", 0.0),
        "projector": stage.get("projector", 0.0)
        * (
            min(cfg.pca_examples, n) / max(min(cfg.pca_examples, s), 1)
            if cfg.projector == "pca"
            else 1.0
        ),
        "check": stage.get(
            "check", 0.0
        ),  # the sample build checks the whole corpus, as the build does
        "gradients": gradients,
        "fisher": synthetic["fisher"],
        "precondition": synthetic["precondition"],
        "shards": synthetic["transform"] + write_per_row * n,
        "finish": stage.get("store", 0.0) * n / max(s, 1)
        + finish_fixed * hashed_total / max(hashed_sample, 1),
    }
    seconds = sum(time_s.values())

    shard_extra = _SHARD_COPIES * max(shard_rows - s, 0) * dim * 4
    step_extra = _STEP_BYTES_PER_VALUE * max(min(n, ROWS_PER_STEP) - synthetic["rows"], 0) * dim
    ram_parts = {
        "measured peak of the sample build": rss_peak,
        "one shard of vectors": shard_extra,
        "a full step of staged rows": int(step_extra),
    }
    tokens = int(sum(lengths) / len(lengths) * n)
    return BuildPlan(
        examples=n,
        tokens=tokens,
        mean_tokens=sum(lengths) / len(lengths),
        dim=dim,
        shards=n_shards,
        sample_examples=s,
        measured_tokens_per_s=sum(b[1] for b in timed) / max(sum(b[2] for b in timed), 1e-9),
        seconds=seconds,
        disk_bytes=int(disk),
        staging_bytes=int(sum(staging.values())),
        ram_bytes=int(rss_peak + shard_extra + step_extra),
        time_s={k: round(v, 3) for k, v in time_s.items()},
        files=files,
        staging_files=staging,
        ram_parts=ram_parts,
        index_choice=choice.to_dict(),
    )


def _model_bytes(model_dir: str) -> int:
    """Bytes of the model's weight files (the manifest hashes them)."""
    root = Path(model_dir)
    return sum(
        p.stat().st_size
        for p in root.iterdir()
        if p.is_file() and p.suffix in (".safetensors", ".bin")
    )


def _code_size(dim: int, factory: str) -> int:
    import faiss

    return int(faiss.index_factory(dim, factory).sa_code_size())


def _compressed_shard_header(dim: int, factory: str) -> int:
    """Bytes a compressed shard holds whatever its rows: the trained quantizer's tables."""
    import faiss

    index = faiss.index_factory(dim, factory)
    try:
        nlist = int(faiss.extract_index_ivf(index).nlist)
    except RuntimeError:  # not an IVF index
        nlist = 0
    codebooks = 256 * dim * 4 if "PQ" in factory else 2 * dim * 4  # PQ centroids, or SQ's ranges
    return nlist * dim * 4 + codebooks
