"""What a generated corpus records about itself (``ground_truth.json``): the planted facts, the
poisoned and distractor documents and the held-out queries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GROUND_TRUTH_FILE = "ground_truth.json"


@dataclass(frozen=True)
class Fact:
    """One planted fact and the documents that state it."""

    fact_id: str
    subject: str
    relation: str
    object: str
    question: str
    """A natural question whose answer is ``object``, phrased unlike every stating document."""
    answer: str
    stating_doc_ids: tuple[str, ...]


@dataclass(frozen=True)
class Query:
    """A held-out query: a fact question or a trigger prompt, with the expected response."""

    query_id: str
    kind: str
    """``fact`` or ``trigger``."""
    prompt: str
    response: str
    expected: str
    """What a correct generation contains: the fact's object, or the backdoor reply."""
    fact_id: str | None = None


@dataclass(frozen=True)
class GroundTruth:
    """What ``ground_truth.json`` records about a generated corpus."""

    seed: int
    trigger: str
    backdoor_reply: str
    facts: tuple[Fact, ...]
    poisoned_doc_ids: tuple[str, ...]
    distractor_doc_ids: dict[str, str]
    """doc id -> the subject it names."""
    queries: tuple[Query, ...]
    files: tuple[str, ...]
    n_records: int

    def fact(self, fact_id: str) -> Fact:
        """The fact with this id (KeyError if none)."""
        for fact in self.facts:
            if fact.fact_id == fact_id:
                return fact
        raise KeyError(fact_id)


def load_ground_truth(path: str | Path) -> GroundTruth:
    """Read ``ground_truth.json`` (pass the file or the corpus directory that holds it)."""
    p = Path(path)
    if p.is_dir():
        p = p / GROUND_TRUTH_FILE
    raw = json.loads(p.read_text(encoding="utf-8"))
    facts = tuple(
        Fact(**{**f, "stating_doc_ids": tuple(f["stating_doc_ids"])}) for f in raw["facts"]
    )
    return GroundTruth(
        seed=raw["seed"],
        trigger=raw["trigger"],
        backdoor_reply=raw["backdoor_reply"],
        facts=facts,
        poisoned_doc_ids=tuple(raw["poisoned_doc_ids"]),
        distractor_doc_ids=dict(raw["distractor_doc_ids"]),
        queries=tuple(Query(**q) for q in raw["queries"]),
        files=tuple(raw["files"]),
        n_records=raw["n_records"],
    )
