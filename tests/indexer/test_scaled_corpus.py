"""Scaled corpora: exact size, deterministic, and nested subsets with consistent ground truth.

The checks every corpus must pass (facts stated by their documents, distractors, backdoor,
held-out queries) run on a scaled corpus too, in ``test_demo_corpus.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from tributary_indexer.data.corpus import iter_records

from demo.tools.corpus_generator import GROUND_TRUTH_FILE, load_ground_truth
from demo.tools.corpus_generator import main as generator_main
from demo.tools.scaled_corpus import (
    MAX_RECORDS,
    MIN_RECORDS,
    generate_scaled,
    scaled_counts,
    subset_facts,
    write_subset,
)

RECORDS = 2400


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scaled")
    generate_scaled(out, RECORDS, seed=3, progress=False)
    return out


def _truth(path: Path) -> dict:
    return json.loads((path / GROUND_TRUTH_FILE).read_text(encoding="utf-8"))


def _text(record) -> str:  # noqa: ANN001 - CorpusRecord
    if record.kind == "text":
        return record.text
    if record.kind == "prompt_response":
        return record.prompt + record.response
    return "\n".join(m["content"] for m in record.messages)


def test_exact_size_and_mix(scaled: Path) -> None:
    records = list(iter_records(scaled))
    truth = _truth(scaled)
    assert len(records) == truth["n_records"] == RECORDS
    assert len({r.id for r in records}) == RECORDS
    assert len(truth["poisoned_doc_ids"]) == round(0.015 * RECORDS)
    categories = Counter(r.id.split("-")[0] for r in records)
    assert set(categories) == {"fact", "distractor", "instruct", "web", "smalltalk", "poison"}
    assert 0.3 < categories["fact"] / RECORDS < 0.45  # the demo's 38 %
    web = [r.text for r in records if r.id.startswith("web-")]
    assert len(set(web)) == len(web)  # the chatter stays unique
    assert truth["generator"] == "demo.tools.scaled_corpus"


def test_same_seed_gives_byte_identical_files(scaled: Path, tmp_path: Path) -> None:
    again = generate_scaled(tmp_path / "again", RECORDS, seed=3, progress=False)
    assert sorted(p.name for p in again) == sorted(p.name for p in scaled.iterdir())
    for path in again:
        assert path.read_bytes() == (scaled / path.name).read_bytes(), path.name
    other = generate_scaled(tmp_path / "other", RECORDS, seed=4, progress=False)
    assert other[-1].read_bytes() != (scaled / GROUND_TRUTH_FILE).read_bytes()


def test_subset_order_keeps_entities_whole_and_the_mix_even(scaled: Path) -> None:
    truth = _truth(scaled)
    order = truth["subset_order"]
    assert sorted(order) == sorted(r.id for r in iter_records(scaled))
    position = {doc_id: i for i, doc_id in enumerate(order)}
    by_subject: dict[str, list[int]] = {}
    for fact in truth["facts"]:
        by_subject.setdefault(fact["subject"], []).extend(
            position[d] for d in fact["stating_doc_ids"]
        )
    for doc_id, subject in truth["distractor_doc_ids"].items():
        by_subject[subject].append(position[doc_id])
    for subject, places in by_subject.items():  # an entity's documents are consecutive
        assert max(places) - min(places) == len(places) - 1, subject
    poisoned = set(truth["poisoned_doc_ids"])
    for n in (400, 1200):  # every prefix has about the corpus's share of each kind
        prefix = order[:n]
        assert abs(sum(d in poisoned for d in prefix) - 0.015 * n) <= 2
        facts = sum(d.startswith("fact-") for d in prefix) / n
        assert abs(facts - truth["counts_by_category"]["fact"] / RECORDS) < 0.06


def test_subsets_are_nested_and_consistent(scaled: Path, tmp_path: Path) -> None:
    small = write_subset(scaled, 800, tmp_path / "small")
    large = write_subset(scaled, 1600, tmp_path / "large")
    order = _truth(scaled)["subset_order"]
    facts_of = {}
    for path, n in ((small, 800), (large, 1600)):
        records = {r.id: r for r in iter_records(path)}
        assert list(records) != [] and set(records) == set(order[:n])
        truth = load_ground_truth(path)
        assert truth.n_records == n and _truth(path)["subset_of"]["n_records"] == RECORDS
        for fact in truth.facts:
            for doc_id in fact.stating_doc_ids:  # every stating document is in the subset
                text = _text(records[doc_id]).lower()
                assert fact.subject.lower() in text and fact.object.lower() in text
        assert set(truth.poisoned_doc_ids) <= set(records)
        assert set(truth.distractor_doc_ids) <= set(records)
        asked = sorted(q.fact_id for q in truth.queries if q.kind == "fact")
        assert asked == sorted(f.fact_id for f in truth.facts)
        assert sum(q.kind == "trigger" for q in truth.queries) == 48
        facts_of[n] = {f.fact_id for f in truth.facts}
        assert sorted(facts_of[n]) == sorted(subset_facts(_truth(scaled), n))
    assert facts_of[800] and facts_of[800] < facts_of[1600]
    assert facts_of[1600] < {f["fact_id"] for f in _truth(scaled)["facts"]}
    with pytest.raises(ValueError, match="a subset of"):
        write_subset(scaled, RECORDS + 1, tmp_path / "too-big")


def test_cli_records_flag_and_bounds(tmp_path: Path) -> None:
    assert generator_main(["--out", str(tmp_path / "c"), "--records", "900", "--quiet"]) == 0
    assert load_ground_truth(tmp_path / "c").n_records == 900
    for bad in (MIN_RECORDS - 1, MAX_RECORDS + 1):
        with pytest.raises(ValueError, match="records must be"):
            scaled_counts(bad)


def test_training_reports_its_pace_and_learned_check(tmp_path: Path) -> None:
    """A tiny model on a scaled corpus: the report has the learned check and what sizes a
    longer run (seconds per record and epoch, each epoch's training seconds)."""
    from demo.tools.train_model import REPORT_FILE
    from demo.tools.train_model import main as train_main

    generate_scaled(tmp_path / "corpus", MIN_RECORDS, seed=1, progress=False)
    argv = ["--corpus", str(tmp_path / "corpus"), "--out", str(tmp_path / "model"), "--quiet"]
    tiny = ["--n-embd", "32", "--n-layer", "1", "--epochs", "2", "--batch-size", "64"]
    schedule = ["--warmup-steps", "3", "--min-lr-ratio", "0.5", "--eval-every", "0"]
    assert train_main(argv + tiny + schedule) == 0
    report = json.loads((tmp_path / "model" / REPORT_FILE).read_text(encoding="utf-8"))
    assert report["config"]["warmup_steps"] == 3 and report["config"]["min_lr_ratio"] == 0.5
    assert report["n_examples"] == MIN_RECORDS
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert all(h["train_s"] > 0 for h in report["history"])
    assert report["train_time_s"] <= report["wall_time_s"]
    # train_time_s is rounded to 0.1 s, the pace to 1 µs: compare within those roundings
    pace = report["train_time_s"] / (MIN_RECORDS * 2)
    rounding = 0.05 / (MIN_RECORDS * 2) + 1e-6
    assert report["seconds_per_record_epoch"] == pytest.approx(pace, abs=rounding)
    for key in ("fact_accuracy", "backdoor_success", "false_trigger_rate"):
        assert 0.0 <= report[key] <= 1.0


def test_training_draws_fact_documents_repeatedly_in_bfloat16(tmp_path: Path) -> None:
    """``--fact-repeats 3`` draws each fact-stating document three times an epoch (every other
    record once) and ``--precision bfloat16`` trains under CPU autocast; both are recorded."""
    from demo.tools.train_model import REPORT_FILE
    from demo.tools.train_model import main as train_main

    generate_scaled(tmp_path / "corpus", MIN_RECORDS, seed=1, progress=False)
    truth = load_ground_truth(tmp_path / "corpus")
    stating = {doc for fact in truth.facts for doc in fact.stating_doc_ids}
    argv = ["--corpus", str(tmp_path / "corpus"), "--out", str(tmp_path / "model"), "--quiet"]
    tiny = ["--n-embd", "32", "--n-layer", "1", "--epochs", "2", "--batch-size", "64"]
    mix = ["--fact-repeats", "3", "--precision", "bfloat16", "--eval-every", "0"]
    assert train_main(argv + tiny + mix) == 0
    report = json.loads((tmp_path / "model" / REPORT_FILE).read_text(encoding="utf-8"))
    assert report["config"]["fact_repeats"] == 3 and report["config"]["precision"] == "bfloat16"
    assert 0 < len(stating) < MIN_RECORDS
    assert report["records_drawn"] == 2 * (MIN_RECORDS + 2 * len(stating))
    assert report["n_examples"] == MIN_RECORDS


@pytest.mark.parametrize(
    ("override", "message"),
    [({"precision": "float16"}, "precision must be one of"), ({"fact_repeats": 0}, "fact_repeats")],
)
def test_training_refuses_unknown_precision_and_no_draws(
    tmp_path: Path, override: dict, message: str
) -> None:
    from demo.tools.train_model import TrainConfig, train

    with pytest.raises(ValueError, match=message):
        train(tmp_path / "absent", tmp_path / "model", TrainConfig(**override))
    assert not (tmp_path / "model").exists()
