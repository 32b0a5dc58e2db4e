"""Data-valuation roll-up of a batch results file, per provider and per source.

For every group (a provider, or a source) over all attributed generations:

* ``positive_influence`` — sum of the positive scores of the group's examples in the top-k
  lists (how much the group's data made the logged responses more likely);
* ``share_of_positive`` — that sum over the sum for all groups (of the same dimension);
* ``negative_influence`` — sum of the negative scores (harmful appearances);
* ``appearances`` (``helpful``/``harmful``) — how often the group's examples were returned;
* ``mean_rank`` — mean 1-based rank of those appearances within their direction's list;
* ``unique_examples``, ``top_example_ids`` and ``top_records`` (the same examples by their
  records' own ids, ``#<example_id>`` for a record without one; by summed positive score, then id);
* with the index's composition (``GET /v1/index``): ``corpus_examples`` and ``corpus_share``, the
  group's share of the indexed examples, and ``representation`` = share of positive influence /
  corpus share: above 1 the group's data shows up in what the model says more than its size
  predicts (over-represented), below 1 less (under-represented). Groups of the corpus that never
  appear in the results get a row too (influence 0).

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
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from .report_chart import ShareBar, render_share_chart
from .types import BatchResultLine, CompositionRow, IndexInfo

logger = logging.getLogger(__name__)

__all__ = [
    "GroupStats",
    "Report",
    "compute_report",
    "render_csv",
    "render_markdown",
    "write_report",
]

UNKNOWN = "(unknown)"
TOP_EXAMPLES = 5
DIMENSIONS = ("provider", "source")
OVER = 1.25
"""Representation above this is reported as over-represented."""
UNDER = 0.8
"""Representation below this is reported as under-represented."""


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
    record_ids: dict[int, str] = field(default_factory=dict)
    """Example id -> the record's own id, for the examples that had one."""
    corpus_examples: int | None = None
    """Indexed examples of this group (from the index's composition), None when unknown."""

    @property
    def appearances(self) -> int:
        return self.helpful_appearances + self.harmful_appearances

    @property
    def mean_rank(self) -> float:
        return self.rank_sum / self.appearances if self.appearances else 0.0

    def top_example_ids(self, n: int = TOP_EXAMPLES) -> list[int]:
        ranked = sorted(self.per_example.items(), key=lambda kv: (-kv[1], kv[0]))
        return [example_id for example_id, _ in ranked[:n]]

    def top_records(self, n: int = TOP_EXAMPLES) -> list[str]:
        """The top examples by their records' own ids (``#<example_id>`` for a record without
        one)."""
        return [self.record_ids.get(i) or f"#{i}" for i in self.top_example_ids(n)]


@dataclass
class Report:
    """The roll-up of one results file."""

    results: int = 0
    errors: int = 0
    index_ids: set[str] = field(default_factory=set)
    score_variants: set[str] = field(default_factory=set)
    groups: dict[tuple[str, str], GroupStats] = field(default_factory=dict)
    composition_index: str | None = None
    """The index whose composition gave the corpus shares; None when the report has none."""

    def total_positive(self, dimension: str) -> float:
        return sum(g.positive_influence for g in self.groups.values() if g.dimension == dimension)

    def total_examples(self, dimension: str) -> int:
        return sum(g.corpus_examples or 0 for g in self.groups.values() if g.dimension == dimension)

    def share_of_positive(self, group: GroupStats) -> float:
        total = self.total_positive(group.dimension)
        return group.positive_influence / total if total > 0 else 0.0

    def corpus_share(self, group: GroupStats) -> float | None:
        """The group's share of the indexed examples; None without the index's composition."""
        total = self.total_examples(group.dimension)
        if self.composition_index is None or total <= 0:
            return None
        return (group.corpus_examples or 0) / total

    def representation(self, group: GroupStats) -> float | None:
        """Share of positive influence over corpus share (1 = as its size predicts)."""
        corpus = self.corpus_share(group)
        if corpus is None or corpus <= 0 or self.total_positive(group.dimension) <= 0:
            return None
        return self.share_of_positive(group) / corpus

    def add_composition(self, composition: Iterable[CompositionRow], index_id: str) -> None:
        """Attach the index's examples per provider/source (rows for groups never attributed
        too)."""
        for row in composition:
            key = row.key or UNKNOWN
            group = self.groups.get((row.group_by, key))
            if group is None:
                group = self.groups[(row.group_by, key)] = GroupStats(row.group_by, key)
            group.corpus_examples = (group.corpus_examples or 0) + row.examples
        for group in self.groups.values():
            if group.corpus_examples is None:
                group.corpus_examples = 0
        self.composition_index = index_id

    def rows(self, dimension: str) -> list[GroupStats]:
        selected = [g for g in self.groups.values() if g.dimension == dimension]
        return sorted(selected, key=lambda g: (-g.positive_influence, g.key))


