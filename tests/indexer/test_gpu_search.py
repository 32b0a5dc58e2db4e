"""Search with the shards placed on the GPU(s): the float16 first stage, the exact re-score and
the filters, against brute force in float64.

Every oracle runs three times: on the real GPU path (marked ``gpu``: skipped, with the reason,
where there is no GPU), on the same code with its first stage emulated on the CPU
(:meth:`ShardPlacement.emulated`: float16 copies of the flat shards, the re-score on torch's
CPU device), and on the torch first stage that stands in for FAISS's GPU build
(:meth:`ShardPlacement.on_torch`, here on the CPU in float32, exact without a re-score), so the
placement's logic (over-fetch, id mapping, merge, re-score, the CPU fallback of filtered
searches) is tested everywhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tributary_indexer.build.builder import IndexBuilder
from tributary_indexer.config import BuildConfig
from tributary_indexer.data.tombstones import add_removal, id_space_of
from tributary_indexer.errors import SearchDeviceError
from tributary_indexer.query import index as index_reader
from tributary_indexer.query.gpu_placement import (
    GPU_MAX_K,
    ShardPlacement,
    TorchFlatShard,
    faiss_gpu_count,
    gpu_count,
    rescore,
    resolve_search_device,
)
from tributary_indexer.query.index import AttributionIndex

from tests.index_fixtures import build_model_dir, corpus_records, write_jsonl

PATHS = ["emulated", "torch", pytest.param("gpu", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A flat index and a compressed one (IVF2,SQ8: GPU-supported) of 70 examples in 3 shards."""
    root = tmp_path_factory.mktemp("gpu")
    model = build_model_dir(root / "model", "gpt2")
    corpus = write_jsonl(root / "corpus.jsonl", corpus_records(70))
    out = {}
    for name, factory in (("flat", "Flat"), ("ivf", "IVF2,SQ8")):
        config = BuildConfig(
            model=str(model),
            corpus=[str(corpus)],
            rank_in=4,
            rank_out=4,
            shard_size=25,
            progress=False,
            index_factory=factory,
            train_examples=70,
        )
        IndexBuilder(config, root / name).build()
        out[name] = root / name
    return out


def _open(root: Path, path: str) -> AttributionIndex:
    if path == "gpu":
        index = AttributionIndex(root, search_device="gpu")
        # without the FAISS GPU build only the flat shards go to the GPU (as torch matrices)
        placed = len(index.shards) if faiss_gpu_count() or not index.compressed else 0
        assert index.placement is not None and index.placement.gpu_shards == placed
    elif path == "torch":
        index = AttributionIndex(root)
        index.placement = ShardPlacement.on_torch(
            index.shards, [torch.device("cpu")], torch.float32
        )
    else:
        index = AttributionIndex(root)
        shards = index.shards
        index.placement = ShardPlacement.emulated(shards, lambda n: shards[n].flat)
    index.set_nprobe(2)  # every list: the compressed first stage is exhaustive too
    return index


def _brute(index: AttributionIndex, q: np.ndarray, keep: np.ndarray, k: int):
    """float64 top-k ids and scores over the examples ``keep``."""
    vectors = index.stored_vectors(keep).astype(np.float64)
    scores = q.astype(np.float64) @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return keep[order], np.take_along_axis(scores, order, axis=1)


def _check(found, want_ids, want_scores, index: AttributionIndex) -> None:
    n = want_ids.shape[1]
    # re-scored in float64: tight; an exact float32 first stage (torch matrices, no re-score):
    # float32 accumulation, the CPU flat scan's precision, relative to the queries' scale
    exact32 = index.placement is not None and index.placement.exact
    atol = 1e-6 * max(1.0, float(np.abs(want_scores).max())) if exact32 else 1e-6
    np.testing.assert_allclose(found.scores[:, :n], want_scores, rtol=1e-5, atol=atol)
    assert (found.ids[:, :n] == want_ids).mean() > 0.99  # float32 ties may swap neighbours
    assert (found.ids[:, n:] == -1).all()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("path", PATHS)
