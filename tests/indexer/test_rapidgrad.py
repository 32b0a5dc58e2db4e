"""RapidGrad: unbiased inner products (seeded statistical check), normalisation, per-position."""

from __future__ import annotations

import pytest
import torch
from tributary_indexer.gradients.projector import Block
from tributary_indexer.gradients.rapidgrad import RapidGradCompressor, rapidgrad_dim

BLOCKS = [Block("a", 0, 300), Block("b", 300, 1000)]


def test_inner_products_preserved_in_expectation():
    """Mean over 400 seeds of ⟨C a, C b⟩ is within 4 standard errors of ⟨a, b⟩.

    Per seed, ⟨C a, C b⟩ - ⟨a, b⟩ has mean 0 over the random signs; the tolerance is computed from
    the observed spread, so the check is a z-test at ~6e-5 false-failure rate, seeded
    (deterministic).
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1000, generator=gen, dtype=torch.float64)
    b = 0.6 * a + 0.8 * torch.randn(1000, generator=gen, dtype=torch.float64)
    exact = float(a @ b)
    samples = []
    for seed in range(400):
        c = RapidGradCompressor(BLOCKS, k=100, seed=seed, normalize_layers=False)
        ca, cb = c.compress(torch.stack([a, b]))
        samples.append(float(ca @ cb))
    s = torch.tensor(samples)
    stderr = float(s.std() / len(samples) ** 0.5)
    assert abs(float(s.mean()) - exact) < 4 * stderr
    assert stderr < 0.05 * abs(exact)  # and the estimate is informative, not just noisy


def test_layer_normalisation_and_shapes():
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(4, 1000, generator=gen, dtype=torch.float64)
    c = RapidGradCompressor(BLOCKS, k=64, seed=3)
    out = c.compress(g)
    assert out.shape == (4, 64)
    # normalising first = compressing the block-normalised vector without normalisation
    normed = g.clone()
    for blk in BLOCKS:
        normed[:, blk.start : blk.stop] /= normed[:, blk.start : blk.stop].norm(dim=1, keepdim=True)
    plain = RapidGradCompressor(BLOCKS, k=64, seed=3, normalize_layers=False)
    torch.testing.assert_close(out, plain.compress(normed))
    # K not dividing D pads with zeros; deterministic for a seed
    c7 = RapidGradCompressor(BLOCKS, k=7, seed=9)
    torch.testing.assert_close(c7.compress(g), RapidGradCompressor(BLOCKS, k=7, seed=9).compress(g))
    with pytest.raises(ValueError, match="K must be"):
        RapidGradCompressor(BLOCKS, k=0)


def test_per_position_terms_share_the_totals_normalisation():
    gen = torch.Generator().manual_seed(2)
    per_pos = torch.randn(3, 6, 1000, generator=gen, dtype=torch.float64)
    totals = per_pos.sum(1)
    c = RapidGradCompressor(BLOCKS, k=50, seed=0)
    compressed_terms = c.compress(per_pos, scales=c.layer_scales(totals))
    torch.testing.assert_close(compressed_terms.sum(1), c.compress(totals))
    with pytest.raises(ValueError, match="scales of their totals"):
        c.compress(per_pos)


def test_transpose_is_the_adjoint_of_the_sign_sum_projection():
    gen = torch.Generator().manual_seed(4)
    g = torch.randn(3, 1000, generator=gen, dtype=torch.float64)
    u = torch.randn(3, 70, generator=gen, dtype=torch.float64)
    c = RapidGradCompressor(BLOCKS, k=70, seed=1, normalize_layers=False)
    torch.testing.assert_close((c.compress(g) * u).sum(-1), (g * c.transpose(u)).sum(-1))


@pytest.mark.parametrize("k", [64, 7])
def test_compress_equals_its_dense_matrix(k):
    """compress(g) = (g scaled per block) Rᵀ with R built entry by entry from the definition:
    output j // group of the permuted, sign-flipped coordinate j, where coordinate j is
    g[perm[j]]."""
    c = RapidGradCompressor(BLOCKS, k=k, seed=5)
    R = torch.zeros(k, 1000, dtype=torch.float64)
    for j, i in enumerate(c.permutation.tolist()):
        R[j // c.group, i] += float(c.signs[j])
    g = torch.randn(3, 1000, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g[2, :300] = 0  # an all-zero block scales to 0, not NaN
    norms = torch.stack([g[:, b.start : b.stop].norm(dim=1) for b in BLOCKS], 1)  # [3, 2]
    scaled = torch.cat(
        [
            g[:, b.start : b.stop] / norms[:, n : n + 1].clamp_min(1e-300)
            for n, b in enumerate(BLOCKS)
        ],
        1,
    )
    torch.testing.assert_close(c.compress(g), scaled @ R.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        c.layer_scales(g),
        torch.where(norms > 0, 1 / norms.clamp_min(1e-300), torch.zeros_like(norms)),
        rtol=1e-12,
        atol=0,
    )


def test_k_is_capped_at_the_input_dimension_where_it_is_a_signed_permutation():
    assert (
        rapidgrad_dim(None, 100) is None
        and rapidgrad_dim(64, 100) == 64
        and rapidgrad_dim(4096, 100) == 100
    )
    gen = torch.Generator().manual_seed(3)
    blocks = [Block("a", 0, 30), Block("b", 30, 100)]
    g = torch.randn(5, 100, generator=gen, dtype=torch.float64)
    compressor = RapidGradCompressor(
        blocks, rapidgrad_dim(4096, 100), seed=1, normalize_layers=False
    )
    c = compressor.compress(g)  # [5, 100]
    assert torch.allclose(c @ c.T, g @ g.T, atol=1e-12)  # an orthogonal map: exact inner products
    assert sorted(c[0].abs().tolist()) == pytest.approx(sorted(g[0].abs().tolist()))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [7, 50, 1000])
def test_cpu_scatter_path_equals_the_gather_path_cuda_takes(normalize, k):
    """compress() scatter-adds on CPU and gathers on CUDA; both are the same linear map."""
    gen = torch.Generator().manual_seed(3)
    c = RapidGradCompressor(BLOCKS, k=k, seed=1, normalize_layers=normalize)
    g = torch.randn(4, 1000, generator=gen, dtype=torch.float64)
    terms = torch.randn(4, 5, 1000, generator=gen, dtype=torch.float64)
    scales = c.layer_scales(g)
    torch.testing.assert_close(c._scatter(g, scales), c._gather(g, scales), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        c._scatter(terms, scales), c._gather(terms, scales), rtol=1e-12, atol=1e-12
    )
    assert c._scatter(g.float(), scales).dtype == torch.float32
