"""Hook-projected per-example gradients against plain autograd, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from tributary_indexer.batching import TokenizedExample, collate
from tributary_indexer.gradient_computer import GradientComputer
from tributary_indexer.loss import per_example_target_loss
from tributary_indexer.module_selection import select_modules
from tributary_indexer.projector import LoGraProjector, ProjectionConfig

ATOL = 1e-9


def _examples(vocab: int) -> list[TokenizedExample]:
    gen = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=gen).tolist()

    return [
        TokenizedExample.document(ids(11)),
        TokenizedExample.prompt_response(ids(5), ids(4)),  # prompt masked
        TokenizedExample.document(ids(3)),
        TokenizedExample.prompt_response(ids(9), ids(7)),
        TokenizedExample.document(ids(16)),
    ]


def _oracle(model, modules, projector, example: TokenizedExample) -> torch.Tensor:
    """P_out ∇W P_inᵀ per module from autograd on the example alone (no padding, no hooks).

    GPT-2 ties lm_head to the input embedding; the hooks see the lm_head *use* of the weight only,
    so the oracle unties it (a copy with its own parameter) to get that gradient alone.
    """
    model = copy.deepcopy(model)
    if model.lm_head.weight is model.get_input_embeddings().weight:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    modules = [m.__class__(m.name, model.get_submodule(m.name), m.kind, m.d_in, m.d_out) for m in modules]
    batch = collate([example])
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch.input_ids).logits
    per_example_target_loss(logits, batch.input_ids, batch.target_mask).sum().backward()
    parts = []
    for m, p in zip(modules, projector.projections):
        grad_w = m.module.weight.grad
        if m.kind == "conv1d":  # Conv1D stores [d_in, d_out]; ∇W in the y = W x convention
            grad_w = grad_w.T
        p_out = p.p_out.double() if p.p_out is not None else torch.eye(m.d_out, dtype=torch.float64)
        p_in = p.p_in.double() if p.p_in is not None else torch.eye(m.d_in, dtype=torch.float64)
        parts.append((p_out @ grad_w @ p_in.T).reshape(-1))
    model.zero_grad(set_to_none=True)
    return torch.cat(parts)


@pytest.mark.parametrize("kind", ["random", "identity"])
def test_hook_gradients_equal_autograd_oracle(tiny_model_f64, kind):
    model = tiny_model_f64
    modules = select_modules(model)
    config = ProjectionConfig(rank_in=4, rank_out=3, seed=7)
    projector = LoGraProjector.random(modules, config) if kind == "random" else LoGraProjector.identity(modules)
    examples = _examples(model.config.vocab_size)
    with GradientComputer(model, modules, projector) as computer:
        got = computer.compute(collate(examples, pad_token_id=0))
    assert got.vectors.dtype == torch.float64
    assert got.vectors.shape == (len(examples), projector.dim)
    for row, example in enumerate(examples):
        want = _oracle(model, modules, projector, example)
        torch.testing.assert_close(got.vectors[row], want, atol=ATOL, rtol=1e-7)
    # parameters are restored and no weight gradient was materialised by the hooks
    assert all(p.requires_grad for p in model.parameters())


def test_batching_and_padding_invariance(tiny_model_f64):
    model = tiny_model_f64
    modules = select_modules(model)
    projector = LoGraProjector.random(modules, ProjectionConfig(rank_in=4, rank_out=4, seed=3))
    examples = _examples(model.config.vocab_size)
    with GradientComputer(model, modules, projector) as computer:
        together = computer.compute(collate(examples, pad_token_id=5)).vectors
        alone = torch.cat([computer.compute(collate([e])).vectors for e in examples])
        reordered = computer.compute(collate(examples[::-1], pad_token_id=0)).vectors.flip(0)
    torch.testing.assert_close(together, alone, atol=ATOL, rtol=1e-7)
    torch.testing.assert_close(together, reordered, atol=ATOL, rtol=1e-7)


def test_per_position_terms_sum_to_total_and_padding_is_zero(tiny_model_f64):
    model = tiny_model_f64
    modules = select_modules(model)
    projector = LoGraProjector.random(modules, ProjectionConfig(rank_in=3, rank_out=3, seed=1))
    examples = _examples(model.config.vocab_size)
    batch = collate(examples)
    with GradientComputer(model, modules, projector) as computer:
        got = computer.compute(batch, per_position=True)
    assert got.per_position is not None
    torch.testing.assert_close(got.per_position.sum(dim=1), got.vectors, atol=ATOL, rtol=1e-7)
    pad = batch.attention_mask == 0
    assert torch.count_nonzero(got.per_position[pad]) == 0
    # the last real position predicts nothing, so it has no gradient of its own... only through
    # nothing: causal attention means no later target depends on it
    for row, example in enumerate(examples):
        assert torch.count_nonzero(got.per_position[row, example.n_tokens - 1]) == 0


def test_prompt_mask_only_response_tokens_count(tiny_model_f64):
    """A prompt/response example's gradient equals the gradient of its response NLL only."""
    model = tiny_model_f64
    modules = select_modules(model)
    projector = LoGraProjector.random(modules, ProjectionConfig(rank_in=3, rank_out=3))
    prompt, response = [3, 4, 5, 6, 7], [8, 9, 10]
    pr = TokenizedExample.prompt_response(prompt, response)
    doc = TokenizedExample.document(prompt + response)
    with GradientComputer(model, modules, projector) as computer:
        got = computer.compute(collate([pr, doc]))
    assert not torch.allclose(got.vectors[0], got.vectors[1])
    torch.testing.assert_close(got.vectors[0], _oracle(model, modules, projector, pr), atol=ATOL, rtol=1e-7)
    # loss: response tokens only
    assert got.losses[0] < got.losses[1]


