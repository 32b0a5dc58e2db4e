"""The attribution objectives: what is differentiated for each example (DESIGN §2).

Both are sums over the target tokens ``T(z)`` (not means), so an example's gradient does not
depend on how many other tokens share its batch, and per-position contributions add up to the
example's gradient exactly.

``nll``
    ``L(z) = Σ_t −log p_t`` with ``p_t = p_θ(y_t | y_<t)``: the training loss itself.
``margin`` (default)
    ``L(z) = −Σ_t f_t`` with the log-odds ``f_t = log(p_t / (1 − p_t)) = ℓ_{y_t} − logsumexp_{v≠y_t} ℓ_v``
    (``ℓ`` the logits), TRAK's model output function. Since ``p_t = sigmoid(f_t)``,
    ``∇(−log p_t) = −(1 − p_t) ∇f_t``: the NLL gradient of a token the model has memorised
    (``p_t → 1``) vanishes, while its log-odds gradient keeps its size and points at "make this
    token beat its competitors". Attribution of a trained LLM is mostly about memorised text
    (facts, backdoors, copied passages), and with ``nll`` exactly those examples drop out of
    the ranking; on the demo benchmark ``margin`` raised fact-tracing recall@10 from 0.55 (NLL at
    its best setting) to 0.985 and backdoor AUPRC from 0.28 to 0.98 (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("margin", "nll")


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


def _target_log_odds(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, T] log-odds f_t of the token position t predicts, [B, T] mask of target positions)``."""
    next_ids = F.pad(input_ids[:, 1:], (0, 1), value=0)  # [B, T]: the token position t predicts
    next_mask = F.pad(target_mask[:, 1:], (0, 1), value=False)  # [B, T]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    target_logit = logits.gather(-1, next_ids[..., None]).squeeze(-1)  # [B, T]
    others = logits.scatter(-1, next_ids[..., None], float("-inf"))  # [B, T, V], target left out
    return target_logit - torch.logsumexp(others, dim=-1), next_mask  # [B, T], [B, T]


def per_example_margin_loss(logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Per-example ``−Σ_t log(p_t / (1 − p_t))`` ``[B]`` over the target tokens (arguments as above)."""
    return objective_losses("margin", logits, input_ids, target_mask)[0]


def objective_losses(
    objective: str, logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B] value of objective to differentiate, [B] summed target NLL to report)``.

    For ``margin`` the NLL comes from the same log-odds (``p = σ(f)``, so ``−log p = softplus(−f)``):
    one pass over the vocabulary, not two.
    """
    if objective == "nll":
        nll = per_example_target_loss(logits, input_ids, target_mask)
        return nll, nll
    if objective == "margin":
        log_odds, mask = _target_log_odds(logits, input_ids, target_mask)
        zeros = torch.zeros_like(log_odds)
        margin = torch.where(mask, -log_odds, zeros).sum(dim=1)  # [B]
        nll = torch.where(mask, F.softplus(-log_odds.detach()), zeros).sum(dim=1)  # [B]
        return margin, nll
    raise ValueError(f"unknown objective {objective!r}; choose from {list(OBJECTIVES)}")
