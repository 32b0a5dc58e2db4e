"""Shared fixtures: tiny Hugging Face causal LMs built from configs in code (no hub)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped, with the reason, where FAISS has no GPU."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    from tributary_indexer.query.gpu_placement import gpu_absence, gpu_count

    if gpu_count() > 0:
        return
    skip = pytest.mark.skip(
        reason=f"no GPU: {gpu_absence()}; run them on a GPU machine with "
        "`python benchmarks/gpu_check.py`"
    )
    for item in marked:
        item.add_marker(skip)


def tiny_gpt2(dtype=None, seed: int = 0, vocab_size: int = 97):
    """A 2-layer GPT-2 (Conv1D modules, tied lm_head) in eval mode."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=24,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).eval()
    return model.to(dtype) if dtype is not None else model


def tiny_llama(dtype=None, seed: int = 0, vocab_size: int = 101):
    """A 2-layer Llama (nn.Linear modules, untied lm_head, GQA) in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    return model.to(dtype) if dtype is not None else model


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model_f64(request):
    import torch

    factory = tiny_gpt2 if request.param == "gpt2" else tiny_llama
    return factory(dtype=torch.float64)