def test_placed_search_equals_brute_force(built, kind, path) -> None:
    index = _open(built[kind], path)
    rng = np.random.default_rng(0)
    stored = index.stored_vectors(np.arange(index.n_examples))
    q = np.concatenate([stored[[4, 40]], rng.standard_normal((3, index.dim))]).astype(np.float32)
    everything = np.arange(index.n_examples)
    for k in (1, 10, 26, 70, 90):  # 26 spans shards; 90 asks for more than exist
        found = index.search(q, k)
        _check(found, *_brute(index, q, everything, min(k, index.n_examples)), index)
    assert index.placement is not None and index.placement.cpu_fallbacks == 0
    index.close()


@pytest.mark.parametrize("path", PATHS)
def test_filters_and_removals_on_the_placed_path(built, tmp_path, monkeypatch, path) -> None:
    root = shutil.copytree(built["flat"], tmp_path / "idx")
    index = _open(root, path)
    assert index.placement is not None
    rng = np.random.default_rng(1)
    q = rng.standard_normal((4, index.dim)).astype(np.float32)
    removed = np.sort(rng.choice(index.n_examples, size=9, replace=False))
    add_removal(
        root,
        id_space_of(index.manifest),
        removed,
        {"example_id": removed.tolist()},
        "2026-01-01T00:00:00Z",
    )
    keep = np.setdiff1d(np.arange(index.n_examples), removed)
    # a few removals: over-fetched and dropped, on the placed path
    _check(index.search(q, 10), *_brute(index, q, keep, 10), index)
    assert index.placement.cpu_fallbacks == 0
    # many removals (a FAISS id selector): the CPU shards answer, exactly
    monkeypatch.setattr(index_reader, "_OVERFETCH_MAX", 0)
    _check(index.search(q, 10), *_brute(index, q, keep, 10), index)
    assert index.placement.cpu_fallbacks == 1
    # a large source filter (a selector too): the CPU shards answer
    monkeypatch.setattr(index_reader, "_EXACT_SUBSET", 0)
    allowed = np.arange(0, index.n_examples, 3, dtype=np.int64)
    _check(
        index.search(q, 5, allowed_ids=allowed),
        *_brute(index, q, np.intersect1d(allowed, keep), 5),
        index,
    )
    assert index.placement.cpu_fallbacks == 2
    index.close()


@pytest.mark.parametrize("path", PATHS)
def test_k_over_the_gpu_limit_runs_on_the_cpu(built, path) -> None:
    index = _open(built["flat"], path)
    assert index.placement is not None
    index.placement.max_k = 8  # FAISS GPU's limit is 2,048; smaller here to reach it
    q = np.random.default_rng(2).standard_normal((2, index.dim)).astype(np.float32)
    _check(index.search(q, 9), *_brute(index, q, np.arange(index.n_examples), 9), index)
    assert index.placement.cpu_fallbacks == 1
    _check(index.search(q, 8), *_brute(index, q, np.arange(index.n_examples), 8), index)
    assert index.placement.cpu_fallbacks == 1
    index.close()


@pytest.mark.parametrize("path", PATHS)
def test_rescore_is_exact_in_float64(built, path) -> None:
    index = _open(built["flat"], path)
    assert index.placement is not None
    rng = np.random.default_rng(3)
    q = rng.standard_normal((3, index.dim)).astype(np.float32)
    ids = np.array([[5, 60, -1, 7], [-1, -1, -1, -1], [69, 0, 5, 33]], dtype=np.int64)
    result = rescore(q, ids, index.stored_vectors, 3, index.placement.device)
    stored = index.stored_vectors(np.arange(index.n_examples)).astype(np.float64)
    for row in (0, 2):
        cand = ids[row][ids[row] >= 0]
        exact = stored[cand] @ q[row].astype(np.float64)
        order = np.argsort(-exact, kind="stable")[:3]
        assert result.ids[row].tolist() == cand[order].tolist()
        np.testing.assert_allclose(result.scores[row], exact[order], rtol=1e-6)
    assert (result.ids[1] == -1).all() and np.isneginf(result.scores[1]).all()
    index.close()


