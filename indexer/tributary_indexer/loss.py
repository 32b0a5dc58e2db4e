"""The attribution loss: a sum of token negative log-likelihoods over target tokens (DESIGN §2).

``L(z) = Σ_{t ∈ T(z)} −log p_θ(y_t | y_<t)``. A *sum*, not a mean, so an example's gradient does
not depend on how many other tokens share its batch, and per-position contributions add up to
the example's gradient exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_example_target_loss(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Per-example summed NLL ``[B]`` of the target tokens.

    Args:
        logits: ``[B, T, V]``; position ``t`` predicts token ``t+1``.
        input_ids: ``[B, T]``.
        target_mask: ``[B, T]`` bool, True where token ``t`` is a target.
    """
    targets = target_mask[:, 1:]  # [B, T-1]: token t+1 is a target
    rows, cols = targets.nonzero(as_tuple=True)  # [N] each
    picked = logits[:, :-1][rows, cols].float()  # [N, V] only the scored positions
    labels = input_ids[:, 1:][rows, cols]  # [N]
    token_nll = F.cross_entropy(picked, labels, reduction="none")  # [N]
    losses = torch.zeros(logits.shape[0], dtype=token_nll.dtype, device=logits.device)
    return losses.index_add(0, rows, token_nll)  # [B]
