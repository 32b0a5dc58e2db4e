"""Projector init, persistence, and the PCA statistics it is built from."""

from __future__ import annotations

import pytest
import torch
from tributary_indexer.data.batching import TokenizedExample, collate
from tributary_indexer.errors import ModuleSelectionError
from tributary_indexer.gradients.module_selection import select_modules
from tributary_indexer.gradients.projector import LoGraProjector, ProjectionConfig
from tributary_indexer.hessian.kronecker_statistics import estimate_covariances

from tests.conftest import tiny_gpt2, tiny_llama


def test_module_selection_types_patterns_and_errors():
    gpt2 = tiny_gpt2()
    names = [m.name for m in select_modules(gpt2)]
    assert names[-1] == "lm_head" and "transformer.h.0.attn.c_attn" in names
    kinds = {m.name: m.kind for m in select_modules(gpt2)}
    assert kinds["transformer.h.0.attn.c_attn"] == "conv1d" and kinds["lm_head"] == "linear"
    c_attn = next(m for m in select_modules(gpt2) if m.name.endswith("h.0.attn.c_attn"))
    assert (c_attn.d_in, c_attn.d_out) == (24, 72)
    assert [m.name for m in select_modules(gpt2, exclude=["lm_head"])][
        -1
    ] == "transformer.h.1.mlp.c_proj"
    assert all(m.kind == "linear" for m in select_modules(tiny_llama(), include=["*.mlp.*"]))
    with pytest.raises(ModuleSelectionError, match="matches no trackable module"):
        select_modules(gpt2, include=["*.q_proj"])
    with pytest.raises(ModuleSelectionError, match="unknown module types"):
        select_modules(gpt2, types=["embedding"])
    with pytest.raises(ModuleSelectionError, match="leave no module"):
        select_modules(gpt2, include=["lm_head"], exclude=["lm_head"])


def test_random_projection_is_seeded_scaled_and_clamped():
    modules = select_modules(tiny_llama())
    config = ProjectionConfig(rank_in=8, rank_out=8, seed=11, overrides={"lm_head": (4, 200)})
    a, b = LoGraProjector.random(modules, config), LoGraProjector.random(modules, config)
    assert a.fingerprint() == b.fingerprint()
    assert (
        LoGraProjector.random(
            modules, ProjectionConfig(rank_in=8, rank_out=8, seed=12)
        ).fingerprint()
        != a.fingerprint()
    )
    head = a.projections[-1]
    assert (head.k_in, head.k_out) == (4, 101)  # rank_out clamped to the vocabulary size
    assert a.dim == sum(p.k_in * p.k_out for p in a.projections) == a.blocks[-1].stop
    # JL scaling: E‖P v‖² = ‖v‖² (average over the modules' 8-row projections)
    big = LoGraProjector.random(
        select_modules(tiny_gpt2()), ProjectionConfig(rank_in=24, rank_out=24)
    )
    ratios = [
        float((p.p_in.double().T @ p.p_in.double()).trace() / p.d_in) for p in big.projections
    ]
    assert abs(sum(ratios) / len(ratios) - 1.0) < 0.1


