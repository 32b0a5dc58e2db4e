"""What a build (or an addition) did: printed at the end and stored in the manifest."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

__all__ = ["BuildSummary"]

_NESTED_STAGES = ("transform", "store")  # timed inside "shards" and "finish"


@dataclass
class BuildSummary:
    """What a build did; printed at the end and stored in the manifest."""

    examples: int = 0
    tokens: int = 0
    target_tokens: int = 0
    truncated: int = 0
    no_targets: int = 0
    skipped_bad: int = 0
    skipped_present: int = 0
    """``index add``: records already in the index (by record id, else content) that were not added
    again."""
    changed_present: int = 0
    """Of those, records whose id is in the index with other content."""
    skip_report: str | None = None
    """The file (in the index directory) listing each skipped bad record's file, line and reason."""
    added: int | None = None
    """``index add``: examples this addition appended (0 when every record was already indexed)."""
    corpus_notes: list[str] = field(default_factory=list)
    """Files of the corpus inputs that were not read, and empty files."""
    shards: int = 0
    dim: int = 0
    bytes_per_example: float = 0.0
    wall_s: float = 0.0
    gradient_tokens_per_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    """Wall seconds per stage (check, load, projector, gradients, fisher, precondition, shards with
    its transform, finish with its store), what `tributary index plan` calibrates from; not
    written to the manifest, which must not depend on timings."""
    batch_timings: list[tuple[int, int, float]] = field(default_factory=list)
    """``(examples, padded tokens, seconds)`` of each gradient batch, in order (not in the
    manifest)."""

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the ``with`` body to ``stage_s[stage]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + time.perf_counter() - t0

    def lines(self) -> list[str]:
        extra = list(self.corpus_notes)
        if self.skip_report:
            extra.append(
                f"skipped bad records: {self.skipped_bad}, each with its file:line and reason in "
                f"{self.skip_report}"
            )
        if self.skipped_present:
            extra.append(
                f"already in the index, not added again: {self.skipped_present} (by record id, "
                "else content)"
                + (
                    f"; {self.changed_present} of them have an indexed id with other content: "
                    "remove the old record first to replace it"
                    if self.changed_present
                    else ""
                )
            )
        return (
            extra
            + [
                f"examples: {self.examples} ({self.truncated} truncated, {self.no_targets} without "
                f"target tokens, {self.skipped_bad} bad records skipped)",
                f"tokens: {self.tokens} ({self.target_tokens} targets)",
                f"shards: {self.shards}, dim {self.dim}, {self.bytes_per_example:.0f} "
                "bytes/example on disk",
                f"wall time: {self.wall_s:.1f} s, gradient pass {self.gradient_tokens_per_s:.0f} "
                "tokens/s",
            ]
            + (
                [
                    "stages: "
                    + ", ".join(
                        f"{k} {v:.1f} s" for k, v in self.stage_s.items() if k not in _NESTED_STAGES
                    )
                ]
                if self.stage_s
                else []
            )
        )
