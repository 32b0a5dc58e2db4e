"""The objectives' own arithmetic: the one-buffer log-odds against plain autograd in float64."""

from __future__ import annotations

import pytest
import torch
from tributary_indexer.gradients.objectives import _target_log_odds, objective_losses


def _plain_log_odds(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``ℓ_y − logsumexp_{v≠y} ℓ_v`` written with autograd-tracked ops only (the oracle)."""
    others = logits.scatter(-1, targets[..., None], float("-inf"))
    return logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(others, dim=-1)


def test_log_odds_value_and_gradient_equal_plain_autograd():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 17, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 17, (3, 5))
    mask = torch.rand(3, 5) > 0.3
    weights = torch.randn(3, 5, dtype=torch.float64)
    ours, next_mask = _target_log_odds(logits, ids, mask)
    (grad_ours,) = torch.autograd.grad((ours * weights * next_mask).sum(), logits)
    next_ids = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=0)
    oracle = _plain_log_odds(logits, next_ids)
    (grad_oracle,) = torch.autograd.grad((oracle * weights * next_mask).sum(), logits)
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_ours, grad_oracle, rtol=0, atol=1e-12)


def test_memorised_token_keeps_exact_log_odds_and_gradient_in_float32():
    """``p_y = 1 − 1e-12``: ``Σ_v e_v − e_y`` would cancel to garbage; the direct sum stays
    exact."""
    logits64 = torch.zeros(1, 2, 9, dtype=torch.float64)
    logits64[0, 0, 4] = 30.0  # position 0 predicts token 4 with p ≈ 1 − 8e-13
    ids = torch.tensor([[0, 4]])
    mask = torch.tensor([[False, True]])
    logits32 = logits64.float().requires_grad_(True)
    margin, nll = objective_losses("margin", logits32, ids, mask)
    margin.sum().backward()
    assert margin.item() == pytest.approx(-(30.0 - torch.log(torch.tensor(8.0)).item()), rel=1e-6)
    assert 0 < nll.item() < 1e-11  # −log p = softplus(−f), not rounded to zero or negative
    expected = torch.full((9,), 1 / 8, dtype=torch.float32)  # −∂f/∂ℓ_v = softmax over v ≠ y
    expected[4] = -1.0
    torch.testing.assert_close(logits32.grad[0, 0], expected)
    assert logits32.grad[0, 1].abs().sum() == 0  # the last position predicts nothing


def test_log_odds_backward_runs_once():
    logits = torch.randn(1, 3, 6, requires_grad=True)
    margin, _ = objective_losses(
        "margin", logits, torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.bool)
    )
    margin.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph is not supported"):
        margin.sum().backward()
