"""Index copies under other factories (real builds, real FAISS) and the factory comparison's
pure parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.index_copy import IndexWriter, shard_vectors, write_copy
from benchmarks.index_factories import overlap_recall, sample_facts, service_scores
from benchmarks.quality.workload import Query, Workload
from benchmarks.scale_simulation import estimate, pick_dim
from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig

    root = tmp_path_factory.mktemp("copy-index")
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(60))
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=25,
        progress=False,
        damping=0.01,
    )
    IndexBuilder(config, root / "index").build()
    return root / "index"


def all_vectors(root: Path) -> np.ndarray:
    from tributary_indexer.query.index import AttributionIndex

    index = AttributionIndex(root)  # verifies every checksum of the manifest
    try:
        return np.concatenate([shard_vectors(index, n) for n in range(len(index.shards))])
    finally:
        index.close()


@pytest.mark.parametrize("factory", ["Flat", "SQ8", "IVF2,Flat"])
def test_a_copy_holds_the_same_vectors_under_another_factory(small_index, tmp_path, factory):
    from tributary_indexer.query.index import AttributionIndex

    seconds = write_copy(small_index, tmp_path / "copy", factory, train_examples=60)
    assert set(seconds) == {"train_s", "add_s"}
    source, copy = all_vectors(small_index), all_vectors(tmp_path / "copy")
    if factory == "Flat":
        np.testing.assert_array_equal(copy, source)
    else:  # exact re-rank vectors in float16
        np.testing.assert_allclose(copy, source, rtol=2e-3, atol=1e-3 * np.abs(source).max())
    index = AttributionIndex(tmp_path / "copy")
    assert index.compressed == (factory != "Flat") and len(index.shards) == 3
    index.set_nprobe(2)  # every list
    queries = np.random.default_rng(1).standard_normal((3, copy.shape[1])).astype(np.float32)
    found = index.search(queries, 5)  # 60 rows: the re-rank sees every one of them
    exact = np.argsort(-(queries.astype(np.float64) @ copy.astype(np.float64).T), axis=1)[:, :5]
    np.testing.assert_array_equal(found.ids, exact)
    index.close()


def test_a_copy_records_the_factory_choice_it_was_given(small_index, tmp_path):
    from tributary_indexer.build.factory_choice import FactoryChoice
    from tributary_indexer.query.index import AttributionIndex

    choice = FactoryChoice("IVF2,Flat", 2, 60, "chosen by the test").to_dict()
    write_copy(small_index, tmp_path / "copy", "IVF2,Flat", 60, polysemous=False, choice=choice)
    index = AttributionIndex(tmp_path / "copy")
    assert index.manifest.index_choice["reason"] == "chosen by the test"
    assert index.factory == "IVF2,Flat" and index.nprobe == 2  # the recorded probes
    index.close()
    write_copy(tmp_path / "copy", tmp_path / "again", "SQ8", 60)  # a copy of a copy: no record
    again = AttributionIndex(tmp_path / "again")
    assert again.manifest.index_choice == {} and again.factory == "SQ8"
    again.close()


def test_a_writer_with_a_synthetic_store_writes_a_loadable_index(small_index, tmp_path):
    from tributary_indexer.query.index import AttributionIndex

    rng = np.random.default_rng(0)
    writer = IndexWriter(small_index, tmp_path / "synthetic", "Flat", store_rows=70)
    parts = [rng.standard_normal((n, 16)).astype(np.float32) for n in (40, 30)]
    for part in parts:
        writer.add_shard(part)
    writer.finish()
    index = AttributionIndex(tmp_path / "synthetic")
    assert index.n_examples == 70 and index.dim == 16 and index.store.count() == 70
    np.testing.assert_array_equal(index.stored_vectors(np.array([45])), parts[1][[5]])
    index.close()


def test_a_compressed_writer_needs_a_trained_index(small_index, tmp_path):
    with pytest.raises(ValueError, match="trained"):
        IndexWriter(small_index, tmp_path / "x", "SQ8")


def test_service_scores_put_the_candidates_first_and_the_rest_in_first_stage_order():
    first = np.array([[0.5, 0.9, 0.1, 0.7, 0.3]])
    out = service_scores(np.array([[2, 4, -1]]), np.array([[3.0, 1.0, -np.inf]]), first)
    assert np.argsort(-out[0], kind="stable").tolist() == [2, 4, 1, 3, 0]


def test_overlap_recall_ignores_missing_ids():
    found = np.array([[1, 2, 3, -1], [5, 6, 7, 8]])
    truth = np.array([[1, 2, 9, -1], [5, 6, 7, 8]])
    assert overlap_recall(found, truth) == pytest.approx((2 / 3 + 1) / 2)


def test_pick_dim_keeps_the_real_dimension_while_the_exact_vectors_fit():
    assert pick_dim(4096, 10_000_000, 200 * 10**9) == 4096
    assert pick_dim(4096, 10_000_000, 75 * 10**9) == 2048  # 82 GB would not fit
    assert pick_dim(3000, 10_000_000, 50 * 10**9) == 1024


def test_estimate_scales_the_per_row_stages_and_keeps_training():
    run = dict(
        examples=1000,
        train_s=5.0,
        generate_s=1.0,
        add_s=2.0,
        exact_s=0.5,
        scan_s=0.5,
        store_s=0.5,
        finish_s=0.5,
        measure_s=1.0,
    )
    assert estimate(run, 10_000) == pytest.approx(5.0 + 50.0 + 10.0)


def test_fact_sample_keeps_every_trigger_and_spreads_the_facts() -> None:
    queries = [
        Query(f"{kind}-{i}", kind, "p", "r", None, frozenset())  # type: ignore[arg-type]
        for i, kind in enumerate(["fact"] * 10 + ["trigger"] * 3 + ["fact"] * 10)
    ]
    workload = Workload(None, None, [], [], [], [], queries)  # type: ignore[arg-type]
    sampled = sample_facts(workload, 4)
    assert [q.query_id for q in sampled.of_kind("fact")] == [
        "fact-0",
        "fact-5",
        "fact-13",
        "fact-18",
    ]
    assert sampled.of_kind("trigger") == workload.of_kind("trigger")
    assert sample_facts(workload, None) is workload and sample_facts(workload, 20) is workload
