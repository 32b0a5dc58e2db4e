"""Quick attribution-quality regression on the demo model (benchmarks/quality).

The default configuration (whatever ``BuildConfig()`` says), ranked the way the service ranks it
(two stages with its default number of candidates), must keep finding the documents that state
a fact and the poisoned documents behind a backdoor. Thresholds sit below the measured figures in
``benchmarks/RESULTS.md`` (span-gated ranking at α = 24: fact recall@1 0.997, recall@10 1.000,
MRR 0.999, backdoor AUPRC 1.000) and above what losing a piece gives: the same index ranked
token-saturated (no copy spans, no specificity weights) gives recall@1 0.910, MRR 0.950 and
AUPRC 0.997, ranked linearly 0.854 / 0.914 / 0.990, the NLL objective recall@10 0.36 and
AUPRC 0.02, PCA init MRR 0.80, random 0.02. Without the gate (span-saturated) recall@1 is 0.990,
4 questions missed against the default's 1, which the recall@1 threshold (at most 3) catches; the
held-out corpora (``benchmarks.quality.heldout``) separate the two more clearly. The presence's
core changes nothing on the demo (the whole-span gate also misses 1); the oracle tests of
``tests/indexer/test_ranking.py`` and ``tests/service/test_api.py`` pin it. The scores come from
the service's own query code (:mod:`tributary_indexer.query`), so this guards the engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.quality.methods import GradientCache, LoGraMethod, logra_scores
from benchmarks.quality.metrics import backdoor_metrics, fact_tracing_metrics
from benchmarks.quality.retrieval import FIRST_STAGE
from benchmarks.quality.workload import load_workload

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_scores():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        workload = load_workload()
        scores = logra_scores(LoGraMethod.default(), GradientCache(workload), FIRST_STAGE)
    finally:
        torch.set_num_threads(threads)
    return workload, scores


def _rows(workload, kind):
    return [i for i, q in enumerate(workload.queries) if q.kind == kind]


def test_default_traces_facts(default_scores):
    workload, scores = default_scores
    rows = _rows(workload, "fact")
    metrics = fact_tracing_metrics(scores[rows], [workload.queries[i].relevant for i in rows])
    assert metrics["recall@10"] >= 0.95, metrics
    assert metrics["recall@1"] >= 0.992, (
        metrics
    )  # at most 3 of 390 missed: span-saturated (4) fails
    assert metrics["mrr"] >= 0.975, metrics


def test_default_retrieves_the_backdoor(default_scores):
    workload, scores = default_scores
    rows = _rows(workload, "trigger")
    metrics = backdoor_metrics(scores[rows], workload.queries[rows[0]].relevant)
    assert metrics["auprc"] >= 0.98, metrics


def test_metrics_against_hand_computed_values():
    scores = np.array([[0.9, 0.1, 0.5, 0.3], [0.1, 0.2, 0.3, 0.4]])
    got = fact_tracing_metrics(scores, [frozenset({2}), frozenset({0, 3})])
    assert got == {"recall@1": 0.5, "recall@10": 1.0, "mrr": (1 / 2 + 1) / 2}
    ap = backdoor_metrics(np.array([[0.9, 0.8, 0.7, 0.6]]), frozenset({0, 2}), ks=(2,))
    assert ap["auprc"] == pytest.approx((1 + 2 / 3) / 2) and ap["recall@2"] == 0.5


def test_score_cache_is_keyed_by_the_model_and_the_corpus(tmp_path):
    """Another corpus with the same model must not reuse the demo's cached score matrices."""
    import shutil

    from benchmarks.quality.retrieval import ROOT, cache_tag

    model, corpus = ROOT / "demo" / "model", ROOT / "demo" / "corpus"
    copy = tmp_path / "corpus"
    shutil.copytree(corpus, copy)
    assert cache_tag(model, copy) == cache_tag(model, corpus)  # same files, same cache
    truth = copy / "ground_truth.json"
    truth.write_text(
        truth.read_text(encoding="utf-8").replace("fact-0001", "fact-0001x", 1), encoding="utf-8"
    )
    assert cache_tag(model, copy) != cache_tag(model, corpus)
    (copy / "ground_truth.json").unlink()
    assert cache_tag(model, copy) != cache_tag(model, corpus)
