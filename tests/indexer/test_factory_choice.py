"""``--index-factory auto``: the rule's exact choices, the manifest's record of it, the plan's
report of it, and a real IVF-PQ build (the rule's threshold forced low) whose search and exact
re-score agree with brute force in float64."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest
from tributary_indexer.build.builder import IndexBuilder
from tributary_indexer.build.factory_choice import (
    FLAT_MAX_EXAMPLES,
    choice_of,
    choose_factory,
    ivf_lists,
    pq_subquantizers,
    recorded_factory,
    resolve_factory,
)
from tributary_indexer.build.plan import estimate_build
from tributary_indexer.build.verification import verify_index
from tributary_indexer.config import BuildConfig
from tributary_indexer.query.index import AttributionIndex

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl

GIB = 2**30


@pytest.mark.parametrize(
    ("n", "dim", "memory", "shard_rows", "factory", "nprobe", "train"),
    [
        (2_100, 4096, 16 * GIB, 50_000, "Flat", None, 0),  # the demo index
        (1_000_000, 4096, 16 * GIB, 50_000, "Flat", None, 0),  # 15.3 GiB flat fits 16 GiB
        (1_100_000, 4096, 16 * GIB, 50_000, "IVF1024,PQ1024x4fs", 128, 65_536),  # 16.8 GiB does not
        (100_000, 4096, 1 * GIB, None, "IVF1024,PQ1024x4fs", 128, 65_536),  # 1.5 GiB flat > 1 GiB
        (1_000_000, 768, 2 * GIB, 50_000, "IVF1024,PQ256x4fs", 128, 65_536),  # 768 = 3·256
        (1_000_000, 1000, 2 * GIB, 50_000, "IVF1024,PQ250x4fs", 128, 65_536),
        (50_000_000, 4096, 16 * GIB, 50_000, "IVF1024,PQ512x4fs", 128, 65_536),  # m shrunk to fit
        (5_000_000, 4096, 64 * GIB, 1_000_000, "IVF4096,PQ1024x4fs", 512, 159_744),  # 39 a list
        (300, 64, 16 * GIB, None, "Flat", None, 0),  # small: flat
        (200, 64, 16 * GIB, None, "Flat", None, 0),
    ],
)
def test_the_rule_at_several_sizes(n, dim, memory, shard_rows, factory, nprobe, train) -> None:
    choice = choose_factory(n, dim, memory, shard_rows=shard_rows)
    assert (choice.factory, choice.nprobe, choice.train_examples) == (factory, nprobe, train)
    assert f"D={dim}" in choice.reason and str(n) in choice.reason
    assert choice.to_dict()["memory_bytes"] == memory


def test_a_set_limit_on_flat_examples() -> None:
    assert FLAT_MAX_EXAMPLES is None  # by default, flat while the memory budget holds it
    at = choose_factory(100_000, 4096, 16 * GIB, shard_rows=50_000, flat_max_examples=100_000)
    assert at.factory == "Flat" and "N <= 100000" in at.reason
    past = choose_factory(100_001, 4096, 16 * GIB, shard_rows=50_000, flat_max_examples=100_000)
    assert (past.factory, past.nprobe) == ("IVF1024,PQ1024x4fs", 128)
    assert "N > 100000" in past.reason


def test_the_threshold_and_too_few_examples() -> None:
    forced = choose_factory(300, 64, flat_max_examples=0)
    assert (forced.factory, forced.nprobe, forced.train_examples) == ("IVF4,PQ16x4fs", 4, 300)
    assert "N=300," in forced.reason and "N > 0" in forced.reason
    tiny = choose_factory(255, 64, flat_max_examples=0)  # PQ's 256 codewords need 256 vectors
    assert tiny.factory == "Flat" and "too few" in tiny.reason


def test_over_budget_keeps_one_subquantizer_per_32_dims_and_says_so(caplog) -> None:
    choice = choose_factory(1_000_000_000, 4096, 16 * GIB, shard_rows=50_000)
    assert choice.factory == "IVF1024,PQ128x4fs"
    assert "over the budget" in choice.reason and "over the budget" in caplog.text


def test_parts_of_the_rule() -> None:
    assert [ivf_lists(r) for r in (1, 100, 2_000, 50_000, 1_000_000)] == [1, 2, 32, 1024, 4096]
    assert [pq_subquantizers(d) for d in (4096, 768, 80, 13)] == [1024, 256, 20, 1]
    assert pq_subquantizers(4096, max_m=300) == 256
    with pytest.raises(ValueError, match="n_examples"):
        choose_factory(0, 4096)


def test_explicit_factories_are_kept_as_given() -> None:
    for factory in ("Flat", "IVF2,SQ8", "SQfp16", "IVF4096,PQ64"):
        config = BuildConfig(index_factory=factory, flat_max_examples=0)
        choice = resolve_factory(config, 1_000_000, 4096)
        assert (choice.factory, choice.requested, choice.nprobe) == (factory, factory, None)
    assert BuildConfig().index_factory == "auto"
    with pytest.raises(ValueError, match="index_memory_gib"):
        BuildConfig(index_memory_gib=0)
    with pytest.raises(ValueError, match="flat_max_examples"):
        BuildConfig(flat_max_examples=-1)


def test_indexes_without_a_record_use_their_build_config() -> None:
    legacy = {"build_config": {"index_factory": "IVF2,SQ8"}}
    assert recorded_factory(legacy) == "IVF2,SQ8"
    assert choice_of(legacy).factory == "IVF2,SQ8"
    assert recorded_factory({"build_config": {}, "index_choice": {}}) == "Flat"


# ------------------------------------------------------------------------- a real IVF-PQ build
@pytest.fixture(scope="module")
def forced(tmp_path_factory):
    """A 300-example build with ``flat_max_examples=0``: auto picks IVF-PQ."""
    root = tmp_path_factory.mktemp("auto")
    model = build_model_dir(root / "model", "gpt2")
    records = corpus_records(330)
    corpus = write_jsonl(root / "corpus.jsonl", records[:300])
    extra = write_jsonl(root / "extra.jsonl", records[300:])
    config = BuildConfig(
        model=str(model),
        corpus=[str(corpus)],
        rank_in=4,
        rank_out=4,
        shard_size=100,
        damping=0.01,
        flat_max_examples=0,
        batch_tokens=1024,
        progress=False,
    )
    IndexBuilder(config, root / "index", keep_staging=True).build()
    return root, config, extra


def _brute_force(index: AttributionIndex, q: np.ndarray) -> np.ndarray:
    stored = index.stored_vectors(np.arange(index.n_examples)).astype(np.float64)
    return stored @ q.astype(np.float64)  # [N]


def test_auto_builds_ivf_pq_and_records_why(forced) -> None:
    root, config, _ = forced
    index_dir = root / "index"
    assert verify_index(index_dir) == []
    manifest = json.loads((index_dir / "manifest.json").read_text())
    choice = manifest["index_choice"]
    dim = manifest["dim"]
    m = pq_subquantizers(dim)
    assert choice["factory"] == f"IVF2,PQ{m}x4fs" and choice["requested"] == "auto"
    assert choice["nprobe"] == 2 and choice["n_examples"] == 300 and choice["dim"] == dim
    assert choice["train_examples"] == 300 and "N > 0;" in choice["reason"]
    assert manifest["build_config"]["index_factory"] == "auto"
    shard = faiss.read_index(str(index_dir / "shards" / "shard-00000.faiss"))
    inner = faiss.downcast_index(faiss.downcast_index(shard).index)
    assert isinstance(inner, faiss.IndexIVFPQFastScan) and inner.pq.M == m and inner.nlist == 2
    assert sorted(p.name for p in (index_dir / "vectors").iterdir()) == [
        "shard-00000.npy",
        "shard-00001.npy",
        "shard-00002.npy",
    ]
    index = AttributionIndex(index_dir)
    assert index.compressed and index.nprobe == 2  # the search side takes nprobe from the manifest
    assert AttributionIndex(index_dir, nprobe=1).nprobe == 1


def test_ivf_pq_search_and_rescore_equal_brute_force_in_float64(forced) -> None:
    root, _, _ = forced
    index = AttributionIndex(root / "index")
    rng = np.random.default_rng(0)
    stored = index.stored_vectors(np.arange(index.n_examples))
    noise = rng.standard_normal((2, index.dim))
    queries = np.concatenate([stored[[3, 150]], noise]).astype(np.float32)
    k = 10
    result = index.search(queries, k)
    for row, q in enumerate(queries):
        exact = _brute_force(index, q)
        ids, scores = result.ids[row], result.scores[row]
        assert (ids >= 0).all() and len(set(ids.tolist())) == k
        # every returned score is the exact inner product, in descending order
        np.testing.assert_allclose(scores, exact[ids], rtol=1e-5, atol=1e-6)
        assert (np.diff(scores) <= 1e-6 * np.abs(scores[:-1]).max()).all()
    # all lists probed and every row re-scored: exactly the brute-force top-k
    index.rerank_factor = 100
    full = index.search(queries, k)
    for row, q in enumerate(queries):
        exact = _brute_force(index, q)
        want = np.argsort(-exact, kind="stable")[:k]
        assert full.ids[row].tolist() == want.tolist()
        np.testing.assert_allclose(full.scores[row], exact[want], rtol=1e-5, atol=1e-6)


def test_the_rescore_reads_one_candidate_list_for_all_shards(forced) -> None:
    """The compressed candidates of every shard are merged first and only the best ``fetch`` of
    them are re-scored: the exact rows read do not grow with the number of shards."""
    root, _, _ = forced
    index = AttributionIndex(root / "index")
    assert len(index.shards) == 3
    k, fetch = 4, 4 * index.rerank_factor  # 40 of the 300, so the merge must choose
    read: list[int] = []
    stored_vectors = index.stored_vectors

    def counting(ids: np.ndarray) -> np.ndarray:
        read.append(len(ids))
        return stored_vectors(ids)

    index.stored_vectors = counting  # type: ignore[method-assign]
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((3, index.dim)).astype(np.float32)
    result = index.search(queries, k)
    assert len(read) == 1 and read[0] <= 3 * fetch  # one read of the merged candidates
    for row, q in enumerate(queries):
        compressed = [shard.index.search(q[None], fetch) for shard in index.shards]
        scores = np.concatenate([c[0][0] for c in compressed])
        ids = np.concatenate([c[1][0] for c in compressed])
        best = ids[np.argsort(-scores, kind="stable")[:fetch]]  # the merged candidate list
        assert len(np.unique(best)) <= fetch
        exact = _brute_force(index, q)[best]
        want = best[np.argsort(-exact, kind="stable")[:k]]
        assert result.ids[row].tolist() == want.tolist()
        np.testing.assert_allclose(result.scores[row], np.sort(exact)[::-1][:k], rtol=1e-6)
    read.clear()
    index.search(queries[:1], k)
    assert read == [fetch]  # one query: fetch rows, not fetch a shard (120)


def test_shards_searched_side_by_side_answer_as_one_after_the_other(forced) -> None:
    """A single query searches compressed shards on several threads; the answer is the one
    the shards give searched in turn, and the brute-force top-k once every row is re-scored."""
    root, _, _ = forced
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        index = AttributionIndex(root / "index")
    finally:
        faiss.omp_set_num_threads(threads)
    assert index._threads_for(1) is not None and index._threads_for(2) is None
    rng = np.random.default_rng(2)
    queries = rng.standard_normal((6, index.dim)).astype(np.float32)
    side_by_side = [index.search(q[None], 7) for q in queries]
    index.close()  # no threads from here on: the shards are searched in turn
    assert index._threads_for(1) is None
    for q, got in zip(queries, side_by_side, strict=True):
        want = index.search(q[None], 7)
        assert got.ids.tolist() == want.ids.tolist()
        np.testing.assert_array_equal(got.scores, want.scores)
    index.rerank_factor = 100
    exact = [index.search(q[None], 5) for q in queries]
    threaded = AttributionIndex(root / "index", rerank_factor=100)
    for q, want in zip(queries, exact, strict=True):
        assert threaded.search(q[None], 5).ids.tolist() == want.ids.tolist()
        brute = _brute_force(threaded, q)
        assert want.ids[0].tolist() == np.argsort(-brute, kind="stable")[:5].tolist()


def _mapping_flags(folder: Path) -> list[set[str]]:
    """The ``VmFlags`` of this process's memory maps of files under ``folder`` (``rr``: read at
    random, ``madvise(MADV_RANDOM)``)."""
    found, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if not line.startswith("VmFlags:") and ":" not in fields[0]:  # a mapping's header line
            path = fields[5] if len(fields) > 5 else ""  # anonymous mappings have no path
            current = path if path.startswith(str(folder)) else None
        elif current and line.startswith("VmFlags:"):
            found.append(set(fields[1:]))
    return found


def test_exact_vectors_are_memory_maps_read_at_random(forced, tmp_path) -> None:
    """The re-score's exact vectors stay memory maps (advised for random reads, no copy); a
    plain array passes through untouched."""
    from tributary_indexer.query.index import _for_random_reads

    root, _, _ = forced
    index = AttributionIndex(root / "index")
    for shard in index.shards:
        assert isinstance(shard.exact, np.memmap) and not shard.exact.flags.writeable
    advised = _mapping_flags(root / "index" / "vectors")  # the kernel's record of the advice
    assert len(advised) >= len(index.shards) and all("rr" in flags for flags in advised)
    plain = np.ones((3, 2), np.float32)
    assert _for_random_reads(plain) is plain
    path = tmp_path / "v.npy"
    np.save(path, np.arange(6, dtype=np.float16).reshape(3, 2))
    mapped = np.load(path, mmap_mode="r")
    assert _for_random_reads(mapped) is mapped and mapped[2].tolist() == [4.0, 5.0]


def test_add_keeps_the_recorded_factory(forced, tmp_path) -> None:
    import shutil

    root, config, extra = forced
    copy = tmp_path / "index"
    shutil.copytree(root / "index", copy, ignore=shutil.ignore_patterns("staging"))
    before = json.loads((copy / "manifest.json").read_text())["index_choice"]
    IndexBuilder(replace(config, corpus=[str(extra)]), copy).add()
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["index_choice"] == before and manifest["n_examples"] == 330
    assert verify_index(copy) == []
    index = AttributionIndex(copy)
    index.rerank_factor = 100
    q = index.stored_vectors(np.array([320]))
    exact = _brute_force(index, q[0])
    assert index.search(q, 5).ids[0].tolist() == np.argsort(-exact, kind="stable")[:5].tolist()


def test_plan_reports_what_auto_will_choose(forced, tmp_path) -> None:
    root, config, _ = forced
    plan = estimate_build(config, timed_batches=1, workdir=tmp_path)
    built = json.loads((root / "index" / "manifest.json").read_text())["index_choice"]
    assert plan.index_choice == built
    assert any(line.startswith(f"index: auto -> {built['factory']}") for line in plan.lines())
    flat = estimate_build(
        replace(config, flat_max_examples=FLAT_MAX_EXAMPLES), timed_batches=1, workdir=tmp_path
    )
    assert flat.index_choice["factory"] == "Flat" and "vectors/vectors-*.npy" not in flat.files


def test_plan_cli_prints_the_choice(forced, capsys) -> None:
    root, config, _ = forced
    from tributary_indexer.cli import main

    code = main(
        [
            "plan",
            "--model",
            config.model,
            "--corpus",
            *config.corpus,
            "--rank-in",
            "4",
            "--rank-out",
            "4",
            "--shard-size",
            "100",
            "--flat-max-examples",
            "0",
            "--timed-batches",
            "1",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "index: auto -> IVF2,PQ" in out and "N=300, D=" in out


def test_auto_skips_polysemous_training_and_explicit_factories_keep_it() -> None:
    import faiss
    from tributary_indexer.build.shards import train_index

    sample = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    plain = train_index(16, "IVF2,PQ4", sample, polysemous=False)
    default = train_index(16, "IVF2,PQ4", sample)
    assert not faiss.downcast_index(plain.index).do_polysemous_training
    assert faiss.downcast_index(default.index).do_polysemous_training
    q = sample[:5]
    for index in (plain, default):
        index.add_with_ids(sample, np.arange(300, dtype=np.int64))
        faiss.extract_index_ivf(index.index).nprobe = 2
    # polysemous training only renumbers the codewords: the same search results
    (d1, i1), (d2, i2) = plain.search(q, 10), default.search(q, 10)
    assert (i1 >= 0).all() and (i1 == i2).all()
    np.testing.assert_allclose(d1, d2, rtol=1e-5)
