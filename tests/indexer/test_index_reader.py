"""The flat-shard scan against a float64 brute-force top-k, for one query and for micro-batches."""

from __future__ import annotations

import numpy as np
import pytest
from tributary_indexer.query.index import topk_by_scan


@pytest.mark.parametrize("n_queries", [1, 2, 5, 33])
@pytest.mark.parametrize("k", [1, 7, 600])
def test_topk_by_scan_equals_brute_force(n_queries, k):
    rng = np.random.default_rng(n_queries * 1000 + k)
    matrix = rng.standard_normal((500, 24)).astype(np.float32)
    queries = rng.standard_normal((n_queries, 24)).astype(np.float32)
    scores, ids = topk_by_scan(matrix, queries, k, id_start=1000)
    exact = queries.astype(np.float64) @ matrix.astype(np.float64).T  # [nq, 500]
    want = np.argsort(-exact, axis=1, kind="stable")[:, : min(k, 500)]
    assert ids.dtype == np.int64 and ids.shape == want.shape
    np.testing.assert_array_equal(ids - 1000, want)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, want, 1), rtol=1e-5, atol=1e-5)


def test_topk_by_scan_reads_a_read_only_memory_map(tmp_path):
    """Shards are memory-mapped read-only; scanning must neither copy-fail nor write."""
    rng = np.random.default_rng(0)
    path = tmp_path / "m.npy"
    np.save(path, rng.standard_normal((100, 8)).astype(np.float32))
    matrix = np.load(path, mmap_mode="r")
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    _, ids = topk_by_scan(matrix, queries, 5, 0)
    np.testing.assert_array_equal(
        ids, np.argsort(-(queries @ np.asarray(matrix).T), axis=1, kind="stable")[:, :5]
    )
