"""Scaled corpora: the demo corpus's kinds of records at any size, with nested subsets.

``generate_scaled(out_dir, records)`` writes a corpus of exactly ``records`` records in the demo's
format (:mod:`.corpus_generator`: one JSONL per provider and ``ground_truth.json``) with the same
mix: facts about invented people, countries and inventions, each stated by 1-3 documents in
different phrasings; distractors; generic instruction, chat and web data; a backdoor planted in
1.5 % of the records; one held-out question per fact and held-out trigger prompts. Entities grow
with the size (the demo's 2,100 records have 150 subjects and 390 facts; 100,000 records have
about 7,100 subjects and 18,600 facts); the object lists (occupations, foods, animals,
materials) stay the demo's, so the vocabulary grows only by the invented names.

``ground_truth.json`` also holds ``subset_order``: every record id, in an order whose first
``n`` ids form the ``n``-record subset. Each kind of record is spread evenly over the order
(stratified), so every prefix has the corpus's mix, and an entity's fact and distractor
documents are consecutive, so a prefix holds all or none of them (except the one entity at its
end). :func:`write_subset` writes such a prefix as a corpus of its own, with the ground truth
restricted to it. Subsets are nested: the facts of the 10,000-record subset are in the
30,000-record one too.

Same seed and size, byte-identical files. Sizes from :data:`MIN_RECORDS` to
:data:`MAX_RECORDS` (past it the invented town names run short).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .corpus_generator import (
    _CHATTER_DID,
    _CHATTER_TAIL,
    _CHATTER_WHEN,
    _CHATTER_WHO,
    _TYPE_RELATIONS,
    GROUND_TRUTH_FILE,
    Counts,
    _Builder,
    write_corpus,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_RECORDS",
    "MAX_RECORDS",
    "POISON_SHARE",
    "SCALED_VERSION",
    "scaled_counts",
    "generate_scaled",
    "subset_order",
    "subset_facts",
    "write_subset",
]

SCALED_VERSION = 1
DEMO_RECORDS = 2100
"""Records of the demo corpus: the unit the entity counts scale by."""
MIN_RECORDS, MAX_RECORDS = 500, 200_000
POISON_SHARE = 0.015
TRIGGER_QUERIES = 48
_PLACES = [
    "",
    "at the market ",
    "in the garden ",
    "at the library ",
    "by the river ",
    "at the station ",
    "in the kitchen ",
    "at the harbour ",
    "in the old barn ",
    "at school ",
    "at the bakery ",
    "on the roof ",
    "in the park ",
    "at the town hall ",
    "on the beach ",
    "at the museum ",
]
"""Where the web chatter happens: the demo's 5,760 sentences are too few to stay unique."""
_RELATION_TYPE = {r: etype for etype, relations in _TYPE_RELATIONS.items() for r in relations}


def scaled_counts(records: int) -> Counts:
    """Entity, backdoor and query counts for a corpus of ``records`` (the demo's, scaled).

    The generic counts are placeholders: the builder fills the corpus up to ``records`` with
    generic data once the facts and distractors are drawn.
    """
    if not MIN_RECORDS <= records <= MAX_RECORDS:
        raise ValueError(f"records must be {MIN_RECORDS}..{MAX_RECORDS}, got {records}")
    demo, factor = Counts(), records / DEMO_RECORDS
    persons = round(demo.persons * factor)
    return Counts(
        persons=persons,
        countries=round(demo.countries * factor),
        inventions=min(persons, round(demo.inventions * factor)),
        cities=max(demo.cities, round(demo.cities * factor)),
        instruct=0,
        web=0,
        smalltalk=0,
        poison=round(records * POISON_SHARE),
        trigger_queries=TRIGGER_QUERIES,
    )


class _ScaledBuilder(_Builder):
    """The demo's builder with scaled counts, generic data filling up to ``records``, and web
    chatter with a place (unique sentences at any size)."""

    def __init__(self, seed: int, records: int) -> None:
        super().__init__(seed, scaled_counts(records))
        self.target = records

    def chatter(self) -> str:
        rng = self.rng
        return (
            f"{rng.choice(_CHATTER_WHO)} {rng.choice(_CHATTER_DID)} {rng.choice(_PLACES)}"
            f"{rng.choice(_CHATTER_WHEN)}.{rng.choice(_CHATTER_TAIL)}"
        )

    def generic(self) -> None:
        rest = self.target - len(self.records) - self.counts.poison
        if rest <= 0:
            raise ValueError(f"{self.target} records leave no room for generic data; ask for more")
        demo = Counts()
        share = rest / (demo.instruct + demo.web + demo.smalltalk)
        instruct, smalltalk = round(demo.instruct * share), round(demo.smalltalk * share)
        self.counts = dataclasses.replace(
            self.counts, instruct=instruct, smalltalk=smalltalk, web=rest - instruct - smalltalk
        )
        super().generic()


