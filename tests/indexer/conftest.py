"""Shared fixtures for the indexer tests: tiny tokenizers built in code (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]
_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, how are you today? I am fine, thank you.",
    "Influence functions attribute model outputs to training data.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "What is the capital of France? The capital of France is Paris.",
    "café naïve déjà vu 日本語 🙂",
]


@pytest.fixture(scope="session")
def _tiny_backend_json() -> str:
    """A byte-level BPE (GPT-2 style) trained on a few sentences, serialised once per session."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT * 4, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


@pytest.fixture(scope="session")
def make_tiny_tokenizer(_tiny_backend_json: str) -> Callable[..., Any]:
    """Factory: ``make_tiny_tokenizer(bos=False, chat_template=True)`` -> a fresh fast tokenizer.

    ``bos=True`` adds ``<s>`` with a post-processor, like Llama tokenizers; ``bos=False`` is
    GPT-2-like (no BOS). ``chat_template=True`` sets a ChatML template.
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    def make(bos: bool = False, chat_template: bool = True) -> Any:
        backend = Tokenizer.from_str(_tiny_backend_json)
        kwargs: dict[str, Any] = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        if bos:
            bos_id = backend.token_to_id("<s>")
            backend.post_processor = processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)]
            )
            kwargs["bos_token"] = "<s>"
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
        if chat_template:
            tokenizer.chat_template = CHATML_TEMPLATE
        return tokenizer

    return make


@pytest.fixture()
def tiny_tokenizer(make_tiny_tokenizer: Callable[..., Any]) -> Any:
    """GPT-2-like tiny tokenizer (no BOS) with a ChatML chat template."""
    return make_tiny_tokenizer()