def compute_report(
    results_path: str | os.PathLike[str], index_info: IndexInfo | None = None
) -> Report:
    """Read a results JSONL file (from `run_batch` or a server batch) and roll it up.

    With ``index_info`` (``GET /v1/index`` of the index that answered) the report also has each
    group's corpus share and representation; an index other than the results' is left out with
    a warning (its composition is not the one the scores came from).
    """
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
                raise ValueError(
                    f"{path}:{line_no}: not a batch result line: {exc.errors()[0]['msg']}"
                ) from exc
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
                    group.per_example[ex.example_id] = group.per_example.get(
                        ex.example_id, 0.0
                    ) + max(ex.score, 0.0)
                    if ex.record_id:
                        group.record_ids[ex.example_id] = ex.record_id
    if index_info is not None:
        if index_info.composition is None:
            logger.warning(
                "the server does not report its index's composition: corpus shares left out"
            )
        elif report.index_ids and report.index_ids != {index_info.index_id}:
            logger.warning(
                "%s was answered by index %s, the server now serves %s: corpus shares left out "
                "(rerun the batch against this index, or report against the server that answered "
                "it)",
                path,
                ", ".join(sorted(report.index_ids)),
                index_info.index_id,
            )
        else:
            report.add_composition(index_info.composition, index_info.index_id)
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
    "top_records",
    "corpus_examples",
    "corpus_share",
    "representation",
]


def _optional(value: float | None, digits: int = 6) -> str:
    return "" if value is None else _num(value, digits)


def render_csv(report: Report) -> str:
    """The report as CSV, one row per (group_by, key)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for dimension in DIMENSIONS:
        for g in report.rows(dimension):
            writer.writerow(
                [
                    dimension,
                    g.key,
                    _num(g.positive_influence),
                    _num(report.share_of_positive(g)),
                    _num(g.negative_influence),
                    g.appearances,
                    g.helpful_appearances,
                    g.harmful_appearances,
                    _num(g.mean_rank, 2),
                    len(g.per_example),
                    " ".join(str(i) for i in g.top_example_ids()),
                    " ".join(g.top_records()),
                    "" if report.composition_index is None else g.corpus_examples,
                    _optional(report.corpus_share(g)),
                    _optional(report.representation(g), 4),
                ]
            )
    return buf.getvalue()


def _ratio_text(value: float | None) -> str:
    if value is None:
        return "n/a"
    label = "over" if value > OVER else "under" if value < UNDER else "in line"
    return f"{value:.2f}× ({label})"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, chart: str | None = None) -> str:
    """The report as a Markdown document with one table per dimension (``chart``: the SVG's file
    name)."""
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
    if report.composition_index is not None:
        out += [
            "Corpus share = the group's share of the indexed examples; ratio = influence share / "
            f"corpus share: over {OVER} the group's data shows up in what the model says more than "
            f"its size predicts (over-represented), under {UNDER} less (under-represented).",
        ]
    else:
        out += ["Corpus shares are not included (the index's composition was not available)."]
    if chart:
        out += ["", f"![Influence share against corpus share per provider]({chart})"]
    for dimension in DIMENSIONS:
        out += [
            "",
            f"## By {dimension}",
            "",
            f"| {dimension} | corpus share | influence share | ratio | positive influence | "
            "negative influence | appearances | mean rank | unique examples | top examples (record "
            "ids) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for g in report.rows(dimension):
            corpus = report.corpus_share(g)
            out.append(
                f"| {_md_cell(g.key)} | {'n/a' if corpus is None else f'{corpus * 100:.2f}%'} | "
                f"{report.share_of_positive(g) * 100:.2f}% | "
                f"{_ratio_text(report.representation(g))} | {_num(g.positive_influence, 4)} | "
                f"{_num(g.negative_influence, 4)} | {g.appearances} | {_num(g.mean_rank, 2)} | "
                f"{len(g.per_example)} | {_md_cell(', '.join(g.top_records()))} |"
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
    results_path: str | os.PathLike[str],
    out_prefix: str | os.PathLike[str],
    index_info: IndexInfo | None = None,
) -> tuple[str, str, str]:
    """Write ``<out_prefix>.csv``, ``.md`` and ``.svg`` (the provider chart); returns their
    paths."""
    report = compute_report(results_path, index_info)
    prefix = os.fspath(out_prefix)
    csv_path, md_path, svg_path = f"{prefix}.csv", f"{prefix}.md", f"{prefix}.svg"
    _write_atomic(csv_path, render_csv(report))
    bars = [
        ShareBar(g.key, report.corpus_share(g), report.share_of_positive(g))
        for g in report.rows("provider")
    ]
    _write_atomic(
        svg_path, render_share_chart(bars, title="Influence share vs corpus share, by provider")
    )
    _write_atomic(md_path, render_markdown(report, chart=os.path.basename(svg_path)))
    logger.info("wrote %s, %s and %s", csv_path, md_path, svg_path)
    return csv_path, md_path, svg_path
