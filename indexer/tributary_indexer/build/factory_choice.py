"""``--index-factory auto``: the FAISS factory chosen from the examples, the dimension and a
memory budget.

The rule: an index of ``N`` examples of dimension ``D`` is ``Flat`` (exact) while its vectors
(``4·N·D`` bytes) fit the memory budget (and ``N`` is at most ``flat_max_examples`` when one is
set: an IVF-PQ first stage is faster than a flat scan from about 10,000 examples on 2 CPU
cores, but it is approximate: on real gradient vectors its recall@200 at an eighth of the lists
was about half on a 2,100-example index and 0.93 on a 100,000-example one; see
``benchmarks/RESULTS.md``). Otherwise it is
``IVF{nlist},PQ{m}x4fs``, FAISS's fast-scan IVF-PQ (4-bit codes scanned with SIMD lookups: on
real gradient vectors it kept the 8-bit codes' first-stage recall at a fifth of their scan time
and half their bytes): ``nlist`` is ``4·√rows`` of a shard rounded to a power of two (and at
most one list per 39 examples, FAISS's minimum to train a list); ``m`` is the largest divisor
of ``D`` up to ``0.4·D`` (``m/2`` code bytes: at most a twentieth of the float32 vector),
smaller while the codes (plus 16 bytes of ids an example) exceed the budget, and never under
one sub-quantizer per 32 dimensions; ``nprobe`` probes an eighth of the lists (at least 16):
the re-scored first
stage's recall@200 against a flat index was 0.99 on clustered synthetic vectors (unstructured
ones need far more lists: measure, and set the service's ``nprobe``); the
quantizer trains on 64 examples a list (at least 9,984; at most
``train_examples``, never under 39 a list). Compressed shards keep their exact vectors, so the
first stage's candidates are re-scored exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

AUTO = "auto"
"""The ``index_factory`` value that asks for this rule."""
FLAT_MAX_EXAMPLES: int | None = None
"""Largest index ``auto`` keeps flat (``None``: as large as the memory budget allows)."""
INDEX_MEMORY_GIB = 16.0
"""Default memory budget of the search index, GiB."""
DEFAULT_NPROBE = 32
"""Lists probed per query when neither the manifest nor the service says (explicit factories)."""
_MIN_PER_LIST = 39  # FAISS warns below 39 training vectors per centroid
_TRAIN_PER_LIST = 64
_PQ_TRAIN_MIN = 39 * 256  # a sample that would also train 8-bit codes (39 per codeword)
_PQ_MIN_EXAMPLES = 256  # fewer examples than 8-bit codewords: too few to compress
_PQ_BITS = 4  # fast-scan codes: 16 codewords a sub-quantizer, two codes a byte
_ID_BYTES = 16  # an example's id in the inverted list and in the id map
_MAX_DIMS_PER_SUBQUANTIZER = 32  # the smallest m: one sub-quantizer per 32 dimensions


@dataclass(frozen=True)
class FactoryChoice:
    """What ``auto`` (or an explicit factory) chose, with why; recorded in the manifest."""

    factory: str
    """The FAISS ``index_factory`` string the shards are written with."""
    nprobe: int | None
    """IVF lists probed per query (``None``: not an IVF index, or an explicit factory)."""
    train_examples: int
    """Vectors sampled to train the quantizer (0 for ``Flat``)."""
    reason: str
    """One sentence: the inputs and the branch of the rule taken."""
    requested: str = AUTO
    n_examples: int = 0
    dim: int = 0
    memory_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _power_of_two(x: float) -> int:
    """The power of two nearest to ``x`` on a log scale (at least 1)."""
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def ivf_lists(shard_rows: int) -> int:
    """``nlist`` for shards of ``shard_rows`` rows: ``4·√rows`` rounded to a power of two, at
    most one list per 39 rows (rounded down to a power of two), at least 1."""
    nlist = _power_of_two(4 * math.sqrt(max(shard_rows, 1)))
    cap = 1 << max(0, int(math.floor(math.log2(max(shard_rows // _MIN_PER_LIST, 1)))))
    return min(nlist, cap)


def pq_subquantizers(dim: int, max_m: float | None = None) -> int:
    """``m`` of ``PQ{m}x4fs``: the largest divisor of ``dim`` up to ``0.4·dim`` (and up to
    ``max_m`` when given), never under ``dim / 32``."""
    divisors = [m for m in range(1, dim + 1) if dim % m == 0]
    floor = min(m for m in divisors if dim // m <= _MAX_DIMS_PER_SUBQUANTIZER)
    limit = 0.4 * dim if max_m is None else min(0.4 * dim, max_m)
    fitting = [m for m in divisors if m <= limit]
    return max(max(fitting, default=floor), floor)


def code_bytes(m: int) -> int:
    """Bytes of one example's fast-scan code of ``m`` 4-bit sub-quantizers."""
    return (m * _PQ_BITS + 7) // 8


def compressed_factory(nlist: int, m: int) -> str:
    """The factory string of the compressed branch: fast-scan IVF-PQ, ``m`` 4-bit codes."""
    return f"IVF{nlist},PQ{m}x{_PQ_BITS}fs"


