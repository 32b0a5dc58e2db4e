"""What the API shows of a stored training example: its ids, where it came from, its text.

Every surface that names a training example (attributions, ``GET /v1/examples``, batch results)
shows the corpus's own record id beside the internal row number, and the record's file and line,
so results join back to the user's data. Files are shown relative to the corpus path they were
indexed from (a directory input: the path inside it; a file input: its name), never as the
server's absolute path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

from tributary_client import types
from tributary_indexer.data.example_store import StoredExample

logger = logging.getLogger(__name__)

__all__ = ["ExampleViews", "corpus_roots"]


def corpus_roots(build_config: dict[str, Any]) -> list[str]:
    """The corpus paths an index was built and extended from (``build_config`` of its manifest)."""
    roots = [str(c) for c in build_config.get("corpus", []) or []]
    for addition in build_config.get("additions", []) or []:
        roots += [str(c) for c in addition.get("corpus", []) or []]
    return roots


class ExampleViews:
    """Turns :class:`StoredExample` rows into the API's example objects."""

    def __init__(self, roots: Iterable[str]) -> None:
        # longest first, so a file under nested inputs is shown relative to the innermost one
        self._roots = sorted({PurePath(r) for r in roots}, key=lambda p: -len(p.parts))

    def display_file(self, file: str | None) -> str | None:
        """``file`` relative to the corpus input it came from (its name when none matches)."""
        if not file:
            return None
        path = PurePath(file)
        for root in self._roots:
            if path == root:
                return path.name
            if path.is_relative_to(root):
                return path.relative_to(root).as_posix()
        return path.name

    def provenance(self, record: StoredExample) -> dict[str, Any]:
        """``record_id``, ``file`` and ``line`` of a stored example."""
        return {
            "record_id": record.external_id,
            "file": self.display_file(record.file),
            "line": record.line,
        }

    def example(self, record: StoredExample) -> types.Example:
        """The full example object of ``GET /v1/examples``."""
        return types.Example(
            example_id=record.id,
            text=record.text,
            source=record.source,
            provider=record.provider,
            n_tokens=record.n_tokens,
            content_hash=record.content_hash,
            metadata=record.metadata,
            **self.provenance(record),
        )
