"""The exceptions ``tributary_indexer`` raises: one hierarchy, every message says what to fix.

Catch :class:`TributaryIndexError` to handle anything this package raises on purpose. Messages
follow one shape, ``<what went wrong>; fix: <what to do>``, so a CLI can print them as they are
and a server can return them in its error envelope as a 4xx.

Hierarchy::

    TributaryIndexError
    ├── ExampleError            one example's content is unusable (also a ValueError)
    │   └── CorpusError         ... and we know the file and line it came from
    ├── TokenizerError          the tokenizer cannot do what the data needs (e.g. no chat template)
    ├── ConfigMismatchError     an index built for another model / tokenizer / projector / config
    ├── IndexIntegrityError     checksums, counts or id ranges of an index on disk do not add up
    ├── ModelLoadError          a model directory is missing, incomplete or unreadable
    ├── ModuleSelectionError    the modules chosen for gradient tracking do not exist / fit
    ├── OutputDirectoryError    cannot write where asked: permissions, a file in the way, disk full
    └── SearchDeviceError       the search device asked for is not there (GPU search, no GPU)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "TributaryIndexError",
    "ExampleError",
    "CorpusError",
    "TokenizerError",
    "ConfigMismatchError",
    "IndexIntegrityError",
    "ModelLoadError",
    "ModuleSelectionError",
    "OutputDirectoryError",
    "SearchDeviceError",
]


class TributaryIndexError(Exception):
    """Base class of every error ``tributary_indexer`` raises deliberately."""


def _with_fix(reason: str, fix: str | None) -> str:
    return f"{reason}; fix: {fix}" if fix else reason


class ExampleError(TributaryIndexError, ValueError):
    """One example (a corpus record or a query) cannot be used as it is.

    ``code`` is a short stable tag (``"empty_response"``, ``"no_targets"``, ...) that callers
    count by and that a server can return as its error ``code``.
    """

    def __init__(
        self, reason: str, fix: str | None = None, *, code: str = "invalid_example"
    ) -> None:
        self.reason = reason
        self.fix = fix
        self.code = code
        super().__init__(_with_fix(reason, fix))


class CorpusError(ExampleError):
    """A corpus file or one of its records is malformed.

    The message reads ``file X line N: <reason>; fix: <fix>``; ``path`` and ``line`` are kept as
    attributes (``line`` is 1-based: the JSONL line or the Parquet row; None for whole-file
    problems such as an unsupported extension).
    """

    def __init__(
        self,
        path: str | None,
        line: int | None,
        reason: str,
        fix: str | None = None,
        *,
        code: str = "invalid_record",
    ) -> None:
        self.path = path
        self.line = line
        ExampleError.__init__(self, reason, fix, code=code)
        where = ""
        if path is not None:
            where = f"file {path}" + (f" line {line}" if line is not None else "") + ": "
        self.args = (where + _with_fix(reason, fix),)

    @classmethod
    def at(cls, path: str | None, line: int | None, error: ExampleError) -> CorpusError:
        """Attach a file and line to an :class:`ExampleError` raised without one."""
        return cls(path, line, error.reason, error.fix, code=error.code)


class TokenizerError(TributaryIndexError):
    """The tokenizer cannot tokenise the data as asked (no chat template, no BOS token, ...)."""


class ConfigMismatchError(TributaryIndexError):
    """Two configurations that must match do not.

    ``fields`` lists the dotted names that differ (``"model.weights_sha256"``); ``values`` maps
    each to ``(expected, found)`` where known.
    """

    def __init__(
        self,
        what: str,
        fields: Sequence[str],
        fix: str,
        values: Mapping[str, tuple[Any, Any]] | None = None,
    ) -> None:
        self.fields = list(fields)
        self.values = dict(values or {})
        parts = []
        for name in self.fields:
            if name in self.values:
                expected, found = self.values[name]
                parts.append(f"{name} ({_short(expected)} vs {_short(found)})")
            else:
                parts.append(name)
        super().__init__(f"{what}: differing fields: {', '.join(parts)}; fix: {fix}")


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class IndexIntegrityError(TributaryIndexError):
    """An index on disk is incomplete or corrupt: checksum, row-count or id-range mismatches."""


class ModelLoadError(TributaryIndexError):
    """A model directory is missing, incomplete or cannot be loaded."""


class ModuleSelectionError(TributaryIndexError):
    """The modules selected for gradient tracking do not exist or are not supported."""


class OutputDirectoryError(TributaryIndexError):
    """An output location is not writable: permissions, a file in the way, a full disk."""


class SearchDeviceError(TributaryIndexError, ValueError):
    """The search device asked for cannot be used (``gpu`` without the FAISS GPU build or a
    CUDA GPU, or an unknown name)."""
