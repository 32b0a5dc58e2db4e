"""The scale simulation's pure parts: the spectrum-matched sampler and the streamed exact top-k."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.synthetic_vectors import SpectrumSampler, StreamedTopK, random_projection


def known_gaussian(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` draws of a 12-dim Gaussian with a steep known spectrum, its mean and eigenvalues."""
    rng = np.random.default_rng(seed)
    eig = np.array([50.0, 20, 8, 4, 2, 1, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01])
    basis, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    mean = rng.standard_normal(12) * 3
    x = mean + (rng.standard_normal((rows, 12)) * np.sqrt(eig)) @ basis.T
    return x, mean, eig


def test_the_sampler_reproduces_the_covariance_spectrum_and_the_mean():
    sample, mean, eig = known_gaussian(40_000, seed=1)
    sampler = SpectrumSampler(sample)
    assert sampler.rank == 12 and sampler.dim == 12
    np.testing.assert_allclose(sampler.eigenvalues, eig, rtol=0.05)
    drawn = np.concatenate([sampler.draw(50_000, np.random.default_rng(s)) for s in range(4)])
    assert drawn.dtype == np.float32 and drawn.shape == (200_000, 12)
    drawn64 = drawn.astype(np.float64)
    got = np.linalg.eigvalsh(np.cov(drawn64, rowvar=False))[::-1]
    np.testing.assert_allclose(got, eig, rtol=0.06)
    np.testing.assert_allclose(drawn64.mean(0), mean, atol=0.05)
    # isotropic noise of the same trace would fail: its eigenvalues are all equal
    flat = np.full(12, eig.sum() / 12)
    assert not np.allclose(got, flat, rtol=0.5)


def test_a_low_rank_sample_draws_in_its_own_subspace():
    rng = np.random.default_rng(2)
    sample = rng.standard_normal((5, 3)) @ rng.standard_normal((3, 10))  # rank 3 once centred: <= 3
    sampler = SpectrumSampler(sample)
    assert sampler.rank <= 3
    drawn = sampler.draw(1000, rng).astype(np.float64) - sampler.mean
    residual = drawn - (drawn @ sampler.components.T) @ sampler.components
    assert np.abs(residual).max() < 1e-3 * np.abs(drawn).max()


def test_the_sampler_refuses_a_sample_it_cannot_fit():
    with pytest.raises(ValueError, match="n >= 2"):
        SpectrumSampler(np.ones((1, 4)))


def test_the_random_projection_keeps_inner_products_on_average():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 256))
    r = random_projection(256, 2048, seed=0)
    assert r.shape == (256, 2048)
    exact, projected = x @ x[0], (x @ r) @ (x[0] @ r)
    assert abs(projected[0] - exact[0]) / exact[0] < 0.1


@pytest.mark.parametrize("chunk", [1, 7, 50, 1000])
def test_the_streamed_top_k_equals_brute_force_in_float64(chunk: int):
    rng = np.random.default_rng(4)
    # small integers: every product and sum is exact in float64 whatever BLAS's summation order,
    # so scores and ties compare exactly
    data = rng.integers(-8, 9, size=(1000, 16)).astype(np.float32)
    data[500] = data[20]  # an exact tie: the lower id ranks first
    queries = rng.integers(-8, 9, size=(6, 16)).astype(np.float64)
    queries[0] = data[20]
    top = StreamedTopK(queries, k=25)
    for start in range(0, len(data), chunk):
        top.add(data[start : start + chunk], start)
    scores, ids = top.result()
    brute = queries @ data.astype(np.float64).T
    for q in range(len(queries)):
        expected = np.lexsort((np.arange(len(data)), -brute[q]))[:25]
        np.testing.assert_array_equal(ids[q], expected)
        np.testing.assert_array_equal(scores[q], brute[q, expected])
    first = list(ids[0])
    assert 20 in first and 500 in first and first.index(20) < first.index(500)


def test_the_streamed_top_k_matches_brute_force_on_real_valued_vectors():
    rng = np.random.default_rng(5)
    data = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = rng.standard_normal((4, 32))
    top = StreamedTopK(queries, k=100)
    for start in range(0, len(data), 256):
        top.add(data[start : start + 256], start)
    scores, ids = top.result()
    brute = queries @ data.astype(np.float64).T
    expected = np.argsort(-brute, axis=1)[:, :100]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-12)


def test_the_streamed_top_k_holds_fewer_rows_than_k_until_it_has_seen_k():
    top = StreamedTopK(np.eye(3), k=10)
    top.add(np.eye(3, dtype=np.float32), 100)
    scores, ids = top.result()
    assert ids.shape == (3, 3) and list(ids[1]) == [101, 100, 102]
    assert scores[1, 0] == 1.0
