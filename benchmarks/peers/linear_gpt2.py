"""Swap HF GPT-2's ``Conv1D`` layers for equivalent ``nn.Linear`` layers.

LogIX (and most hook-based per-example-gradient tools) only recognise ``nn.Linear`` /
``nn.Conv2d``; GPT-2 in ``transformers`` implements its projections with
``transformers.pytorch_utils.Conv1D`` (``y = x @ W + b`` with ``W`` stored as ``[in, out]``).
``nn.Linear`` computes ``y = x @ W.T + b`` with ``W`` stored as ``[out, in]``, so the swap is a
transpose of the weight plus a copy of the bias; outputs are identical up to float rounding.

Run ``python benchmarks/peers/linear_gpt2.py`` for the float64 equivalence check.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace every ``Conv1D`` in ``model`` (in place) with an equivalent ``nn.Linear``.

    The new layers get the same dtype, device and ``requires_grad`` as the old parameters.
    Returns ``model`` for chaining.
    """
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, Conv1D)]
    for name, conv in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        n_in, n_out = conv.weight.shape  # Conv1D stores [in, out]
        linear = nn.Linear(
            n_in,
            n_out,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        linear.weight.requires_grad_(conv.weight.requires_grad)
        if conv.bias is not None:
            linear.bias.requires_grad_(conv.bias.requires_grad)
        linear.train(conv.training)
        setattr(parent, child_name, linear)
    return model


def _check() -> None:
    import copy

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_embd=128,
        n_layer=2,
        n_head=4,
        vocab_size=1024,
        n_positions=128,
        bos_token_id=1023,
        eos_token_id=1023,
    )
    ref = GPT2LMHeadModel(cfg).double().eval()
    lin = conv1d_to_linear(copy.deepcopy(ref))
    n_conv = sum(isinstance(m, Conv1D) for m in lin.modules())
    n_lin = sum(isinstance(m, nn.Linear) for m in lin.modules())
    assert n_conv == 0, n_conv
    # 4 per block (c_attn, attn.c_proj, c_fc, mlp.c_proj) + lm_head
    assert n_lin == 4 * cfg.n_layer + 1, n_lin
    ids = torch.randint(0, cfg.vocab_size, (3, 64))
    mask = torch.ones_like(ids)
    mask[0, 50:] = 0
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask).logits
        b = lin(input_ids=ids, attention_mask=mask).logits
    diff = (a - b).abs().max().item()
    assert diff < 1e-10, diff

    # gradients must match too (mapped through the transpose)
    ref.zero_grad()
    lin.zero_grad()
    ref(input_ids=ids, labels=ids).loss.backward()
    lin(input_ids=ids, labels=ids).loss.backward()
    gdiff = 0.0
    for (name, m_ref), m_lin in zip(
        ((n, m) for n, m in ref.named_modules() if isinstance(m, Conv1D)),
        (m for m in lin.modules() if isinstance(m, nn.Linear) and m is not lin.lm_head),
        strict=True,
    ):
        assert m_ref.weight.grad is not None and m_lin.weight.grad is not None, name
        gdiff = max(gdiff, (m_ref.weight.grad.t() - m_lin.weight.grad).abs().max().item())
    assert gdiff < 1e-10, gdiff
    print(
        f"conv1d_to_linear OK: {n_lin} nn.Linear, max|logit diff|={diff:.2e}, "
        f"max|weight-grad diff|={gdiff:.2e} (float64)"
    )


if __name__ == "__main__":
    _check()
