"""LoGra projections: per tracked module a pair ``P_in ∈ R^{k_in×d_in}``,
``P_out ∈ R^{k_out×d_out}``.

A module's projected gradient is ``G = P_out ∇W P_inᵀ``. Initialisations:

- ``random``: i.i.d. ``N(0, 1/k)`` entries (Johnson–Lindenstrauss scaling, so
  ``E‖P v‖² = ‖v‖²``), one generator per module seeded from ``(seed, module name)``;
- ``pca``: rows are the top eigenvectors of the activation covariance ``E[x xᵀ]`` (for
  ``P_in``) and of the output-gradient covariance ``E[δ δᵀ]`` (for ``P_out``), i.e. the KFAC
  factors' eigenbases, estimated on sample batches (see :mod:`..hessian.kronecker_statistics`);
- ``identity``: no projection at all (``k = d``), the full per-example gradient. Only sensible
  for small models or as an exact baseline.

Projections are stored with safetensors (no pickle): tensors ``<module>.p_in``/``<module>.p_out``
plus a JSON header that records the kind, seed and shapes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ModuleSelectionError
from .module_selection import TrackedModule

logger = logging.getLogger(__name__)

PROJECTOR_KINDS = ("random", "pca", "identity")


@dataclass
class ProjectionConfig:
    """How tracked modules are projected.

    ``rank_in``/``rank_out`` trade index size and quality: a module's vector has
    ``rank_out·rank_in`` dims, so 16×16 gives 256 per module and 64×64 gives 4096 (16× the disk,
    the Fisher grows with the square). ``pca`` keeps the directions where activations and
    gradients actually vary and needs one statistics pass over a corpus sample; ``random`` needs
    none. ``overrides`` maps fnmatch patterns over module names to ``(rank_in, rank_out)``.
    """

    kind: str = "random"
    rank_in: int = 16
    rank_out: int = 16
    seed: int = 0
    overrides: dict[str, tuple[int, int]] = field(default_factory=dict)

    def ranks_for(self, name: str) -> tuple[int, int]:
        for pattern, ranks in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                return int(ranks[0]), int(ranks[1])
        return self.rank_in, self.rank_out


@dataclass
class ModuleProjection:
    """The projection pair of one module. ``p_in``/``p_out`` are None for ``identity``."""

    name: str
    d_in: int
    d_out: int
    p_in: torch.Tensor | None  # [k_in, d_in]
    p_out: torch.Tensor | None  # [k_out, d_out]

    @property
    def k_in(self) -> int:
        return self.d_in if self.p_in is None else int(self.p_in.shape[0])

    @property
    def k_out(self) -> int:
        return self.d_out if self.p_out is None else int(self.p_out.shape[0])

    @property
    def dim(self) -> int:
        return self.k_out * self.k_in


@dataclass(frozen=True)
class Block:
    """A contiguous slice ``[start, stop)`` of the gradient vector that belongs to one module."""

    name: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


class LoGraProjector:
    """The projections of every tracked module, in tracking order."""

    def __init__(self, kind: str, seed: int, projections: Sequence[ModuleProjection]):
        if kind not in PROJECTOR_KINDS:
            raise ValueError(
                f"unknown projector kind {kind!r}; choose from {list(PROJECTOR_KINDS)}"
            )
        self.kind = kind
        self.seed = seed
        self.projections = list(projections)
        offset, blocks = 0, []
        for proj in self.projections:
            blocks.append(Block(proj.name, offset, offset + proj.dim))
            offset += proj.dim
        self.blocks: list[Block] = blocks
        self.dim = offset

    # ----------------------------------------------------------------- construction
    @classmethod
    def random(cls, modules: Sequence[TrackedModule], config: ProjectionConfig) -> LoGraProjector:
        """Seeded Gaussian projections with ``N(0, 1/k)`` entries."""
        projections = []
        for m in modules:
            k_in, k_out = _clamp_ranks(m, *config.ranks_for(m.name))
            gen = torch.Generator().manual_seed(_module_seed(config.seed, m.name))
            p_in = torch.randn(k_in, m.d_in, generator=gen, dtype=torch.float64) / k_in**0.5
            p_out = torch.randn(k_out, m.d_out, generator=gen, dtype=torch.float64) / k_out**0.5
            projections.append(
                ModuleProjection(m.name, m.d_in, m.d_out, p_in.float(), p_out.float())
            )
        return cls("random", config.seed, projections)

    @classmethod
    def identity(cls, modules: Sequence[TrackedModule]) -> LoGraProjector:
        """No projection: vectors are the full per-example weight gradients."""
        return cls(
            "identity", 0, [ModuleProjection(m.name, m.d_in, m.d_out, None, None) for m in modules]
        )

    @classmethod
    def pca(
        cls,
        modules: Sequence[TrackedModule],
        config: ProjectionConfig,
        covariances: Mapping[str, tuple[torch.Tensor | None, torch.Tensor | None]],
    ) -> LoGraProjector:
        """Top eigenvectors of each module's activation and output-gradient covariances.

        ``covariances[name] = (A, S)`` with ``A = E[x xᵀ]`` ``[d_in, d_in]`` and ``S = E[δ δᵀ]``
        ``[d_out, d_out]``. A side whose covariance is None (too wide to estimate) falls back to
        the seeded random projection, and the fallback is logged.
        """
        fallback = cls.random(modules, config)
        projections = []
        for m, rnd in zip(modules, fallback.projections):
            if m.name not in covariances:
                raise ModuleSelectionError(
                    f"no covariance statistics for module {m.name!r}; estimate them on the same "
                    "module selection as the projector"
                )
            cov_in, cov_out = covariances[m.name]
            p_in = _top_eigenvectors(cov_in, rnd.k_in) if cov_in is not None else rnd.p_in
            p_out = _top_eigenvectors(cov_out, rnd.k_out) if cov_out is not None else rnd.p_out
            if cov_in is None or cov_out is None:
                logger.warning(
                    "module %s: covariance too wide for PCA on one side, using random", m.name
                )
            projections.append(ModuleProjection(m.name, m.d_in, m.d_out, p_in, p_out))
        return cls("pca", config.seed, projections)

    # ----------------------------------------------------------------- persistence
    def describe(self) -> dict:
        """JSON-able summary for the manifest."""
        return {
            "kind": self.kind,
            "seed": self.seed,
            "dim": self.dim,
            "modules": [
                {"name": p.name, "d_in": p.d_in, "d_out": p.d_out, "k_in": p.k_in, "k_out": p.k_out}
                for p in self.projections
            ],
        }

    def fingerprint(self) -> str:
        """sha256 over the description and the matrices: equal iff the projector is the same."""
        h = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode())
        for p in self.projections:
            for t in (p.p_in, p.p_out):
                if t is not None:
                    h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write ``projector.safetensors`` (call through an atomic writer for crash safety)."""
        tensors: dict[str, torch.Tensor] = {}
        for p in self.projections:
            if p.p_in is not None:
                tensors[f"{p.name}.p_in"] = p.p_in.detach().cpu().contiguous()
            if p.p_out is not None:
                tensors[f"{p.name}.p_out"] = p.p_out.detach().cpu().contiguous()
        save_file(
            tensors,
            str(path),
            metadata={"tributary.projector": json.dumps(self.describe(), sort_keys=True)},
        )

    @classmethod
    def load(cls, path: str | Path) -> LoGraProjector:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "tributary.projector" not in meta:
            raise ValueError(
                f"{path} is not a Tributary projector file (no 'tributary.projector' header)"
            )
        desc = json.loads(meta["tributary.projector"])
        tensors = load_file(str(path))
        projections = [
            ModuleProjection(
                m["name"],
                m["d_in"],
                m["d_out"],
                tensors.get(f"{m['name']}.p_in"),
                tensors.get(f"{m['name']}.p_out"),
            )
            for m in desc["modules"]
        ]
        return cls(desc["kind"], int(desc["seed"]), projections)

    def check_modules(self, modules: Sequence[TrackedModule]) -> None:
        """Raise when ``modules`` are not the ones this projector was built for."""
        got = [(m.name, m.d_in, m.d_out) for m in modules]
        want = [(p.name, p.d_in, p.d_out) for p in self.projections]
        if got != want:
            missing = sorted({w[0] for w in want} - {g[0] for g in got})
            extra = sorted({g[0] for g in got} - {w[0] for w in want})
            raise ModuleSelectionError(
                "the model's tracked modules differ from the projector's: "
                f"missing {missing[:5]}, unexpected {extra[:5]}, or shapes differ; "
                "use the same model and module selection the projector was built with"
            )


def _module_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _clamp_ranks(m: TrackedModule, k_in: int, k_out: int) -> tuple[int, int]:
    if k_in < 1 or k_out < 1:
        raise ValueError(f"ranks must be >= 1, got ({k_in}, {k_out}) for {m.name}")
    return min(k_in, m.d_in), min(k_out, m.d_out)


def _top_eigenvectors(cov: torch.Tensor, k: int) -> torch.Tensor:
    """Rows = the ``k`` leading eigenvectors of a symmetric PSD matrix, deterministic signs."""
    evals, evecs = torch.linalg.eigh(cov.to(torch.float64))  # ascending eigenvalues
    top = evecs[:, -k:].flip(-1).T.contiguous()  # [k, d], largest first
    # fix the sign ambiguity so a rebuild is byte-identical: largest |entry| of each row positive
    idx = top.abs().argmax(dim=1)
    signs = torch.sign(top[torch.arange(k), idx])
    signs[signs == 0] = 1
    return (top * signs[:, None]).float()