def test_save_load_round_trip(tmp_path):
    modules = select_modules(tiny_gpt2())
    proj = LoGraProjector.random(modules, ProjectionConfig(rank_in=3, rank_out=5, seed=2))
    proj.save(tmp_path / "projector.safetensors")
    loaded = LoGraProjector.load(tmp_path / "projector.safetensors")
    assert loaded.fingerprint() == proj.fingerprint()
    assert loaded.describe() == proj.describe()
    ident = LoGraProjector.identity(modules)
    ident.save(tmp_path / "identity.safetensors")
    assert LoGraProjector.load(tmp_path / "identity.safetensors").dim == ident.dim
    (tmp_path / "bogus.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="(?i)header|invalid|error"):  # safetensors' own parse error
        LoGraProjector.load(tmp_path / "bogus.safetensors")


def test_projector_refuses_other_modules():
    proj = LoGraProjector.random(select_modules(tiny_gpt2()), ProjectionConfig())
    with pytest.raises(ModuleSelectionError, match="differ from the projector"):
        proj.check_modules(select_modules(tiny_llama()))


def _covariance_oracle(model, module_name, examples):
    """E[x xᵀ] and E[δ δᵀ] for one module by explicit capture on each example alone."""
    module = model.get_submodule(module_name)
    xs, ds = [], []
    for ex in examples:
        batch = collate([ex])
        store = {}

        def fwd(mod, inp, out, store=store):
            store["x"] = inp[0].detach()
            out.register_hook(lambda g, store=store: store.__setitem__("d", g.detach()))

        h = module.register_forward_hook(fwd)
        from tributary_indexer.gradients.objectives import per_example_margin_loss

        logits = model(input_ids=batch.input_ids).logits
        per_example_margin_loss(logits, batch.input_ids, batch.target_mask).sum().backward()
        h.remove()
        xs.append(store["x"][0])
        ds.append(store["d"][0])
    x, d = torch.cat(xs), torch.cat(ds)
    model.zero_grad(set_to_none=True)
    return x.T @ x / x.shape[0], d.T @ d / d.shape[0]


def test_kronecker_statistics_and_pca_init():
    model = tiny_llama(dtype=torch.float64)
    modules = select_modules(model)
    gen = torch.Generator().manual_seed(0)
    examples = [
        TokenizedExample.document(torch.randint(1, 100, (n,), generator=gen).tolist())
        for n in (9, 5, 12, 7)
    ]
    batches = [collate(examples[:2], pad_token_id=3), collate(examples[2:], pad_token_id=0)]
    covs = estimate_covariances(model, modules, batches, max_dim=64)
    a, s = _covariance_oracle(model, "model.layers.1.mlp.down_proj", examples)
    got_a, got_s = covs["model.layers.1.mlp.down_proj"]
    torch.testing.assert_close(got_a, a, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(got_s, s, atol=1e-10, rtol=1e-8)
    assert covs["lm_head"][1] is None  # vocabulary (101) wider than max_dim: not estimated
    proj = LoGraProjector.pca(modules, ProjectionConfig(kind="pca", rank_in=4, rank_out=3), covs)
    down = next(p for p in proj.projections if p.name == "model.layers.1.mlp.down_proj")
    evals, evecs = torch.linalg.eigh(a)
    top = evecs[:, -4:].T.float()  # leading eigenvectors, up to order and sign
    overlap = (down.p_in @ top.T).abs()  # rows orthonormal, spanning the same subspace
    torch.testing.assert_close(overlap.sum(0), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(down.p_in @ down.p_in.T, torch.eye(4), atol=1e-5, rtol=0)
    # the lm_head output side fell back to the seeded random projection
    rnd = LoGraProjector.random(modules, ProjectionConfig(rank_in=4, rank_out=3))
    torch.testing.assert_close(proj.projections[-1].p_out, rnd.projections[-1].p_out)


def test_module_presets_and_fallback(caplog):
    from tributary_indexer.gradients.module_selection import preset_modules, resolve_modules

    gpt2 = tiny_gpt2()
    names = [m.name for m in preset_modules(gpt2, "mlp+output")]
    assert names == [n for n in (m.name for m in select_modules(gpt2)) if ".mlp." in n] + [
        "lm_head"
    ]
    llama = [m.name for m in preset_modules(tiny_llama(), "mlp+output")]
    assert (
        llama[-1] == "lm_head" and all(".mlp." in n for n in llama[:-1]) and len(llama) == 1 + 3 * 2
    )
    assert len(preset_modules(gpt2, "all")) == len(select_modules(gpt2))
    # patterns override the preset; exclude applies to either
    assert [m.name for m in resolve_modules(gpt2, ["lm_head"], None, "mlp+output")] == ["lm_head"]
    assert "lm_head" not in [m.name for m in resolve_modules(gpt2, None, ["lm_head"], "mlp+output")]
    with pytest.raises(ModuleSelectionError, match="choose from"):
        preset_modules(gpt2, "attention")
    # a model without *mlp* modules falls back to every linear module, and says so
    renamed = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with caplog.at_level("WARNING"):
        assert len(preset_modules(renamed, "mlp+output")) == 2
    assert "no module named *mlp*" in caplog.text
