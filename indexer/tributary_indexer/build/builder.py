"""The index build pipeline.

``corpus → tokenise → [PCA statistics pass] → gradient pass (raw vectors to staging, one chunk
per shard) → Fisher over the staged vectors (all-reduced across ranks) → preconditioner →
score transform → FAISS shards → example store → manifest (written last)``.

Crash safety: every file is written under a temporary name, fsynced and renamed; the staging
area records finished chunks, so running the same command after a kill continues where it
stopped and ends with files byte-identical to an uninterrupted build (the build identity and
``created_at`` are pinned in ``staging/state.json``).

Distributed: under ``torchrun`` every rank reads and tokenises the whole corpus (cheap; it keeps
ids dense and identical everywhere) but computes gradients only for the shards it owns
(``shard % world_size == rank``); the Fisher is all-reduced; rank 0 writes the store and manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..atomic_io import atomic_output, atomic_write_json, check_writable_dir, stale_temp_files
from ..config import QUERY_FIELDS, RUNTIME_FIELDS, BuildConfig, RankingConfig
from ..data.corpus import CorpusStats
from ..data.corpus_check import CorpusCheck, check_corpus, write_skip_report
from ..data.example_store import ExampleStore, ExampleStoreWriter, StoredExample, partial_path_for
from ..data.known_records import KnownRecords
from ..data.tombstones import id_space_of, read_tombstones
from ..errors import ConfigMismatchError, IndexIntegrityError, OutputDirectoryError
from ..gradients.module_selection import TrackedModule, resolve_modules
from ..gradients.projector import Block, LoGraProjector
from ..gradients.rapidgrad import RapidGradCompressor, rapidgrad_dim
from ..hessian.fisher import FisherAccumulator
from ..hessian.preconditioner import Preconditioner
from ..hessian.scores import ScoreTransform
from ..model_loading import capped_max_tokens, load_causal_lm, load_tokenizer, resolve_device
from .crash_points import crash_point
from .distributed import DistributedContext
from .factory_choice import FactoryChoice, choice_of, resolve_factory
from .gradient_pass import GradientPass
from .layout import IndexPaths, shard_entry, write_manifest
from .manifest import LEGACY_BUILD_DEFAULTS, utc_timestamp
from .shard_writer import ShardWriter
from .shards import is_flat
from .staging import ROWS_PER_STEP, Staging
from .summary import BuildSummary

logger = logging.getLogger(__name__)


class IndexBuilder:
    """Builds (or resumes, or extends) an index directory from a :class:`BuildConfig`."""

    def __init__(
        self,
        config: BuildConfig,
        out_dir: str | Path,
        ctx: DistributedContext | None = None,
        keep_staging: bool = False,
        max_examples: int | None = None,
    ):
        """`max_examples` stops after that many examples (what `tributary index plan` measures
        on)."""
        self.config = config
        self.max_examples = max_examples
        self.paths = IndexPaths(Path(out_dir))
        self.ctx = ctx or DistributedContext()
        self.keep_staging = keep_staging
        self.staging = Staging(self.paths.root / "staging")
        self.summary = BuildSummary()
        self.max_tokens = config.max_tokens
        """Tokens per example: ``config.max_tokens``, capped at the model's context once it is
        loaded."""
        self.corpus_check: CorpusCheck | None = None
        self.known: KnownRecords | None = None
        """``add``: the records the index already holds (skipped)."""
        self._corpus_stats: CorpusStats | None = None
        self.choice: FactoryChoice | None = None
        """The FAISS factory the shards are written with (``auto`` resolved once the examples
        are counted, after the gradient pass; ``add``: the index's)."""

    # ------------------------------------------------------------------ entry points
    def build(self) -> BuildSummary:
        """Build the index, or resume a killed build of the same configuration."""
        t0 = time.perf_counter()
        cfg = self.config
        existing = self.paths.load_manifest()
        if existing is not None:
            self._check_identity(
                existing.get("build_config", {}), "the finished index in this directory"
            )
            logger.info(
                "%s already holds a complete index with this configuration; nothing to do",
                self.paths.root,
            )
            return BuildSummary(**existing["build_config"].get("summary", {}))
        # the corpus and the model are checked before anything is written: a build that fails on
        # either leaves no state behind, so the rerun after the fix starts clean
        with self.summary.timed("check"):
            self.corpus_check = check_corpus(cfg.corpus, skip_bad=cfg.skip_bad)
        self.summary.corpus_notes = self.corpus_check.lines()
        check_writable_dir(self.paths.root)
        self._sweep_temp_files()
        with self.summary.timed("load"):
            model, tokenizer, modules = self._load_model()
        state = self._pin_state()
        with self.summary.timed("projector"):
            projector = self._passes().projector(self.paths.projector, model, tokenizer, modules)
        compressor = self._compressor(projector)
        blocks = compressor.out_blocks if compressor else projector.blocks
        n_chunks, n_examples, self._corpus_stats = self._passes().run(
            model, tokenizer, modules, projector, compressor, id_offset=0, first_chunk=0
        )
        self.ctx.barrier()
        dim = compressor.k if compressor else projector.dim
        self.choice = resolve_factory(cfg, n_examples, dim)
        logger.info("index factory %s: %s", cfg.index_factory, self.choice.reason)
        preconditioner = self._fit_preconditioner(blocks, range(n_chunks))
        transform = ScoreTransform(cfg.score, preconditioner)
        with self.summary.timed("shards"):
            self._shard_writer().write(
                transform, range(n_chunks), id_offset=0, first_chunk=0, n_examples=n_examples
            )
        self.ctx.barrier()
        if self.ctx.is_main:
            with self.summary.timed("finish"):
                self._finish(
                    state,
                    projector,
                    preconditioner,
                    range(n_chunks),
                    n_examples,
                    tokenizer,
                    additions=[],
                )
        self.ctx.barrier()
        self.summary.wall_s = time.perf_counter() - t0
        return self.summary

    def add(self) -> BuildSummary:
        """Append the corpus as new shards with the index's frozen projector and Hessian."""
        t0 = time.perf_counter()
        manifest = self.paths.load_manifest()
        if manifest is None:
            raise IndexIntegrityError(
                f"{self.paths.root} holds no finished index (no manifest.json); fix: run "
                "`tributary index build` first"
            )
        ranking_only = {
            f.name for f in dataclasses.fields(RankingConfig)
        } - QUERY_FIELDS  # recorded, not build options
        stored = {
            k: v
            for k, v in manifest["build_config"].items()
            if k not in ("summary", "additions") and k not in ranking_only
        }
        for key, value in LEGACY_BUILD_DEFAULTS.items():  # indexes from before these fields existed
            stored.setdefault(key, value)
        stored["corpus"] = self.config.corpus
        for key in RUNTIME_FIELDS:
            stored[key] = getattr(self.config, key)
        self.config = BuildConfig.from_dict(stored)
        self.corpus_check = check_corpus(self.config.corpus, skip_bad=self.config.skip_bad)
        self.summary.corpus_notes = self.corpus_check.lines()
        removed = read_tombstones(self.paths.root, id_space_of(manifest))
        with ExampleStore(self.paths.store) as store:
            self.known = KnownRecords.of_store(store, int(manifest["n_examples"]), removed)
        probe = self.known.fresh()
        if probe.count_new(self._passes().unique_records(CorpusStats())) == 0:
            logger.info(
                "every record of %s is already in %s; nothing added",
                self.config.corpus,
                self.paths.root,
            )
            before = manifest["build_config"].get("summary", {})
            known = {k: v for k, v in before.items() if k in BuildSummary.__dataclass_fields__}
            summary = BuildSummary(
                **{
                    **known,
                    "skipped_present": probe.skipped,
                    "changed_present": probe.changed,
                    "skip_report": None,
                    "added": 0,
                    "corpus_notes": self.summary.corpus_notes,
                }
            )
            summary.wall_s = time.perf_counter() - t0
            return summary
        self._sweep_temp_files()
        model, tokenizer, modules = self._load_model()
        projector = LoGraProjector.load(self.paths.projector)
        projector.check_modules(modules)
        compressor = self._compressor(projector)
        preconditioner = Preconditioner.load(self.paths.hessian)
        first_chunk = len(manifest["shards"])
        id_offset = int(manifest["n_examples"])
        n_new, n_examples, self._corpus_stats = self._passes().run(
            model,
            tokenizer,
            modules,
            projector,
            compressor,
            id_offset=id_offset,
            first_chunk=first_chunk,
            known=self.known.fresh(),
        )
        self.summary.added = n_examples
        chunks = range(first_chunk, first_chunk + n_new)
        trained = None
        self.choice = choice_of(manifest)
        if not is_flat(self.choice.factory):  # every shard carries the trained quantizer
            import faiss

            trained = faiss.read_index(str(self.paths.shard(0)))
            trained.reset()
        self._shard_writer().write(
            ScoreTransform(self.config.score, preconditioner),
            chunks,
            id_offset=id_offset,
            first_chunk=first_chunk,
            n_examples=n_examples,
            trained=trained,
        )
        if self.ctx.is_main:
            additions = list(manifest["build_config"].get("additions", [])) + [
                {
                    "corpus": list(self.config.corpus),
                    "id_start": id_offset,
                    "id_end": id_offset + n_examples,
                    "added_at": utc_timestamp(),
                }
            ]
            state = {"created_at": manifest["created_at"]}
            self._finish(
                state,
                projector,
                preconditioner,
                range(0, first_chunk + n_new),
                id_offset + n_examples,
                tokenizer,
                additions=additions,
                previous=manifest,
            )
        self.summary.wall_s = time.perf_counter() - t0
        return self.summary

    # ------------------------------------------------------------------ steps
    def _sweep_temp_files(self) -> None:
        """Remove the temp files a killed build left (``.<name>.tmp-<pid>``), before any rank
        writes."""
        self.ctx.barrier()
        if self.ctx.is_main:
            for stale in stale_temp_files(self.paths.root):
                logger.info("removing %s, left by a killed build", stale)
                stale.unlink(missing_ok=True)
        self.ctx.barrier()

    def _check_identity(self, stored: dict[str, Any], where: str) -> None:
        mine = self.config.identity()
        theirs = {k: v for k, v in stored.items() if k in mine}
        differing = sorted(k for k in mine if theirs.get(k) != mine[k])
        if differing:
            raise ConfigMismatchError(
                f"{self.paths.root} holds {where} built with a different configuration",
                differing,
                "build into a new directory, or rerun with the original settings to resume",
                values={k: (theirs.get(k), mine[k]) for k in differing},
            )

    def _pin_state(self) -> dict[str, Any]:
        # every rank reads the state before any rank writes it, so all take the same branch
        state = self.staging.read_state()
        self.ctx.barrier()
        if state is not None and self._started_over(state):
            state = None
        if state is not None:
            self._check_identity(state["build_config"], "an unfinished build")
            logger.info("resuming the build in %s", self.paths.root)
            return state
        if self.paths.root.is_dir() and any(
            p for p in self.paths.root.iterdir() if p.name != "staging"
        ):
            leftovers = sorted(p.name for p in self.paths.root.iterdir())[:5]
            raise OutputDirectoryError(
                f"{self.paths.root} is not empty ({leftovers}) and holds no Tributary build state; "
                "fix: choose an empty or new directory (nothing there was touched)"
            )
        state = {
            "created_at": utc_timestamp(),
            "build_config": self.config.identity(),
            "package_version": __version__,
        }
        if self.ctx.is_main:
            self.staging.ensure()
            self.staging.write_state(state)
        self.ctx.barrier()
        return self.staging.read_state() or state

    def _started_over(self, state: dict[str, Any]) -> bool:
        """An unfinished build of another configuration that never finished a chunk is cleared
        (True): nothing of value is lost, and the rerun after fixing a setting is not refused."""
        mine = self.config.identity()
        if all(state["build_config"].get(k) == v for k, v in mine.items()):
            return False
        if any(p.name != self.staging.state_path.name for p in self.staging.root.iterdir()):
            return False  # chunks (or one in progress) exist: refuse, as _check_identity explains
        self.ctx.barrier()  # every rank decided before rank 0 clears
        if self.ctx.is_main:
            logger.warning(
                "the unfinished build in %s had not finished any work; starting over with this "
                "configuration",
                self.paths.root,
            )
            for path in (self.paths.projector, self.paths.hessian, self.staging.state_path):
                path.unlink(missing_ok=True)
        self.ctx.barrier()
        return True

    def _load_model(self) -> tuple[torch.nn.Module, Any, list[TrackedModule]]:
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        device = resolve_device(cfg.device, self.ctx.local_rank)
        model = load_causal_lm(cfg.model, device)
        tokenizer = load_tokenizer(cfg.model)
        modules = resolve_modules(model, cfg.include or None, cfg.exclude or None, cfg.modules)
        self.max_tokens = capped_max_tokens(
            cfg.max_tokens, model, "max_tokens"
        )  # longer examples are truncated
        return model, tokenizer, modules

    def _passes(self) -> GradientPass:
        """The build's passes over its corpus, with the current config and token cap."""
        return GradientPass(
            self.config,
            self.staging,
            self.ctx,
            self.summary,
            self.corpus_check,
            self.max_tokens,
            self.max_examples,
        )

    def _compressor(self, projector: LoGraProjector) -> RapidGradCompressor | None:
        cfg = self.config
        k = rapidgrad_dim(cfg.rapidgrad_k, projector.dim)
        if k is None or cfg.rapidgrad_k is None:
            return None
        if k < cfg.rapidgrad_k:
            logger.info(
                "RapidGrad K=%d is above the projected dimension %d: keeping all %d dims",
                cfg.rapidgrad_k,
                projector.dim,
                k,
            )
        return RapidGradCompressor(
            projector.blocks, k, seed=cfg.seed, normalize_layers=cfg.rapidgrad_normalize
        )

    def _fit_preconditioner(self, blocks: list[Block], chunks: range) -> Preconditioner:
        with self.summary.timed("fisher"):
            fisher = FisherAccumulator(blocks)
            for chunk in self.ctx.owned(chunks):
                vectors = self.staging.read_vectors(chunk)
                for start in range(0, vectors.shape[0], ROWS_PER_STEP):
                    fisher.update(
                        torch.from_numpy(np.array(vectors[start : start + ROWS_PER_STEP]))
                    )
            if self.ctx.active:
                fisher.all_reduce()
        with self.summary.timed("precondition"):
            preconditioner = Preconditioner.from_fisher(fisher, self.config.damping)
            del fisher
            if self.ctx.is_main:
                with atomic_output(self.paths.hessian) as tmp:
                    preconditioner.save(tmp)
                crash_point("after_hessian")
        return preconditioner

    def _shard_writer(self) -> ShardWriter:
        assert self.choice is not None  # resolved by build() / add() before the shards
        return ShardWriter(
            self.config, self.paths, self.staging, self.ctx, self.choice, self.summary
        )

    def _finish(
        self,
        state: dict[str, Any],
        projector: LoGraProjector,
        preconditioner: Preconditioner,
        chunks: range,
        n_examples: int,
        tokenizer: Any,
        additions: list[dict[str, Any]],
        previous: dict[str, Any] | None = None,
    ) -> None:
        partial = partial_path_for(self.paths.store)
        if previous is not None and not partial.exists():  # `add`: continue from the finished store
            shutil.copyfile(self.paths.store, partial)
        with self.summary.timed("store"), ExampleStoreWriter(self.paths.store) as writer:
            for chunk in chunks:
                if self.staging.rows_path(chunk).is_file():
                    writer.add_many(StoredExample(**row) for row in self.staging.read_rows(chunk))
            writer.finalize(expected_count=n_examples)
        self._write_skip_report(len(additions))
        crash_point("before_manifest")
        shards = [shard_entry(self.paths, c, self.paths.shard(c)) for c in chunks]
        if sum(s["rows"] for s in shards) != n_examples:
            raise RuntimeError(
                f"shards hold {sum(s['rows'] for s in shards)} rows but {n_examples} examples were "
                "staged"
            )
        self.summary.shards = len(shards)
        self.summary.dim = int(shards[0]["dim"]) if shards else 0
        atomic_write_json(self.paths.build_config, self.config.to_dict())
        listed = [
            self.paths.projector,
            self.paths.hessian,
            self.paths.store,
            self.paths.build_config,
        ]
        if self.paths.vectors_dir.is_dir():
            listed += sorted(self.paths.vectors_dir.glob("*.npy"))
        listed += [self.paths.root / s["file"] for s in shards]
        # the files the manifest lists, nothing else a killed run may have left beside them
        self.summary.bytes_per_example = sum(p.stat().st_size for p in listed) / max(n_examples, 1)
        summary = {
            k: v
            for k, v in self.summary.__dict__.items()
            if k not in ("wall_s", "gradient_tokens_per_s", "stage_s", "batch_timings")
        }
        if previous is not None:  # `add`: counts cover the whole index
            before = previous["build_config"].get("summary", {})
            for key in (
                "examples",
                "tokens",
                "target_tokens",
                "truncated",
                "no_targets",
                "skipped_bad",
            ):
                summary[key] = summary.get(key, 0) + before.get(key, 0)
        write_manifest(
            self.paths,
            config=self.config,
            created_at=state["created_at"],
            projector=projector,
            preconditioner=preconditioner,
            shards=shards,
            n_examples=n_examples,
            tokenizer=tokenizer,
            summary=summary,
            additions=additions,
            index_choice=self.choice.to_dict() if self.choice is not None else {},
        )
        if not self.keep_staging:
            self.staging.remove()

    def _write_skip_report(self, addition: int) -> None:
        """``skipped_records.jsonl`` (``.add-N`` for the N-th addition): one line per skipped bad
        record."""
        if self._corpus_stats is None or not self._corpus_stats.bad:
            return
        name = "skipped_records.jsonl" if addition == 0 else f"skipped_records.add-{addition}.jsonl"
        write_skip_report(self._corpus_stats, self.paths.root / name)
        self.summary.skip_report = str(self.paths.root / name)
