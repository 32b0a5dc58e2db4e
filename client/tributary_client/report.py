"""Data-valuation roll-up of a batch results file, per provider and per source.

For every group (a provider, or a source) over all attributed generations:

* ``positive_influence`` — sum of the positive scores of the group's examples in the top-k
  lists (how much the group's data made the logged responses more likely);
* ``share_of_positive`` — that sum over the sum for all groups (of the same dimension);
* ``negative_influence`` — sum of the negative scores (harmful appearances);
* ``appearances`` (``helpful``/``harmful``) — how often the group's examples were returned;
* ``mean_rank`` — mean 1-based rank of those appearances within their direction's list;
* ``unique_examples`` and ``top_example_ids`` (by summed positive score, then id).

Scores are only comparable within one index and score variant; the report states both.
Output is deterministic: rows sorted by dimension, then positive influence (descending),
then key; numbers with fixed precision.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field

from pydantic import ValidationError

from .types import BatchResultLine

logger = logging.getLogger(__name__)

__all__ = ["GroupStats", "Report", "compute_report", "write_report"]

UNKNOWN = "(unknown)"
TOP_EXAMPLES = 5
DIMENSIONS = ("provider", "source")


@dataclass
class GroupStats:
    """Accumulated statistics of one provider or source."""

    dimension: str
    key: str
    positive_influence: float = 0.0
    negative_influence: float = 0.0
    helpful_appearances: int = 0
    harmful_appearances: int = 0
    rank_sum: int = 0
    per_example: dict[int, float] = field(default_factory=dict)

    @property
    def appearances(self) -> int:
        return self.helpful_appearances + self.harmful_appearances

    @property
    def mean_rank(self) -> float:
        return self.rank_sum / self.appearances if self.appearances else 0.0

    def top_example_ids(self, n: int = TOP_EXAMPLES) -> list[int]:
        ranked = sorted(self.per_example.items(), key=lambda kv: (-kv[1], kv[0]))
        return [example_id for example_id, _ in ranked[:n]]


@dataclass
class Report:
    """The roll-up of one results file."""

    results: int = 0
    errors: int = 0
    index_ids: set[str] = field(default_factory=set)
    score_variants: set[str] = field(default_factory=set)
    groups: dict[tuple[str, str], GroupStats] = field(default_factory=dict)

    def total_positive(self, dimension: str) -> float:
        return sum(g.positive_influence for g in self.groups.values() if g.dimension == dimension)

    def rows(self, dimension: str) -> list[GroupStats]:
        selected = [g for g in self.groups.values() if g.dimension == dimension]
        return sorted(selected, key=lambda g: (-g.positive_influence, g.key))


def compute_report(results_path: str | os.PathLike[str]) -> Report:
    """Read a results JSONL file (from `run_batch` or a server batch) and roll it up."""
    report = Report()
    path = os.fspath(results_path)
    with open(path, encoding="utf-8") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if not raw.endswith("\n"):
                logger.warning("%s:%d: skipping torn last line", path, line_no)
                break
            try:
                line = BatchResultLine.model_validate_json(raw)
            except ValidationError as exc:
                raise ValueError(f"{path}:{line_no}: not a batch result line: {exc.errors()[0]['msg']}") from exc
            if line.response is None:
                report.errors += 1
                continue
            report.results += 1
            report.index_ids.add(line.response.index_id)
            report.score_variants.add(line.response.score_variant)
            ranks: dict[str, int] = defaultdict(int)
            for ex in line.response.examples:
                ranks[ex.direction] += 1
                for dimension in DIMENSIONS:
                    key = (ex.provider if dimension == "provider" else ex.source) or UNKNOWN
                    group = report.groups.get((dimension, key))
                    if group is None:
                        group = report.groups[(dimension, key)] = GroupStats(dimension, key)
                    if ex.score > 0:
                        group.positive_influence += ex.score
                    else:
                        group.negative_influence += ex.score
                    if ex.direction == "helpful":
                        group.helpful_appearances += 1
                    else:
                        group.harmful_appearances += 1
                    group.rank_sum += ranks[ex.direction]
                    group.per_example[ex.example_id] = (
                        group.per_example.get(ex.example_id, 0.0) + max(ex.score, 0.0)
                    )
    return report


def _num(value: float, digits: int = 6) -> str:
    return f"{value + 0.0:.{digits}f}"  # + 0.0 turns -0.0 into 0.0


CSV_COLUMNS = [
    "group_by",
    "key",
    "positive_influence",
    "share_of_positive",
    "negative_influence",
    "appearances",
    "helpful_appearances",
    "harmful_appearances",
    "mean_rank",
    "unique_examples",
    "top_example_ids",
]


def render_csv(report: Report) -> str:
    """The report as CSV, one row per (group_by, key)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for dimension in DIMENSIONS:
        total = report.total_positive(dimension)
        for g in report.rows(dimension):
            writer.writerow([
                dimension,
                g.key,
                _num(g.positive_influence),
                _num(g.positive_influence / total if total > 0 else 0.0),
                _num(g.negative_influence),
                g.appearances,
                g.helpful_appearances,
                g.harmful_appearances,
                _num(g.mean_rank, 2),
                len(g.per_example),
                " ".join(str(i) for i in g.top_example_ids()),
            ])
    return buf.getvalue()


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    """The report as a Markdown document with one table per dimension."""
    out = [
        "# Tributary data-valuation report",
        "",
        f"- attributed generations: {report.results}",
        f"- failed generations: {report.errors}",
        f"- index: {', '.join(sorted(report.index_ids)) or 'n/a'}",
        f"- score variant: {', '.join(sorted(report.score_variants)) or 'n/a'}",
        "",
        "Positive influence = sum of positive attribution scores in the top-k lists "
        "(the group's data made the responses more likely).",
    ]
    for dimension in DIMENSIONS:
        total = report.total_positive(dimension)
        out += [
            "",
            f"## By {dimension}",
            "",
            f"| {dimension} | positive influence | share | negative influence | appearances "
            "| mean rank | unique examples | top examples |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for g in report.rows(dimension):
            share = g.positive_influence / total if total > 0 else 0.0
            out.append(
                f"| {_md_cell(g.key)} | {_num(g.positive_influence, 4)} | {share * 100:.2f}% "
                f"| {_num(g.negative_influence, 4)} | {g.appearances} | {_num(g.mean_rank, 2)} "
                f"| {len(g.per_example)} | {', '.join(str(i) for i in g.top_example_ids())} |"
            )
    return "\n".join(out) + "\n"


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_report(
    results_path: str | os.PathLike[str], out_prefix: str | os.PathLike[str]
) -> tuple[str, str]:
    """Write ``<out_prefix>.csv`` and ``<out_prefix>.md``; returns their paths."""
    report = compute_report(results_path)
    prefix = os.fspath(out_prefix)
    csv_path, md_path = f"{prefix}.csv", f"{prefix}.md"
    _write_atomic(csv_path, render_csv(report))
    _write_atomic(md_path, render_markdown(report))
    logger.info("wrote %s and %s", csv_path, md_path)
    return csv_path, md_path
