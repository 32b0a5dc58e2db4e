"""The resolved configuration of an index build.

Every field changes what is stored (and so must match for a resumed build, an ``add``, and
the server), only how fast it is computed, or only how the service ranks (``ranking``,
``saturation``: recorded in the manifest). :meth:`BuildConfig.identity` holds the first; the
build refuses to write into a directory whose stored identity differs, naming the fields. The
resolved config is written into the index directory as ``build_config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .gradients.module_selection import MODULE_PRESETS
from .gradients.objectives import OBJECTIVES
from .gradients.projector import PROJECTOR_KINDS, ProjectionConfig
from .hessian.scores import SCORE_VARIANTS

RANKINGS = ("linear", "span_gated")
"""The rankings an index can be served with (:mod:`.query.ranking`)."""


@dataclass(frozen=True)
class RankingConfig:
    """How the service orders the examples it finds (:mod:`.query.ranking`).

    Recorded in the manifest by the build (``ranking`` and ``saturation`` are build options, the
    rest keep their defaults there); ``tributary serve`` overrides any field
    (``TRIBUTARY_RANKING``, ``TRIBUTARY_SATURATION``, ...) without a rebuild. The stored vectors
    do not depend on it. The defaults are the measured choices (``benchmarks/RESULTS.md``).
    """

    ranking: str = "span_gated"
    """``span_gated`` (influence indexes; saturated, gated copy spans) or ``linear`` (the
    influence on the whole response)."""
    saturation: float = 30.0
    """``k`` of the saturating curve ``z / (z + k)``, in units of a token's RMS score."""
    presence_k: float = 2.0
    """A token matches an example where its standardised score exceeds this; a copied span's
    presence gets half credit there."""
    presence_selectivity: float = 2.0
    """A copied span's core: its tokens matching at most this many times the share of the
    reference sample that its most selective token matches."""
    presence_floor: float = 0.002
    """The smallest share limit of a core, so that two rare tokens of a span both count."""
    candidates: int = 200
    """First-stage candidates per query direction that ``span_gated`` re-scores exactly (at
    least ``top_k``)."""
    reference_rows: int = 4096
    """Stored vectors in the reference sample the shares are counted on: every example of a
    smaller index, else this many evenly spaced (kept in memory by the service)."""

    def __post_init__(self) -> None:
        problems = []
        if self.ranking not in RANKINGS:
            problems.append(f"ranking={self.ranking!r} (choose from {list(RANKINGS)})")
        for name in ("saturation", "presence_k"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                problems.append(
                    f"{name}={value!r} (must be a positive number; default "
                    f"{getattr(RankingConfig, name):g})"
                )
        if not (
            isinstance(self.presence_selectivity, (int, float))
            and self.presence_selectivity >= 1
            and math.isfinite(self.presence_selectivity)
        ):
            problems.append(
                f"presence_selectivity={self.presence_selectivity!r} (must be a number "
                f">= 1; default {RankingConfig.presence_selectivity:g})"
            )
        if not (
            isinstance(self.presence_floor, (int, float)) and 0.0 <= self.presence_floor <= 1.0
        ):
            problems.append(
                f"presence_floor={self.presence_floor!r} (must be a share in [0, 1]; "
                f"default {RankingConfig.presence_floor:g})"
            )
        for name in ("candidates", "reference_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(
                    f"{name}={value!r} (must be an integer >= 1; default "
                    f"{getattr(RankingConfig, name)})"
                )
        if problems:
            raise ValueError("invalid ranking configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankingConfig:
        """The fields of ``data`` that are this class's (a manifest's ``build_config`` holds
        others); a missing field keeps its default, a missing ``ranking`` is ``linear`` (indexes
        from before rankings were recorded)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        values.setdefault("ranking", "linear")
        return cls(**values)


# Fields that only change speed or logging: a resume may change them freely.
RUNTIME_FIELDS = frozenset(
    {"batch_tokens", "device", "autocast", "progress", "num_threads", "skip_bad"}
)
# Fields that only change how the service ranks (recorded in the manifest, not in the identity).
QUERY_FIELDS = frozenset({"ranking", "saturation"})


@dataclass
class BuildConfig:
    """How an index is built. Defaults are the measured choices (``benchmarks/RESULTS.md``)."""

    model: str = ""
    """Local path of a Hugging Face causal LM (``AutoModelForCausalLM.from_pretrained``) and its
    tokenizer."""
    corpus: list[str] = field(default_factory=list)
    """JSONL / Parquet files (or directories of them); records are ``text``, ``prompt``+``response``
    or ``messages``."""
    modules: str = "mlp+output"
    """Which linear modules to track when ``include`` is empty: ``mlp+output`` (the MLP blocks and
    the output layer, where a transformer stores facts; ``all`` for a model without ``*mlp*``
    modules) or ``all``. Measured trade-offs of this and every knob: ``docs/tuning.md``."""
    include: list[str] = field(default_factory=list)
    """fnmatch patterns of linear modules to track (overrides ``modules``), e.g.
    ``["*.mlp.*", "lm_head"]``."""
    exclude: list[str] = field(default_factory=list)
    """Patterns removed from the tracked set."""
    projector: str = "random"
    """``random`` (no extra pass), ``pca`` (one statistics pass over ``pca_examples``; keeps the
    directions where activations and gradients vary, better quality at the same rank) or
    ``identity`` (full gradients, small models only)."""
    rank_in: int = 64
    """LoGra input rank per module; a module's projected block has ``rank_in·rank_out`` dims."""
    rank_out: int = 64
    """LoGra output rank per module (64×64 → 4,096 dims a module before RapidGrad). Higher rank
    keeps more of each gradient for more projection work (and, without RapidGrad, a larger index and
    Fisher)."""
    seed: int = 0
    """Seed of the random projections, RapidGrad and IVF training."""
    pca_examples: int = 512
    """Examples used to estimate the covariances for ``pca`` (more = stabler eigenvectors)."""
    rapidgrad_k: int | None = 4096
    """Compress the LoGra vector with RapidGrad to this many dims, capped at the LoGra dimension,
    and precondition with one dense ``K×K`` Fisher over all modules (``off``: store the LoGra
    vector, per-module Fisher blocks). Keep ``damping / K`` when changing it."""
    rapidgrad_normalize: bool = False
    """RapidIn's layer-wise L2 normalisation before compressing (equalises the modules' weight, does
    not preserve inner products); it cost quality on the benchmarks."""
    objective: str = "margin"
    """What is differentiated per example: ``margin`` (each target token's log-odds ``log p/(1−p)``)
    or ``nll`` (the training loss, whose gradient vanishes on text the model has memorised)."""
    score: str = "influence"
    """Score variant folded into the stored vectors: ``influence``, ``relatif`` (divided by the
    example's self-influence), ``cosine`` or ``grad_dot`` (no Hessian)."""
    damping: float = 24.0
    """α in ``λ = α · mean eig(F)`` for each Fisher block: smaller trusts the Fisher more, larger
    drifts towards ``grad_dot``. Rescale it with the block: keep ``α / K`` under RapidGrad,
    ``α / r²`` per module without it."""
    ranking: str | None = None
    """How the service ranks examples (:class:`RankingConfig`): ``span_gated`` (``influence`` only,
    its default) or ``linear`` (the default for the other scores); ``tributary serve --ranking``
    overrides it."""
    saturation: float = RankingConfig.saturation
    """``k`` of ``span_gated``'s saturating curve ``z / (z + k)``, in units of a token's RMS
    score: smaller lets fewer strong tokens decide, very large tends to a weighted linear sum."""
    max_tokens: int = 512
    """Truncate longer examples (counted and reported)."""
    shard_size: int = 50_000
    """Examples per shard (also the unit of resume and of work per process)."""
    index_factory: str = "auto"
    """``auto`` (``Flat`` for a small index, else ``IVF{nlist},PQ{m}x4fs`` sized from the examples,
    the dimension and ``index_memory_gib``; the choice and why are in the manifest), or a FAISS
    ``index_factory`` string: ``Flat`` (exact), e.g. ``IVF4096,PQ64`` / ``SQfp16`` (compressed;
    exact vectors are kept in ``vectors/`` for re-ranking)."""
    index_memory_gib: float = 16.0
    """``auto``: GiB of RAM the search index may use; a flat index larger than this is
    compressed (less memory and a faster scan, for a re-scored approximate first stage)."""
    flat_max_examples: int | None = None
    """``auto``: the most examples kept in an exact flat index (None: as many as the memory
    budget holds); past it the first stage probes IVF-PQ lists instead of scanning every vector
    (faster; approximate, so check its recall before serving)."""
    train_examples: int = 100_000
    """Vectors sampled to train a compressed FAISS index (``auto``: 64 per IVF list, at most
    this many)."""
    vector_dtype: str = "float32"
    """Stored exact vectors: ``float32`` or ``float16`` (half the disk, ~3 significant digits)."""
    batch_tokens: int = 4096
    """Padded tokens per forward/backward batch (memory vs speed)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``... Under torchrun each rank takes
    its local GPU."""
    autocast: str | None = None
    """``bf16`` or ``fp16`` autocast for the model on CUDA (projections and sums stay float32)."""
    num_threads: int | None = None
    """torch CPU threads (None = torch's default)."""
    progress: bool = True
    """Show a progress bar."""
    skip_bad: bool = False
    """Skip malformed records and later uses of a repeated id instead of stopping at the first; each
    skipped record's file, line and reason are written to skipped_records.jsonl in the index."""

    def __post_init__(self) -> None:
        problems = []
        if self.projector not in PROJECTOR_KINDS:
            problems.append(f"projector={self.projector!r} (choose from {list(PROJECTOR_KINDS)})")
        if self.modules not in MODULE_PRESETS:
            problems.append(f"modules={self.modules!r} (choose from {list(MODULE_PRESETS)})")
        if self.objective not in OBJECTIVES:
            problems.append(f"objective={self.objective!r} (choose from {list(OBJECTIVES)})")
        if self.score not in SCORE_VARIANTS:
            problems.append(f"score={self.score!r} (choose from {list(SCORE_VARIANTS)})")
        if self.damping <= 0:
            problems.append(f"damping={self.damping} (must be > 0)")
        if self.ranking is None:
            self.ranking = "span_gated" if self.score == "influence" else "linear"
        if self.ranking not in RANKINGS:
            problems.append(f"ranking={self.ranking!r} (choose from {list(RANKINGS)})")
        elif self.ranking != "linear" and self.score != "influence":
            problems.append(
                f"ranking={self.ranking!r} with score={self.score!r} (it standardises influence "
                f"scores; use score='influence', or ranking='linear' to keep {self.score!r})"
            )
        if not (self.saturation > 0 and math.isfinite(self.saturation)):
            problems.append(
                f"saturation={self.saturation} (must be a positive number; default "
                f"{RankingConfig.saturation:g})"
            )
        for name in (
            "rank_in",
            "rank_out",
            "max_tokens",
            "shard_size",
            "batch_tokens",
            "pca_examples",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (must be >= 1)")
        if self.rapidgrad_k is not None and self.rapidgrad_k < 1:
            problems.append(f"rapidgrad_k={self.rapidgrad_k} (must be >= 1 or unset)")
        if self.vector_dtype not in ("float32", "float16"):
            problems.append(f"vector_dtype={self.vector_dtype!r} (float32 or float16)")
        if not (
            isinstance(self.index_memory_gib, (int, float))
            and self.index_memory_gib > 0
            and math.isfinite(self.index_memory_gib)
        ):
            problems.append(
                f"index_memory_gib={self.index_memory_gib!r} (must be a positive "
                "number of GiB; default 16)"
            )
        if self.flat_max_examples is not None and self.flat_max_examples < 0:
            problems.append(f"flat_max_examples={self.flat_max_examples} (must be >= 0)")
        if not isinstance(self.index_factory, str) or not self.index_factory.strip():
            problems.append(
                f"index_factory={self.index_factory!r} (auto, Flat, SQ8, IVF1024,PQ64, ...)"
            )
        if self.autocast not in (None, "bf16", "fp16"):
            problems.append(f"autocast={self.autocast!r} (bf16, fp16 or unset)")
        if problems:
            raise ValueError("invalid build configuration: " + "; ".join(problems))

    @property
    def projection(self) -> ProjectionConfig:
        return ProjectionConfig(
            kind=self.projector, rank_in=self.rank_in, rank_out=self.rank_out, seed=self.seed
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the stored vectors (everything but runtime and query knobs)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS | QUERY_FIELDS}

    def ranking_config(self) -> RankingConfig:
        """The :class:`RankingConfig` this build records (its other fields at their defaults)."""
        assert self.ranking is not None  # resolved in __post_init__
        return RankingConfig(ranking=self.ranking, saturation=self.saturation)

    def query_settings(self) -> dict[str, Any]:
        """What the manifest records of the ranking: every :class:`RankingConfig` field."""
        return self.ranking_config().to_dict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown build configuration fields {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> BuildConfig:
        """Load a JSON config file (``--config``); YAML is accepted when PyYAML is installed."""
        text = Path(path).read_text(encoding="utf-8")
        if str(path).endswith((".yaml", ".yml")):
            import yaml  # optional

            return cls.from_dict(yaml.safe_load(text) or {})
        return cls.from_dict(json.loads(text))
