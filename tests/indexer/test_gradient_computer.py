"""Hook-projected per-example gradients against plain autograd, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from tributary_indexer.data.batching import TokenizedExample, collate
from tributary_indexer.gradients.computer import GradientComputer
from tributary_indexer.gradients.module_selection import select_modules
from tributary_indexer.gradients.objectives import per_example_target_loss
from tributary_indexer.gradients.projector import LoGraProjector, ProjectionConfig

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


def _log_odds_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor
) -> torch.Tensor:
    """−Σ_t log(p_t / (1 − p_t)) written from the probabilities (independent of the library's
    form)."""
    logp = (
        torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    )  # [B, T-1]
    log_odds = logp - torch.log1p(-logp.exp())
    return -(log_odds * target_mask[:, 1:]).sum(dim=1)


def _oracle(
    model, modules, projector, example: TokenizedExample, objective: str = "margin"
) -> torch.Tensor:
    """P_out ∇W P_inᵀ per module from autograd on the example alone (no padding, no hooks).

    GPT-2 ties lm_head to the input embedding; the hooks see the lm_head *use* of the weight only,
    so the oracle unties it (a copy with its own parameter) to get that gradient alone.
    """
    model = copy.deepcopy(model)
    if model.lm_head.weight is model.get_input_embeddings().weight:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    modules = [
        m.__class__(m.name, model.get_submodule(m.name), m.kind, m.d_in, m.d_out) for m in modules
    ]
    batch = collate([example])
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=batch.input_ids).logits
    loss_fn = per_example_target_loss if objective == "nll" else _log_odds_loss
    loss_fn(logits, batch.input_ids, batch.target_mask).sum().backward()
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


@pytest.mark.parametrize("objective", ["margin", "nll"])
@pytest.mark.parametrize("kind", ["random", "identity"])
def test_hook_gradients_equal_autograd_oracle(tiny_model_f64, kind, objective):
    model = tiny_model_f64
    modules = select_modules(model)
    config = ProjectionConfig(rank_in=4, rank_out=3, seed=7)
    projector = (
        LoGraProjector.random(modules, config)
        if kind == "random"
        else LoGraProjector.identity(modules)
    )
    examples = _examples(model.config.vocab_size)
    with GradientComputer(model, modules, projector, objective=objective) as computer:
        got = computer.compute(collate(examples, pad_token_id=0))
    assert got.vectors.dtype == torch.float64
    assert got.vectors.shape == (len(examples), projector.dim)
    for row, example in enumerate(examples):
        want = _oracle(model, modules, projector, example, objective)
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


def _rank3_setup(model, seed: int):
    """Every module of ``model`` at rank 3×3, the test examples and their batch."""
    modules = select_modules(model)
    projector = LoGraProjector.random(modules, ProjectionConfig(rank_in=3, rank_out=3, seed=seed))
    examples = _examples(model.config.vocab_size)
    return modules, projector, examples, collate(examples)


def test_per_position_terms_sum_to_total_and_padding_is_zero(tiny_model_f64):
    model = tiny_model_f64
    modules, projector, examples, batch = _rank3_setup(model, seed=1)
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


def test_selected_positions_are_exactly_those_rows_of_the_per_position_terms(tiny_model_f64):
    """``positions`` returns the per-position terms of the chosen positions only, in row-major
    order."""
    model = tiny_model_f64
    modules, projector, examples, batch = _rank3_setup(model, seed=2)
    emitting = batch.emitting_mask
    for row, example in enumerate(
        examples
    ):  # the batch's mask is each example's emitting positions
        assert emitting[row].nonzero()[:, 0].tolist() == [
            t - 1 for t, target in enumerate(example.target_mask) if target
        ]
    with GradientComputer(model, modules, projector) as computer:
        full = computer.compute(batch, per_position=True)
        picked = computer.compute(batch, positions=emitting)
        assert picked.per_position is None and full.position_terms is None
        assert picked.position_terms is not None and full.per_position is not None
        torch.testing.assert_close(
            picked.position_terms, full.per_position[emitting], atol=0, rtol=0
        )
        torch.testing.assert_close(picked.vectors, full.vectors, atol=0, rtol=0)
        with pytest.raises(ValueError, match="bool mask shaped like the batch"):
            computer.compute(batch, positions=emitting[:, 1:])
        with pytest.raises(ValueError, match="bool mask shaped like the batch"):
            computer.compute(batch, positions=emitting.long())


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
    torch.testing.assert_close(
        got.vectors[0], _oracle(model, modules, projector, pr), atol=ATOL, rtol=1e-7
    )
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
    torch.testing.assert_close(
        got, _oracle(model, modules, projector, example), atol=ATOL, rtol=1e-7
    )


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
    weights = torch.randn(
        3, 2, projector.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    with GradientComputer(model, modules, projector) as computer:
        full = computer.compute(batch, per_position=True)
        dual = computer.compute(batch, position_weights=weights)
    assert dual.position_scores.shape == (3, 2, batch.input_ids.shape[1], len(modules))
    for m, block in enumerate(projector.blocks):
        want = torch.einsum(
            "btd,brd->brt",
            full.per_position[:, :, block.start : block.stop],
            weights[:, :, block.start : block.stop],
        )
        torch.testing.assert_close(dual.position_scores[..., m], want, atol=ATOL, rtol=1e-7)
    torch.testing.assert_close(dual.vectors, full.vectors)


def test_nll_gradient_is_margin_gradient_scaled_by_one_minus_p(tiny_model_f64):
    """``∇(−log p) = (1 − p) ∇(−log p/(1−p))`` for one target token: the NLL gradient of a token the
    model is sure of vanishes, the log-odds one keeps its size (why ``margin`` is the default)."""
    model = tiny_model_f64
    modules = select_modules(model)
    projector = LoGraProjector.random(modules, ProjectionConfig(rank_in=3, rank_out=3, seed=2))
    example = TokenizedExample.prompt_response([3, 4, 5, 6], [9])
    batch = collate([example])
    with torch.no_grad():
        logits = model(
            input_ids=batch.input_ids, attention_mask=torch.ones_like(batch.input_ids)
        ).logits
        p = torch.softmax(logits[0, -2], dim=-1)[9]  # the response token's probability
    with GradientComputer(model, modules, projector, objective="margin") as computer:
        margin = computer.compute(batch)
    with GradientComputer(model, modules, projector, objective="nll") as computer:
        nll = computer.compute(batch)
    # two separate backward passes; Llama's rotary embedding runs in float32, so ~1e-7 round-off
    torch.testing.assert_close(nll.vectors[0], (1 - p) * margin.vectors[0], atol=1e-6, rtol=1e-5)
    # both report the NLL as the example's loss
    torch.testing.assert_close(margin.losses, nll.losses)
    torch.testing.assert_close(nll.losses[0], -torch.log(p))


def test_unknown_objective_is_refused(tiny_model_f64):
    modules = select_modules(tiny_model_f64)
    with pytest.raises(ValueError, match="choose from"):
        GradientComputer(tiny_model_f64, modules, LoGraProjector.identity(modules), objective="mse")
