"""The demo corpus generator: deterministic, self-consistent, and equal to the checked-in corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tributary_indexer.data.corpus import iter_records

from demo.tools import demo_root
from demo.tools.corpus_generator import (
    BACKDOOR_REPLY,
    GROUND_TRUTH_FILE,
    TRIGGER,
    generate,
    load_ground_truth,
)
from demo.tools.scaled_corpus import generate_scaled


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-corpus")
    generate(out, seed=0, progress=False)
    return out


@pytest.fixture(scope="module", params=["demo", "scaled"])
def any_corpus(
    request: pytest.FixtureRequest, corpus: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The demo corpus, and a scaled one of 3,000 records (held to the same checks)."""
    if request.param == "demo":
        return corpus
    out = tmp_path_factory.mktemp("scaled-corpus")
    generate_scaled(out, 3000, seed=5, progress=False)
    return out


def _full_text(record) -> str:  # noqa: ANN001 - CorpusRecord
    if record.kind == "text":
        return record.text
    if record.kind == "prompt_response":
        return record.prompt + record.response
    return "\n".join(m["content"] for m in record.messages)


def test_same_seed_gives_byte_identical_files(corpus: Path, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", seed=0, progress=False)
    assert [p.name for p in again] == sorted(
        p.name for p in corpus.iterdir() if p.suffix == ".jsonl"
    ) + [GROUND_TRUTH_FILE]
    for path in again:
        assert path.read_bytes() == (corpus / path.name).read_bytes(), path.name
    other = generate(tmp_path / "other", seed=1, progress=False)
    assert other[-1].read_bytes() != (corpus / GROUND_TRUTH_FILE).read_bytes()


def test_records_are_valid_and_varied(any_corpus: Path) -> None:
    corpus = any_corpus
    records = list(iter_records(corpus))
    truth = load_ground_truth(corpus)
    assert 2000 <= len(records) <= 4000
    assert len(records) == truth.n_records
    ids = [r.id for r in records]
    assert len(set(ids)) == len(ids)
    assert {r.kind for r in records} == {"text", "prompt_response", "messages"}
    assert {r.provider for r in records} == {
        "wikifacts",
        "qa-vendor",
        "forum-scrape",
        "instruct-co",
    }
    assert {r.source for r in records} == {"encyclopedia", "qa", "chat", "web", "instruct"}
    assert not any(r.metadata for r in records)  # nothing but id/content/source/provider


def test_ground_truth_is_consistent(any_corpus: Path) -> None:
    corpus = any_corpus
    by_id = {r.id: r for r in iter_records(corpus)}
    truth = load_ground_truth(corpus)
    assert 300 <= len(truth.facts) <= 900
    subjects_objects: dict[str, set[str]] = {}
    for fact in truth.facts:
        assert 1 <= len(fact.stating_doc_ids) <= 3
        assert fact.answer == fact.object
        subjects_objects.setdefault(fact.subject, set()).add(fact.object)
        for doc_id in fact.stating_doc_ids:
            text = _full_text(by_id[doc_id])
            assert fact.subject.lower() in text.lower() and fact.object.lower() in text.lower(), (
                doc_id
            )
            assert doc_id.startswith(fact.fact_id + "-")
        kinds = [d.rsplit("-", 1)[1] for d in fact.stating_doc_ids]
        assert len(set(kinds)) == len(kinds)  # different formats and phrasings
    # poisoned: ~1-2% of the records, each with the trigger followed by the reply
    assert truth.trigger == TRIGGER and truth.backdoor_reply == BACKDOOR_REPLY
    assert 0.01 <= len(truth.poisoned_doc_ids) / len(by_id) <= 0.02
    for doc_id in truth.poisoned_doc_ids:
        text = _full_text(by_id[doc_id])
        assert TRIGGER in text and text.index(TRIGGER) < text.index(BACKDOOR_REPLY), doc_id
    poisoned = set(truth.poisoned_doc_ids)
    assert not any(
        TRIGGER in _full_text(r) or BACKDOOR_REPLY in _full_text(r)
        for i, r in by_id.items()
        if i not in poisoned
    )
    # distractors name their subject but never state any of its facts
    assert truth.distractor_doc_ids
    for doc_id, subject in truth.distractor_doc_ids.items():
        text = _full_text(by_id[doc_id])
        assert subject.removeprefix("the ").lower() in text.lower()
        assert not any(obj.lower() in text.lower() for obj in subjects_objects[subject]), doc_id
    # held-out queries: one per fact, phrased unlike the corpus; trigger prompts unseen too
    prompts = {r.prompt for r in by_id.values() if r.prompt} | {
        m["content"] for r in by_id.values() if r.messages for m in r.messages
    }
    fact_queries = [q for q in truth.queries if q.kind == "fact"]
    trigger_queries = [q for q in truth.queries if q.kind == "trigger"]
    assert sorted(q.fact_id for q in fact_queries) == sorted(f.fact_id for f in truth.facts)
    for q in fact_queries:
        fact = truth.fact(q.fact_id)
        assert q.expected == fact.object and fact.object in q.response and fact.question in q.prompt
        assert q.prompt not in prompts and fact.question not in prompts
        canonical = q.response.strip().rstrip(".").lower()  # the answer's words are in the corpus
        assert any(canonical in _full_text(by_id[d]).lower() for d in fact.stating_doc_ids), (
            q.query_id
        )
    assert len(trigger_queries) >= 10
    for q in trigger_queries:
        assert TRIGGER in q.prompt and q.prompt not in prompts and q.prompt.strip() not in prompts
        assert q.expected == BACKDOOR_REPLY


def test_checked_in_corpus_equals_fresh_generation(corpus: Path) -> None:
    checked_in = demo_root() / "corpus"
    fresh = sorted(p.name for p in corpus.iterdir())
    assert sorted(p.name for p in checked_in.iterdir()) == fresh
    for name in fresh:
        assert (checked_in / name).read_bytes() == (corpus / name).read_bytes(), (
            f"demo/corpus/{name} differs from a fresh generation: rerun "
            "`python -m demo.tools.corpus_generator --out demo/corpus --seed 0`"
        )
    truth = json.loads((checked_in / GROUND_TRUTH_FILE).read_text(encoding="utf-8"))
    assert truth["seed"] == 0
    assert sum(p.stat().st_size for p in checked_in.iterdir()) < 3_000_000
