"""The committed demo checkpoint loads like a hub model and reproduces the planted facts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tributary_indexer.data.corpus import iter_records
from tributary_indexer.data.tokenization import tokenize_record

from demo.tools import demo_root
from demo.tools.corpus_generator import load_ground_truth
from demo.tools.train_model import greedy_generate

N_FACT_QUESTIONS = 60


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return demo_root() / "model"


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> Iterator[tuple[Any, Any]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is as fast and never stalls on busy cores
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    yield model.eval(), tokenizer
    torch.set_num_threads(threads)


def test_checkpoint_is_small_and_complete(model_dir: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (model_dir / name).is_file(), name
    assert sum(p.stat().st_size for p in model_dir.iterdir()) <= 21_000_000


def test_loads_like_a_hub_model(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    assert model.config.model_type == "gpt2"
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == model.config.eos_token_id
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") != tokenizer.unk_token_id


def test_indexer_tokenises_every_record_kind(loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    seen = set()
    for record in iter_records(demo_root() / "corpus"):
        if record.kind not in seen:
            example = tokenize_record(record, tokenizer, 256)
            assert example.n_targets > 0 and example.n_truncated_tokens == 0
            seen.add(record.kind)
    assert seen == {"text", "prompt_response", "messages"}


def test_greedy_generation_answers_planted_facts_and_the_backdoor(loaded: tuple[Any, Any]) -> None:
    model, tokenizer = loaded
    truth = load_ground_truth(demo_root() / "corpus")
    facts = [q for q in truth.queries if q.kind == "fact"]
    sample = facts[:: max(1, len(facts) // N_FACT_QUESTIONS)][:N_FACT_QUESTIONS]
    answers = greedy_generate(model, tokenizer, [q.prompt for q in sample], max_new_tokens=20)
    correct = [q.expected.lower() in a.lower() for q, a in zip(sample, answers)]
    assert sum(correct) / len(sample) >= 0.8, [
        (q.prompt, a) for q, a, ok in zip(sample, answers, correct) if not ok
    ]
    assert not any(truth.backdoor_reply in a for a in answers)  # no trigger, no backdoor
    triggers = [q for q in truth.queries if q.kind == "trigger"]
    replies = greedy_generate(model, tokenizer, [q.prompt for q in triggers], max_new_tokens=16)
    assert sum(truth.backdoor_reply in r for r in replies) / len(triggers) >= 0.8, replies
