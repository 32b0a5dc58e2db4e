"""``manifest.json``: what an index was built from, and the checksums that prove it is whole.

The manifest is written last, through :func:`~tributary_indexer.atomic_io.atomic_write_json`
(sorted keys, indent 2), so an index directory without one is an unfinished build, and equal
manifests are byte-identical files. Everything a server must agree with before answering
queries lives here: the model (config and weight hashes), the tokenizer hash, the projector, the
vector dimension and dtype, the score variant and the damping. :meth:`Manifest.diff_fields`
names what differs; :meth:`Manifest.check_compatible` raises
:class:`~tributary_indexer.errors.ConfigMismatchError` with the fields and values.

Shards cover half-open id ranges ``[id_start, id_end)`` that tile ``0..n_examples`` in order;
``files`` holds the sha256 of every other index file (projector, hessian, examples.sqlite),
keyed by path relative to the index directory.
:func:`~tributary_indexer.build.verification.verify_manifest` checks all of it.

``created_at`` is supplied by the builder: to resume to a byte-identical manifest it must keep
the value from the first attempt (:func:`utc_timestamp` honours ``SOURCE_DATE_EPOCH``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic_io import atomic_write_json, sha256_file
from ..errors import ConfigMismatchError, IndexIntegrityError, ModelLoadError, TokenizerError

logger = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "COMPATIBILITY_FIELDS",
    "ModelInfo",
    "ProjectorModule",
    "ProjectorInfo",
    "DampingInfo",
    "ShardInfo",
    "Manifest",
    "hash_model_files",
    "hash_tokenizer",
    "utc_timestamp",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
COMPATIBILITY_FIELDS: tuple[str, ...] = (
    "format_version",
    "model.config_sha256",
    "model.weights_sha256",
    "tokenizer_sha256",
    "projector",
    "dim",
    "dtype",
    "score_variant",
    "damping",
)
"""What a server and a resumed build must agree on (dotted paths into the manifest)."""


@dataclass
class ModelInfo:
    """The model an index was built for."""

    path: str
    config_sha256: str
    weights_sha256: str
    model_type: str = ""


@dataclass
class ProjectorModule:
    """One tracked module and its projection sizes (``G_m`` is ``k_out x k_in``)."""

    name: str
    d_in: int
    d_out: int
    k_in: int
    k_out: int


@dataclass
class ProjectorInfo:
    """How gradients were projected: kind (``random``/``pca``/``identity``), seed, modules,
    extras."""

    kind: str
    seed: int
    modules: list[ProjectorModule] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    """Anything else that changes the vectors (e.g. RapidGrad ``K`` and its seed)."""


@dataclass
class DampingInfo:
    """``λ_m = alpha · mean eig(F_m)``: the alpha and the resulting per-module lambdas."""

    alpha: float
    lambdas: dict[str, float] = field(default_factory=dict)


@dataclass
class ShardInfo:
    """One FAISS shard: ``rows`` vectors with ids ``[id_start, id_end)``."""

    file: str
    """Path relative to the index directory, e.g. ``shards/shard-00000.faiss``."""
    rows: int
    id_start: int
    id_end: int
    sha256: str
    bytes: int | None = None
    """File size; checked even when checksums are skipped (absent in indexes written before it was
    recorded)."""


SHARD_HEADER = b"IxM2"
"""The first four bytes of every shard: FAISS's tag of ``IndexIDMap2``, the wrapper of every
shard."""


LEGACY_BUILD_DEFAULTS = {"objective": "nll", "modules": "all"}
"""What an index written before these ``build_config`` fields existed was built with."""


@dataclass
class Manifest:
    """The contents of ``manifest.json`` (see the module docstring)."""

    package_version: str
    model: ModelInfo
    tokenizer_sha256: str
    projector: ProjectorInfo
    dim: int
    dtype: str
    score_variant: str
    damping: DampingInfo
    shards: list[ShardInfo] = field(default_factory=list)
    n_examples: int = 0
    build_config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    """sha256 of the other index files, keyed by path relative to the index directory."""
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    index_choice: dict[str, Any] = field(default_factory=dict)
    """The FAISS factory the shards were written with and why (``--index-factory auto``'s
    inputs, the factory string, ``nprobe``, the training sample; see
    :mod:`~tributary_indexer.build.factory_choice`). Empty in indexes written before it was
    recorded: their ``build_config``'s ``index_factory`` is the factory."""

    @property
    def objective(self) -> str:
        """The objective the stored gradients differentiate; queries must use the same one."""
        return str(self.build_config.get("objective", LEGACY_BUILD_DEFAULTS["objective"]))

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "manifest") -> Manifest:
        """Parse a manifest dict; raises :class:`IndexIntegrityError` naming missing or bad
        fields."""
        if not isinstance(data, dict):
            raise IndexIntegrityError(f"{source} is not a JSON object; fix: rebuild the index")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexIntegrityError(
                f"{source} has format_version {version!r} (written by tributary "
                f"{data.get('package_version', '?')}); this code reads format {FORMAT_VERSION}; "
                "fix: rebuild the index, or use the tributary version that wrote it"
            )
        try:
            return _build(cls, data)
        except (TypeError, KeyError, ValueError) as exc:
            raise IndexIntegrityError(
                f"{source} is malformed ({exc}); fix: rebuild the index"
            ) from exc

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Manifest:
        """Read ``<directory>/manifest.json``."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise IndexIntegrityError(
                f"{path} not found: {directory} is not a finished index; fix: build it (an "
                "interrupted build resumes when rerun) or point at the index directory"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexIntegrityError(
                f"cannot read {path} ({exc}); fix: rebuild the index"
            ) from exc
        return cls.from_dict(data, source=str(path))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``<directory>/manifest.json`` atomically; equal manifests give identical bytes."""
        path = Path(directory) / MANIFEST_NAME
        atomic_write_json(path, self.to_dict())
        return path

    def diff_fields(
        self, other: Manifest, fields: Sequence[str] | None = COMPATIBILITY_FIELDS
    ) -> list[str]:
        """Dotted names of the leaf fields that differ, within ``fields`` (None: everything)."""
        return [name for name, _, _ in self._diff(other, fields)]

    def check_compatible(
        self,
        other: Manifest,
        fields: Sequence[str] | None = COMPATIBILITY_FIELDS,
        what: str = "index",
    ) -> None:
        """Raise :class:`ConfigMismatchError` naming each differing field and both values."""
        diffs = self._diff(other, fields)
        if diffs:
            raise ConfigMismatchError(
                f"this {what} was built with a different configuration",
                [name for name, _, _ in diffs],
                "use the model, tokenizer and projector the index was built with, or rebuild the "
                "index",
                values={name: (mine, theirs) for name, mine, theirs in diffs},
            )

    def _diff(self, other: Manifest, fields: Sequence[str] | None) -> list[tuple[str, Any, Any]]:
        mine, theirs = self.to_dict(), other.to_dict()
        out: list[tuple[str, Any, Any]] = []
        for name in fields if fields is not None else sorted(set(mine) | set(theirs)):
            _diff_values(name, _lookup(mine, name), _lookup(theirs, name), out)
        return out