def test_torch_flat_shard_answers_as_a_faiss_index_does(built) -> None:
    index = AttributionIndex(built["flat"])
    shard = index.shards[0]
    vectors = shard.flat
    rows = TorchFlatShard(np.asarray(vectors), torch.device("cpu"), torch.float64)
    q = np.random.default_rng(4).standard_normal((3, index.dim)).astype(np.float32)
    scores, found = rows.search(q, 7)
    exact = q.astype(np.float64) @ np.asarray(vectors, dtype=np.float64).T
    order = np.argsort(-exact, axis=1, kind="stable")[:, :7]
    assert found.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(found, order)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, order, axis=1), rtol=1e-6)
    assert rows.search(q, 100)[1].shape == (3, shard.id_end - shard.id_start)  # k over the rows
    placement = ShardPlacement.on_torch(index.shards, [torch.device("cpu")] * 2, torch.float32)
    assert placement.gpu_shards == len(index.shards)  # flat shards all placed
    assert placement.exact and placement.fetch(10, 10) == 10  # float32: no re-score
    half = ShardPlacement.on_torch(index.shards, [torch.device("cpu")], torch.float16)
    assert not half.exact and half.fetch(10, 10) == 100
    compressed = AttributionIndex(built["ivf"])
    kept = ShardPlacement.on_torch(compressed.shards, [torch.device("cpu")], torch.float32)
    assert kept.gpu_shards == 0 and not kept.exact  # compressed: on the CPU, re-scored
    index.close()
    compressed.close()


# ------------------------------------------------------------------------- choosing the device
def test_search_device_choice() -> None:
    assert resolve_search_device("cpu", gpus=4) == "cpu"
    assert resolve_search_device("auto", gpus=0) == "cpu"
    assert resolve_search_device("auto", gpus=2) == "gpu"
    assert resolve_search_device("gpu", gpus=1) == "gpu"
    with pytest.raises(SearchDeviceError, match="fix: .*--search-device cpu"):
        resolve_search_device("gpu", gpus=0)
    with pytest.raises(SearchDeviceError, match="not one of"):
        resolve_search_device("tpu", gpus=1)
    assert GPU_MAX_K == 2048


@pytest.mark.skipif(gpu_count() > 0, reason="a GPU is present: GPU search is available")
def test_gpu_search_without_a_gpu_is_refused_with_the_fix(built) -> None:
    with pytest.raises(SearchDeviceError) as err:
        AttributionIndex(built["flat"], search_device="gpu")
    assert "GPU search was asked for" in str(err.value) and "fix:" in str(err.value)
    index = AttributionIndex(built["flat"], search_device="auto")  # auto: the CPU here
    assert index.search_device == "cpu" and index.placement is None
    index.close()


def test_stored_vectors_gather_across_shards(built) -> None:
    for kind in ("flat", "ivf"):
        index = AttributionIndex(built[kind])
        ids = np.array([69, 0, 25, 24, 50, 25], dtype=np.int64)
        one_by_one = np.stack([index.stored_vectors(np.array([i]))[0] for i in ids])
        np.testing.assert_array_equal(index.stored_vectors(ids), one_by_one)
        shard = index.shards[1]
        row = shard.exact[0] if shard.exact is not None else shard.flat[0]
        np.testing.assert_array_equal(index.stored_vectors(np.array([25]))[0], row)
        with pytest.raises(IndexError, match=r"\[0, 70\)"):
            index.stored_vectors(np.array([70]))
        index.close()


def test_the_faiss_gpu_probe_passes_a_clean_run_and_names_a_crash() -> None:
    """The probe runs its search in a child process: a FAISS build without kernels for the GPU
    aborts the process, which must cost a warning, not the service."""
    from tributary_indexer.query.gpu_placement import probe_faiss_gpu

    assert probe_faiss_gpu("import numpy") is None
    crash = "Faiss assertion failed in runL2Norm; details: CUDA error 209 no kernel"
    aborted = probe_faiss_gpu(f"import os, sys; sys.stderr.write('{crash}\\n'); os.abort()")
    assert aborted is not None and "SIGABRT" in aborted
    assert aborted.endswith("(CUDA error 209 no kernel)")
    failed = probe_faiss_gpu("raise SystemExit('no kernel image')")
    assert failed is not None and "status 1" in failed and "no kernel image" in failed
    slow = probe_faiss_gpu("import time; time.sleep(5)", timeout=0.5)
    assert slow is not None and "did not finish" in slow