def default_nprobe(nlist: int) -> int:
    """Lists probed per query: an eighth of ``nlist``, at least 16 (at most ``nlist``)."""
    return min(nlist, max(16, nlist // 8))


def training_size(nlist: int, n_examples: int, cap: int) -> int:
    """Training vectors: 64 a list and at least 9,984, at most ``cap`` but never under 39 a
    list, at most ``n_examples``."""
    wanted = max(_TRAIN_PER_LIST * nlist, _PQ_TRAIN_MIN)
    return min(n_examples, max(min(wanted, cap), _MIN_PER_LIST * nlist))


def choose_factory(
    n_examples: int,
    dim: int,
    memory_bytes: int = int(INDEX_MEMORY_GIB * 2**30),
    *,
    shard_rows: int | None = None,
    flat_max_examples: int | None = FLAT_MAX_EXAMPLES,
    train_cap: int = 100_000,
) -> FactoryChoice:
    """The factory ``auto`` picks for ``n_examples`` vectors of ``dim`` dims within
    ``memory_bytes`` (see the module docstring); ``shard_rows`` (default: all in one shard)
    sizes the IVF lists, ``train_cap`` bounds the training sample."""
    if n_examples < 1 or dim < 1 or memory_bytes < 1:
        raise ValueError(
            f"choose_factory needs n_examples, dim and memory_bytes >= 1, got "
            f"{n_examples}, {dim}, {memory_bytes}"
        )
    flat_bytes = 4 * n_examples * dim
    common: dict[str, Any] = {"n_examples": n_examples, "dim": dim, "memory_bytes": memory_bytes}
    inputs = f"N={n_examples}, D={dim}, budget {memory_bytes / 2**30:.3g} GiB"
    flat_gib = f"4·N·D = {flat_bytes / 2**30:.3g} GiB"
    fits = flat_bytes <= memory_bytes
    if fits and (flat_max_examples is None or n_examples <= flat_max_examples):
        why = f"{flat_gib} fits the budget"
        if flat_max_examples is not None:
            why = f"N <= {flat_max_examples} and {why}"
        return FactoryChoice("Flat", None, 0, f"Flat ({inputs}): {why}", **common)
    if n_examples < _PQ_MIN_EXAMPLES:
        why = f"too few examples to train PQ codebooks (at least {_PQ_MIN_EXAMPLES})"
        return FactoryChoice("Flat", None, 0, f"Flat ({inputs}): {why}", **common)
    rows = min(shard_rows or n_examples, n_examples)
    nlist = ivf_lists(rows)
    room = (memory_bytes - 4 * nlist * dim) / n_examples - _ID_BYTES
    m = pq_subquantizers(dim, max_m=max(room, 0.0) * 8 / _PQ_BITS)
    nprobe = default_nprobe(nlist)
    train = training_size(nlist, n_examples, train_cap)
    index_bytes = n_examples * (code_bytes(m) + _ID_BYTES) + 4 * nlist * dim
    why = f"N > {flat_max_examples}" if fits else f"{flat_gib} exceeds the budget"
    over = (
        ""
        if index_bytes <= memory_bytes
        else (f"; over the budget even so ({index_bytes / 2**30:.3g} GiB at the smallest m)")
    )
    if over:
        logger.warning("index factory auto: %s", over[2:])
    factory = compressed_factory(nlist, m)
    reason = (
        f"{factory} ({inputs}): {why}; nlist from {rows} rows a shard, {code_bytes(m)} code "
        f"bytes an example, nprobe {nprobe}, {train} training vectors{over}"
    )
    return FactoryChoice(factory, nprobe, train, reason, **common)


def explicit_choice(factory: str, n_examples: int, dim: int, train_examples: int) -> FactoryChoice:
    """The record of an explicitly configured factory (used as given)."""
    from .shards import is_flat

    flat = is_flat(factory)
    return FactoryChoice(
        factory,
        None,
        0 if flat else min(train_examples, n_examples),
        f"{factory}: set explicitly",
        requested=factory,
        n_examples=n_examples,
        dim=dim,
    )


def resolve_factory(config: Any, n_examples: int, dim: int) -> FactoryChoice:
    """The factory a build of ``config`` (a :class:`~tributary_indexer.config.BuildConfig`)
    writes for ``n_examples`` vectors of ``dim`` dims."""
    if config.index_factory != AUTO:
        return explicit_choice(config.index_factory, n_examples, dim, config.train_examples)
    return choose_factory(
        n_examples,
        dim,
        int(config.index_memory_gib * 2**30),
        shard_rows=config.shard_size,
        flat_max_examples=config.flat_max_examples,
        train_cap=config.train_examples,
    )


def recorded_factory(manifest: Any) -> str:
    """The factory an index's shards were written with: the manifest's ``index_choice``, else
    (indexes from before it was recorded) its ``build_config``'s ``index_factory``."""
    choice, build = _parts(manifest)
    return str(choice.get("factory") or build.get("index_factory", "Flat"))


def recorded_nprobe(manifest: Any) -> int | None:
    """The ``nprobe`` the manifest's ``index_choice`` recorded (``None`` when none)."""
    choice, _ = _parts(manifest)
    value = choice.get("nprobe")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _parts(manifest: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    if isinstance(manifest, Mapping):
        return manifest.get("index_choice") or {}, manifest.get("build_config") or {}
    return manifest.index_choice or {}, manifest.build_config or {}


def choice_of(manifest: Any) -> FactoryChoice:
    """The :class:`FactoryChoice` an index recorded (rebuilt from its ``build_config`` for
    indexes written before choices were recorded)."""
    choice, build = _parts(manifest)
    if choice:
        known = set(FactoryChoice.__dataclass_fields__)
        return FactoryChoice(**{k: v for k, v in choice.items() if k in known})
    factory = str(build.get("index_factory", "Flat"))
    return explicit_choice(factory, 0, 0, int(build.get("train_examples", 100_000)))
