"""Small on-disk models and corpora for indexer/service integration tests (all built in code)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NAMES = [
    "Alba",
    "Borin",
    "Cyra",
    "Dovan",
    "Elsk",
    "Farro",
    "Gilda",
    "Hamon",
    "Isel",
    "Jorvik",
    "Kesta",
    "Lumo",
]
THINGS = [
    "lanterns",
    "copper",
    "violins",
    "salt",
    "maps",
    "honey",
    "glass",
    "tea",
    "wool",
    "clocks",
    "ink",
    "figs",
]
CITIES = [
    "Varn",
    "Oskel",
    "Tirra",
    "Mebbe",
    "Quon",
    "Ralt",
    "Sivv",
    "Umber",
    "Yarl",
    "Zell",
    "Pym",
    "Nox",
]


def corpus_records(n: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """Deterministic mixed corpus: documents, prompt/response pairs and chat records."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for i in range(n):
        name, thing, city = NAMES[i % 12], THINGS[(i * 5) % 12], CITIES[(i * 7) % 12]
        kind = i % 3
        provider = ["acme", "globex", "initech"][i % 3]
        if kind == 0:
            filler = " ".join(rng.choice(THINGS + CITIES) for _ in range(rng.randint(3, 30)))
            records.append(
                {
                    "id": f"doc-{i}",
                    "text": f"In year {1000 + i}, {name} sells {thing} in {city}. {filler}",
                    "provider": provider,
                }
            )
        elif kind == 1:
            records.append(
                {
                    "id": f"qa-{i}",
                    "prompt": f"What did {name} sell in year {1000 + i}?",
                    "response": f" {name} sold {thing}.",
                    "provider": provider,
                    "topic": "trade",
                }
            )
        else:
            records.append(
                {
                    "id": f"chat-{i}",
                    "messages": [
                        {"role": "user", "content": f"Where did {name} live in year {1000 + i}?"},
                        {"role": "assistant", "content": f"{name} lives in {city}."},
                    ],
                    "provider": provider,
                }
            )
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def build_model_dir(path: Path, arch: str = "gpt2", seed: int = 0) -> Path:
    """Save a tiny random causal LM and a byte-level BPE tokenizer (with a chat template) at
    ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    texts = []
    for r in corpus_records(120):
        texts.append(
            r.get("text")
            or r.get("prompt", "") + r.get("response", "")
            or " ".join(m["content"] for m in r.get("messages", []))
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=256,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
