"""Fisher, damping, preconditioning and score variants against dense float64 definitions."""

from __future__ import annotations

import pytest
import torch
from tributary_indexer.gradients.projector import Block
from tributary_indexer.hessian.fisher import FisherAccumulator
from tributary_indexer.hessian.preconditioner import Preconditioner
from tributary_indexer.hessian.scores import SCORE_VARIANTS, ScoreTransform

BLOCKS = [Block("a", 0, 6), Block("b", 6, 10), Block("c", 10, 13)]


def _vectors(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.1, 3.0, 13, dtype=torch.float64)
    return torch.randn(n, 13, generator=gen, dtype=torch.float64) * scales


def _dense_h(g: torch.Tensor, alpha: float) -> torch.Tensor:
    """Block-diagonal F + λI from the definition."""
    h = torch.zeros(13, 13, dtype=torch.float64)
    for b in BLOCKS:
        gb = g[:, b.start : b.stop]
        f = gb.T @ gb / g.shape[0]
        lam = alpha * torch.linalg.eigvalsh(f).mean()
        h[b.start : b.stop, b.start : b.stop] = f + lam * torch.eye(b.size, dtype=torch.float64)
    return h


def test_fisher_streaming_and_merge_equal_dense():
    g = _vectors(50)
    whole = FisherAccumulator(BLOCKS)
    whole.update(g)
    parts = [FisherAccumulator(BLOCKS) for _ in range(3)]
    for i, chunk in enumerate(torch.split(g, [7, 30, 13])):
        parts[i].update(
            chunk.float() if i == 0 else chunk
        )  # float32 input is accumulated in float64
    merged = parts[0]
    merged.merge(parts[1])
    merged.merge(parts[2])
    assert merged.count == whole.count == 50
    for b, f_whole, f_merged in zip(BLOCKS, whole.means(), merged.means()):
        gb = g[:, b.start : b.stop]
        torch.testing.assert_close(f_whole, gb.T @ gb / 50)
        torch.testing.assert_close(f_merged, f_whole, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        whole.update(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="no example"):
        FisherAccumulator(BLOCKS).means()


def test_fisher_save_load(tmp_path):
    acc = FisherAccumulator(BLOCKS)
    acc.update(_vectors(9))
    acc.save(tmp_path / "fisher.safetensors")
    back = FisherAccumulator.load(tmp_path / "fisher.safetensors")
    assert back.count == 9 and back.blocks == BLOCKS
    for x, y in zip(acc.sums, back.sums):
        assert torch.equal(x, y)


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 1.0])
def test_preconditioning_equals_dense_solve(alpha):
    g = _vectors(40)
    acc = FisherAccumulator(BLOCKS)
    acc.update(g)
    pre = Preconditioner.from_fisher(acc, alpha)
    h = _dense_h(g, alpha)
    q = _vectors(3, seed=5)
    torch.testing.assert_close(pre.inverse(q), torch.linalg.solve(h, q.T).T, atol=1e-10, rtol=1e-8)
    evals, evecs = torch.linalg.eigh(h)
    h_inv_sqrt = evecs @ torch.diag(evals**-0.5) @ evecs.T
    torch.testing.assert_close(pre.inverse_sqrt(q), q @ h_inv_sqrt.T, atol=1e-10, rtol=1e-8)
    want_self = torch.einsum("nd,nd->n", q, torch.linalg.solve(h, q.T).T)
    torch.testing.assert_close(pre.self_influence(q), want_self, atol=1e-10, rtol=1e-8)
    for b, lam in zip(BLOCKS, pre.lambdas):
        gb = g[:, b.start : b.stop]
        assert lam == pytest.approx(
            alpha * float(torch.linalg.eigvalsh(gb.T @ gb / 40).mean()), rel=1e-9
        )


def test_preconditioner_save_load_and_bad_alpha(tmp_path):
    acc = FisherAccumulator(BLOCKS)
    acc.update(_vectors(20))
    pre = Preconditioner.from_fisher(acc, 0.01)
    pre.save(tmp_path / "hessian.safetensors")
    back = Preconditioner.load(tmp_path / "hessian.safetensors")
    q = _vectors(2, seed=9)
    torch.testing.assert_close(back.inverse(q), pre.inverse(q))
    with pytest.raises(ValueError, match="alpha must be > 0"):
        Preconditioner.from_fisher(acc, 0.0)