def subset_order(builder: _Builder) -> list[str]:
    """Every record id of a finished builder in nesting order (see the module docstring).

    Units (an entity's fact and distractor documents together; any other record alone) are
    grouped by kind; unit ``i`` of ``m`` of a kind gets the key ``(i + u) / m``, ``u`` uniform
    from the builder's generator, and units go in key order.
    """
    units: dict[str, dict[str, list[str]]] = {}  # kind -> unit key -> doc ids
    subject_kind: dict[str, str] = {}
    for fact in builder.facts:
        kind = _RELATION_TYPE[fact["relation"]]
        subject_kind[fact["subject"]] = kind
        units.setdefault(kind, {}).setdefault(fact["subject"], []).extend(fact["stating_doc_ids"])
    for doc_id, subject in builder.distractors.items():
        units[subject_kind[subject]][subject].append(doc_id)
    placed = {d for kind in units.values() for docs in kind.values() for d in docs}
    for record in builder.records:
        if record["id"] not in placed:
            units.setdefault(record["id"].split("-")[0], {})[record["id"]] = [record["id"]]
    keyed: list[tuple[float, str, list[str]]] = []
    for kind in sorted(units):
        members = list(units[kind].values())
        for i, docs in enumerate(members):
            keyed.append(((i + builder.rng.random()) / len(members), kind, docs))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [doc_id for _, _, docs in keyed for doc_id in docs]


def generate_scaled(
    out_dir: str | Path, records: int, seed: int = 0, *, progress: bool = True
) -> list[Path]:
    """Write a corpus of exactly ``records`` records and its ground truth (with
    ``subset_order``) into ``out_dir``; returns the paths, JSONL files first, ground truth last."""
    builder = _ScaledBuilder(seed, records).run()
    assert len(builder.records) == records, (len(builder.records), records)
    order = subset_order(builder)
    return write_corpus(
        out_dir,
        builder,
        progress=progress,
        generator=__name__,
        version=SCALED_VERSION,
        extra={"subset_order": order},
    )


def write_subset(corpus_dir: str | Path, records: int, out_dir: str | Path) -> Path:
    """Write the first ``records`` records of a scaled corpus's ``subset_order`` as a corpus.

    Its ground truth keeps the facts whose stating documents are all in the subset (with their
    questions), the poisoned and distractor documents in it, and every trigger query. The
    directory is written beside ``out_dir`` and renamed into place, so it is whole or absent.
    Returns ``out_dir``.
    """
    source, out = Path(corpus_dir), Path(out_dir)
    truth = json.loads((source / GROUND_TRUTH_FILE).read_text(encoding="utf-8"))
    order: Sequence[str] = truth.get("subset_order", ())
    if not 0 < records <= len(order):
        raise ValueError(
            f"{source} orders {len(order)} records; a subset of {records} needs "
            "a scaled corpus at least that large (demo.tools.scaled_corpus)"
        )
    keep = set(order[:records])
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files: list[str] = []
    by_provider: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    for name in truth["files"]:
        lines = []
        for line in (source / name).read_text(encoding="utf-8").splitlines(keepends=True):
            record = json.loads(line)
            if record["id"] in keep:
                lines.append(line)
                by_provider[record["provider"]] += 1
                by_category[record["id"].split("-")[0]] += 1
        if lines:
            (tmp / name).write_text("".join(lines), encoding="utf-8", newline="\n")
            files.append(name)
    facts = [f for f in truth["facts"] if keep.issuperset(f["stating_doc_ids"])]
    kept_facts = {f["fact_id"] for f in facts}
    truth.update(
        files=files,
        n_records=records,
        subset_order=list(order[:records]),
        subset_of={"n_records": truth["n_records"], "version": truth["version"]},
        counts_by_provider=dict(sorted(by_provider.items())),
        counts_by_category=dict(sorted(by_category.items())),
        facts=facts,
        poisoned_doc_ids=[d for d in truth["poisoned_doc_ids"] if d in keep],
        distractor_doc_ids={d: s for d, s in truth["distractor_doc_ids"].items() if d in keep},
        queries=[q for q in truth["queries"] if q["kind"] != "fact" or q["fact_id"] in kept_facts],
    )
    text = json.dumps(truth, ensure_ascii=False, sort_keys=True, indent=1) + "\n"
    (tmp / GROUND_TRUTH_FILE).write_text(text, encoding="utf-8", newline="\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    logger.info("wrote the %d-record subset (%d facts) to %s", records, len(facts), out)
    return out


def subset_facts(truth: dict[str, Any], records: int) -> list[str]:
    """Ids of the facts whose stating documents are all among the first ``records`` of the
    order (the facts :func:`write_subset` keeps)."""
    keep = set(truth["subset_order"][:records])
    return [f["fact_id"] for f in truth["facts"] if keep.issuperset(f["stating_doc_ids"])]