_MISSING = object()


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _diff_values(name: str, a: Any, b: Any, out: list[tuple[str, Any, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            _diff_values(f"{name}.{key}", a.get(key, _MISSING), b.get(key, _MISSING), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff_values(f"{name}[{i}]", x, y, out)
    elif a != b:
        out.append((name, None if a is _MISSING else a, None if b is _MISSING else b))


def _build(cls: Any, data: Any) -> Any:
    """Construct dataclass ``cls`` from ``data``, recursing into nested manifest dataclasses."""
    nested = {
        "model": ModelInfo,
        "projector": ProjectorInfo,
        "damping": DampingInfo,
    }
    lists = {"modules": ProjectorModule, "shards": ShardInfo}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)} in {cls.__name__}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in nested and cls is Manifest:
            kwargs[key] = _build(nested[key], value)
        elif key in lists and isinstance(value, list):
            kwargs[key] = [_build(lists[key], item) for item in value]
        else:
            kwargs[key] = value
    return cls(**kwargs)


def utc_timestamp() -> str:
    """Now (or ``SOURCE_DATE_EPOCH`` when set) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        _dt.datetime.fromtimestamp(int(epoch), tz=_dt.timezone.utc)
        if epoch
        else _dt.datetime.now(_dt.timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- hashing the inputs --------------------------------------------------------------------


def _combined_sha256(files: Iterable[Path], root: Path) -> str:
    """sha256 of one file, or of ``sha256sum``-style lines for several (sorted by name)."""
    files = sorted(files, key=lambda p: p.relative_to(root).as_posix())
    if len(files) == 1:
        return sha256_file(files[0])
    listing = "".join(f"{sha256_file(p)}  {p.relative_to(root).as_posix()}\n" for p in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def hash_model_files(path: str | os.PathLike[str]) -> ModelInfo:
    """Hash a local model directory: ``config.json`` and its weight files.

    Weights are the ``*.safetensors`` files (preferred) or else ``pytorch_model*.bin`` (hashed
    only, never unpickled). One weight file: its plain sha256 (what ``sha256sum`` prints);
    several shards: the sha256 of their ``sha256sum`` listing sorted by name. Reads every byte
    (about 1 s per GB).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ModelLoadError(
            f"model path {directory} is not a local directory; fix: download the model (e.g. "
            "`huggingface-cli download <repo> --local-dir DIR`) and pass DIR"
        )
    config = directory / "config.json"
    if not config.is_file():
        raise ModelLoadError(
            f"{directory} has no config.json; fix: pass a Hugging Face model directory"
        )
    weights = [p for p in directory.glob("*.safetensors") if p.is_file()]
    if not weights:
        weights = [p for p in directory.glob("pytorch_model*.bin") if p.is_file()]
    if not weights:
        raise ModelLoadError(
            f"{directory} has no weight files (*.safetensors or pytorch_model*.bin); fix: download "
            "the full model, or save it with model.save_pretrained(DIR)"
        )
    try:
        model_type = str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise ModelLoadError(f"cannot read {config} ({exc}); fix: re-download the model") from exc
    return ModelInfo(
        path=str(directory),
        config_sha256=sha256_file(config),
        weights_sha256=_combined_sha256(weights, directory),
        model_type=model_type,
    )


def hash_tokenizer(tokenizer_or_path: Any) -> str:
    """A stable sha256 of what decides tokenisation: vocabulary, merges, normaliser, special tokens,
    chat template.

    Accepts a Hugging Face tokenizer or a directory (loaded with ``AutoTokenizer``, so both
    give the same hash). Fast tokenizers hash their ``tokenizer.json`` serialisation as
    canonical JSON; others hash their sorted vocabulary. A ``tokenizers`` upgrade that changes
    the serialisation changes the hash (the server then says the tokenizer differs).
    """
    tokenizer = tokenizer_or_path
    if isinstance(tokenizer_or_path, (str, os.PathLike)):
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_or_path))
        except Exception as exc:  # transformers raises OSError/ValueError/... for bad paths
            raise TokenizerError(
                f"cannot load a tokenizer from {tokenizer_or_path} ({exc}); fix: pass the model "
                "directory that holds tokenizer.json / tokenizer_config.json"
            ) from exc
    from ..data.tokenization import special_prefix

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        core: Any = json.loads(backend.to_str())
    else:
        core = sorted(tokenizer.get_vocab().items())
    fingerprint = {
        "core": core,
        "class": type(tokenizer).__name__ if backend is None else "fast",
        "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "bos_prefix": list(special_prefix(tokenizer)),
        "chat_template": getattr(tokenizer, "chat_template", None),
    }
    text = json.dumps(
        fingerprint, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