def test_an_index_written_with_eigendecomposed_blocks_still_loads(tmp_path):
    """Before the Cholesky form, hessian.safetensors held ``F = V Λ Vᵀ`` per block and the λs."""
    import json

    from safetensors.torch import save_file

    g = _vectors(25, seed=4)
    acc = FisherAccumulator(BLOCKS)
    acc.update(g)
    alpha = 0.1
    tensors, lambdas = {}, []
    for i, f in enumerate(acc.means()):
        e, v = torch.linalg.eigh((f + f.T) / 2)
        tensors[f"eigenvalues.{i}"], tensors[f"eigenvectors.{i}"] = (
            e.clamp_min(0).contiguous(),
            v.contiguous(),
        )
        lambdas.append(alpha * float(e.clamp_min(0).mean()))
    meta = {
        "blocks": [[b.name, b.start, b.stop] for b in BLOCKS],
        "lambdas": lambdas,
        "alpha": alpha,
    }
    save_file(
        tensors,
        str(tmp_path / "old.safetensors"),
        metadata={"tributary.preconditioner": json.dumps(meta)},
    )
    old = Preconditioner.load(tmp_path / "old.safetensors")
    q = _vectors(3, seed=6)
    h = _dense_h(g, alpha)
    torch.testing.assert_close(old.inverse(q), torch.linalg.solve(h, q.T).T, atol=1e-10, rtol=1e-8)
    assert old.lambdas == pytest.approx(Preconditioner.from_fisher(acc, alpha).lambdas, rel=1e-9)


def test_blocks_are_copied_to_a_query_device_once_not_per_query():
    """A GPU query must not re-upload a 134 MB block each time; ``meta`` stands in for CUDA here."""
    acc = FisherAccumulator(BLOCKS)
    acc.update(_vectors(20))
    pre = Preconditioner.from_fisher(acc, 0.1)
    q = _vectors(2, seed=3).to("meta")
    first, second = pre.inverse(q), pre.inverse(q)
    assert first.device.type == second.device.type == "meta" and first.shape == q.shape
    copies = pre._on_device[("inverse", torch.device("meta"))]
    pre.inverse(q)
    assert pre._on_device[("inverse", torch.device("meta"))] is copies and len(pre._on_device) == 1
    assert (
        pre.inverse(_vectors(1)).device.type == "cpu" and len(pre._on_device) == 1
    )  # CPU uses the originals


def test_a_zero_fisher_block_is_damped_by_alpha_itself():
    acc = FisherAccumulator(BLOCKS)
    acc.update(torch.zeros(4, BLOCKS[-1].stop, dtype=torch.float64))
    pre = Preconditioner.from_fisher(acc, 0.5)
    q = _vectors(2, seed=8)
    torch.testing.assert_close(pre.inverse(q), q / 0.5)
    torch.testing.assert_close(pre.inverse_sqrt(q), q / 0.5**0.5)


def test_score_variants_match_definitions():
    train, query = _vectors(30, seed=1), _vectors(4, seed=2)
    acc = FisherAccumulator(BLOCKS)
    acc.update(train)
    alpha = 0.05
    pre = Preconditioner.from_fisher(acc, alpha)
    h = _dense_h(train, alpha)
    h_inv = torch.linalg.inv(h)
    evals, evecs = torch.linalg.eigh(h)
    h_is = evecs @ torch.diag(evals**-0.5) @ evecs.T
    want = {
        "influence": train @ h_inv @ query.T,
        "relatif": (train @ h_inv @ query.T)
        / torch.sqrt(torch.einsum("nd,de,ne->n", train, h_inv, train))[:, None],
        "cosine": torch.nn.functional.normalize(train @ h_is, dim=1)
        @ torch.nn.functional.normalize(query @ h_is, dim=1).T,
        "grad_dot": train @ query.T,
    }
    assert set(want) == set(SCORE_VARIANTS)
    for variant in SCORE_VARIANTS:
        transform = ScoreTransform(variant, pre)
        stored, _ = transform.train(train)
        q, _ = transform.query(query)
        torch.testing.assert_close(stored @ q.T, want[variant], atol=1e-9, rtol=1e-8, msg=variant)
    cos_stored, _ = ScoreTransform("cosine", pre).train(train)
    assert (cos_stored.norm(dim=1) - 1).abs().max() < 1e-12


@pytest.mark.parametrize("variant", SCORE_VARIANTS)
def test_per_position_terms_transform_linearly(variant):
    gen = torch.Generator().manual_seed(3)
    per_pos = torch.randn(3, 5, 13, generator=gen, dtype=torch.float64)  # [N, T, D]
    totals = per_pos.sum(1)
    acc = FisherAccumulator(BLOCKS)
    acc.update(_vectors(25))
    transform = ScoreTransform(variant, Preconditioner.from_fisher(acc, 0.1))
    for side in (transform.train, transform.query):
        total_out, pp_out = side(totals, per_pos)
        torch.testing.assert_close(pp_out.sum(1), total_out, atol=1e-10, rtol=1e-9)


