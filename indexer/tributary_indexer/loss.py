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
    batch, width, vocab = logits.shape
    labels = torch.where(target_mask, input_ids, torch.full_like(input_ids, -100))  # [B, T]
    next_labels = F.pad(labels[:, 1:], (0, 1), value=-100)  # [B, T]: what position t predicts
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # the softmax in full precision, as HF's own loss does
    token_nll = F.cross_entropy(
        logits.reshape(batch * width, vocab), next_labels.reshape(-1), ignore_index=-100, reduction="none"
    )  # [B*T], 0 where ignored
    return token_nll.view(batch, width).sum(dim=1)  # [B]