def test_selected_subset_and_lm_head(tiny_model_f64):
    model = tiny_model_f64
    modules = select_modules(model, include=["*mlp*", "lm_head"])
    assert modules[-1].name == "lm_head"
    projector = LoGraProjector.random(modules, ProjectionConfig(rank_in=2, rank_out=5))
    example = _examples(model.config.vocab_size)[0]
    with GradientComputer(model, modules, projector) as computer:
        got = computer.compute(collate([example])).vectors[0]
    torch.testing.assert_close(got, _oracle(model, modules, projector, example), atol=ATOL, rtol=1e-7)


def test_hooks_inert_outside_compute_and_released(tiny_model_f64):
    model = tiny_model_f64
    modules = select_modules(model)
    projector = LoGraProjector.random(modules, ProjectionConfig())
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model(input_ids=ids).logits
    computer = GradientComputer(model, modules, projector)
    during = model(input_ids=ids).logits  # hooks registered but not capturing
    computer.close()
    assert all(len(m.module._forward_hooks) == 0 for m in modules)
    torch.testing.assert_close(before, during)


def test_position_weights_equal_inner_products_of_per_position_terms(tiny_model_f64):
    model = tiny_model_f64
    modules = select_modules(model)
    projector = LoGraProjector.random(modules, ProjectionConfig(rank_in=3, rank_out=4, seed=5))
    examples = _examples(model.config.vocab_size)[:3]
    batch = collate(examples)
    weights = torch.randn(3, 2, projector.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with GradientComputer(model, modules, projector) as computer:
        full = computer.compute(batch, per_position=True)
        dual = computer.compute(batch, position_weights=weights)
    assert dual.position_scores.shape == (3, 2, batch.input_ids.shape[1], len(modules))
    for m, block in enumerate(projector.blocks):
        want = torch.einsum("btd,brd->brt", full.per_position[:, :, block.start : block.stop], weights[:, :, block.start : block.stop])
        torch.testing.assert_close(dual.position_scores[..., m], want, atol=ATOL, rtol=1e-7)
    torch.testing.assert_close(dual.vectors, full.vectors)
