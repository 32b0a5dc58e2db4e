"""The attribution objectives: what is differentiated for each example.

Both are sums over the target tokens ``T(z)`` (not means), so an example's gradient does not
depend on how many other tokens share its batch, and per-position contributions add up to the
example's gradient exactly.

``nll``
    ``L(z) = Σ_t −log p_t`` with ``p_t = p_θ(y_t | y_<t)``: the training loss itself.
``margin`` (default)
    ``L(z) = −Σ_t f_t`` with the log-odds
    ``f_t = log(p_t / (1 − p_t)) = ℓ_{y_t} − logsumexp_{v≠y_t} ℓ_v`` (``ℓ`` the logits), TRAK's
    model output function. Since ``p_t = sigmoid(f_t)``, ``∇(−log p_t) = −(1 − p_t) ∇f_t``: the NLL
    gradient of a token the model has memorised (``p_t → 1``) vanishes, while its log-odds gradient
    keeps its size and points at "make this token beat its competitors". Attribution of a trained
    LLM is mostly about memorised text (facts, backdoors, copied passages), and with ``nll`` exactly
    those examples drop out of the ranking; on the demo benchmark ``margin`` raised fact-tracing
    recall@10 from 0.57 (NLL at its best setting) to 0.99 and backdoor AUPRC from 0.41 to 0.98
    (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVES = ("margin", "nll")


def per_example_target_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor
) -> torch.Tensor:
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
        logits.reshape(batch * width, vocab),
        next_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    )  # [B*T], 0 where ignored
    return token_nll.view(batch, width).sum(dim=1)  # [B]


class _LogOdds(torch.autograd.Function):
    """``f = ℓ_y − logsumexp_{v≠y} ℓ_v`` per row, with one vocabulary-sized buffer in all.

    Autograd through ``scatter`` + ``logsumexp`` allocates six or seven ``[N, V]`` tensors
    (the copy, the exponentials, the softmax, the scatter and gather gradients and their sum);
    at GPT-2's 50k vocabulary that was a tenth of a logging pass, most of it page faults. Here
    the forward keeps ``exp(ℓ_v − m)`` (target zeroed) and the backward scales it in place into
    the gradient. The sum over ``v ≠ y`` is taken directly, never as ``Σ_v − e_y``, so it stays
    exact when ``p_y → 1`` (memorised tokens, the ones this objective is for).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        index = targets[:, None]  # [N, 1]
        target_logit = logits.gather(-1, index).squeeze(-1)  # [N]
        others = logits.detach().scatter(-1, index, float("-inf"))  # [N, V]: the one buffer
        top = others.amax(dim=-1, keepdim=True)  # [N, 1]
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # a 1-token vocabulary
        others.sub_(top).exp_()  # [N, V] exp(ℓ_v − m), 0 at the target
        total = others.sum(dim=-1)  # [N]
        ctx.save_for_backward(total, index)
        ctx.buffer = others  # not saved_tensors: the backward overwrites it (so it runs once)
        return target_logit - top.squeeze(-1) - total.log()  # [N]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        total, index = ctx.saved_tensors
        others, ctx.buffer = ctx.buffer, None
        if others is None:
            raise RuntimeError(
                "the log-odds backward reuses its buffer and runs once; retain_graph is not "
                "supported"
            )
        # ∂f/∂ℓ_v = −softmax_{v≠y}(ℓ)_v, ∂f/∂ℓ_y = 1; the buffer becomes the gradient
        grad_logits = others.mul_((-grad / total)[:, None])  # [N, V]
        grad_logits.scatter_(-1, index, grad[:, None])
        return grad_logits, None


def _target_log_odds(
    logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, T] log-odds f_t of the token position t predicts, [B, T] mask of target
    positions)``."""
    batch, width, vocab = logits.shape
    next_ids = F.pad(input_ids[:, 1:], (0, 1), value=0)  # [B, T]: the token position t predicts
    next_mask = F.pad(target_mask[:, 1:], (0, 1), value=False)  # [B, T]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    log_odds = _LogOdds.apply(logits.reshape(batch * width, vocab), next_ids.reshape(-1))  # [B*T]
    return log_odds.view(batch, width), next_mask  # [B, T], [B, T]


def per_example_margin_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor
) -> torch.Tensor:
    """Per-example ``−Σ_t log(p_t / (1 − p_t))`` ``[B]`` over the target tokens (arguments as
    above)."""
    return objective_losses("margin", logits, input_ids, target_mask)[0]


def objective_losses(
    objective: str, logits: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B] value of objective to differentiate, [B] summed target NLL to report)``.

    For ``margin`` the NLL comes from the same log-odds (``p = σ(f)``, so
    ``−log p = softplus(−f)``): one pass over the vocabulary, not two.
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