def test_zero_gradient_scores_zero_and_errors():
    acc = FisherAccumulator(BLOCKS)
    acc.update(_vectors(10))
    pre = Preconditioner.from_fisher(acc, 0.1)
    for variant in SCORE_VARIANTS:
        stored, _ = ScoreTransform(variant, pre).train(torch.zeros(2, 13))
        assert torch.count_nonzero(stored) == 0 and torch.isfinite(stored).all()
    with pytest.raises(ValueError, match="unknown score variant"):
        ScoreTransform("dot", pre)
    with pytest.raises(ValueError, match="needs a preconditioner"):
        ScoreTransform("relatif", None)


# ---------------------------------------------------------------- few examples: low-rank Fisher
WIDE = [Block("a", 0, 16), Block("b", 16, 28)]  # max_rows = 12 // 2 = 6


def _wide(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 28, generator=gen, dtype=torch.float64) * torch.linspace(
        0.2, 2.0, 28, dtype=torch.float64
    )


def _dense_inverse(g: torch.Tensor, blocks: list[Block], alpha: float) -> list[torch.Tensor]:
    out = []
    for b in blocks:
        gb = g[:, b.start : b.stop]
        f = gb.T @ gb / g.shape[0]
        out.append(
            torch.linalg.inv(
                f + alpha * torch.trace(f) / b.size * torch.eye(b.size, dtype=torch.float64)
            )
        )
    return out


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 16.0])
def test_few_examples_keep_rows_and_invert_through_the_gram_matrix(alpha):
    g = _wide(5)
    acc = FisherAccumulator(WIDE)
    assert acc.max_rows == 6
    acc.update(g[:2])
    acc.update(g[2:])
    rows = acc.low_rank_rows()
    assert rows is not None and [r.shape for r in rows] == [(5, 16), (5, 12)]
    pre = Preconditioner.from_fisher(acc, alpha)
    dense = FisherAccumulator(WIDE, max_rows=0)
    dense.update(g)
    assert dense.low_rank_rows() is None
    pre_dense = Preconditioner.from_fisher(dense, alpha)
    for want, got, got_dense in zip(
        _dense_inverse(g, WIDE, alpha), pre.inverses, pre_dense.inverses
    ):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(got, got_dense, atol=1e-9, rtol=1e-9)
    assert pre.lambdas == pytest.approx(pre_dense.lambdas, rel=1e-12)
    q = _wide(3, seed=7)
    torch.testing.assert_close(pre.inverse_sqrt(q), pre_dense.inverse_sqrt(q), atol=1e-9, rtol=1e-8)
    for x, y in zip(acc.sums, dense.sums):  # the dense sums are the same outer products
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


def test_rows_fold_into_dense_sums_past_the_limit_and_on_merge():
    g = _wide(9, seed=2)
    acc = FisherAccumulator(WIDE)
    acc.update(g[:4])
    acc.update(g[4:])  # 9 > 6 rows: folded once, then dense
    assert acc.low_rank_rows() is None and acc.count == 9
    for b, f in zip(WIDE, acc.means()):
        gb = g[:, b.start : b.stop]
        torch.testing.assert_close(f, gb.T @ gb / 9)
    small, other = FisherAccumulator(WIDE), FisherAccumulator(WIDE)
    small.update(g[:2])
    other.update(g[2:5])
    small.merge(other)  # 5 rows: still low-rank
    assert small.low_rank_rows() is not None and small.count == 5
    big = FisherAccumulator(WIDE)
    big.update(g[5:9])
    small.merge(big)  # 9 rows: dense
    assert small.low_rank_rows() is None
    for x, y in zip(small.means(), acc.means()):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


def test_kept_rows_never_alias_the_callers_buffer_and_save_as_dense_sums(tmp_path):
    buffer = _wide(3, seed=4)
    g = buffer.clone()
    acc = FisherAccumulator(WIDE)
    acc.update(buffer)
    buffer.zero_()  # a caller may reuse its batch buffer
    rows = acc.low_rank_rows()
    assert rows is not None and torch.equal(torch.cat(rows, dim=1), g)
    acc.save(tmp_path / "fisher.safetensors")
    back = FisherAccumulator.load(tmp_path / "fisher.safetensors")
    assert back.count == 3 and back.low_rank_rows() is None
    for b, s in zip(WIDE, back.sums):
        gb = g[:, b.start : b.stop]
        torch.testing.assert_close(s, gb.T @ gb, atol=1e-12, rtol=1e-12)
