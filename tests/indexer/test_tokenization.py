from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tributary_indexer.data.batching import TokenizedExample
from tributary_indexer.data.corpus import CorpusRecord, parse_record
from tributary_indexer.data.tokenization import (
    assistant_spans,
    render_record,
    special_prefix,
    tokenize_messages_query,
    tokenize_query,
    tokenize_record,
)
from tributary_indexer.errors import CorpusError, ExampleError, TokenizerError

PROMPT = "What is the capital of France?"
RESPONSE = " The capital of France is Paris."
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello world"},
    {"role": "assistant", "content": "Hello, how are you today?"},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
]


def rec(obj: dict[str, Any], line: int = 1) -> CorpusRecord:
    return parse_record(obj, "corpus.jsonl", line)


def decode(tok: Any, ids: Any) -> str:
    return str(tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False))


def targets(tok: Any, ex: TokenizedExample) -> str:
    return decode(tok, [i for i, m in zip(ex.input_ids, ex.target_mask, strict=True) if m])


def target_runs(ex: TokenizedExample) -> list[tuple[int, int]]:
    runs, start = [], None
    for t, m in enumerate((*ex.target_mask, False)):
        if m and start is None:
            start = t
        elif not m and start is not None:
            runs.append((start, t))
            start = None
    return runs


def test_text_targets_every_token_after_first(tiny_tokenizer: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ex = tokenize_record(rec({"text": text}), tiny_tokenizer, 512)
    assert list(ex.input_ids) == tiny_tokenizer(text)["input_ids"]  # GPT-2-like: no BOS
    assert ex.target_mask == (False,) + (True,) * (ex.n_tokens - 1)
    assert decode(tiny_tokenizer, ex.input_ids) == text and ex.n_truncated_tokens == 0


def test_bos_follows_tokenizer_convention(make_tiny_tokenizer: Callable[..., Any]) -> None:
    tok = make_tiny_tokenizer(bos=True)
    bos = tok.bos_token_id
    assert special_prefix(tok) == (bos,)
    ex = tokenize_record(rec({"text": "Hello world"}), tok, 512)
    assert ex.input_ids[0] == bos and ex.target_mask[0] is False and all(ex.target_mask[1:])
    assert list(ex.input_ids) == tok("Hello world")["input_ids"]
    pr = tokenize_record(rec({"prompt": PROMPT, "response": RESPONSE}), tok, 512)
    assert pr.input_ids[0] == bos and targets(tok, pr) == RESPONSE
    no_bos = tokenize_record(rec({"text": "Hello world"}), tok, 512, add_bos=False)
    assert no_bos.input_ids == ex.input_ids[1:]
    plain = make_tiny_tokenizer()
    assert special_prefix(plain) == ()
    with pytest.raises(TokenizerError, match="has no bos_token"):
        tokenize_record(rec({"text": "x y"}), plain, 16, add_bos=True)


def test_prompt_response_targets_are_exactly_the_response(tiny_tokenizer: Any) -> None:
    ex = tokenize_record(rec({"prompt": PROMPT, "response": RESPONSE}), tiny_tokenizer, 512)
    n_prompt = len(tiny_tokenizer(PROMPT)["input_ids"])
    assert ex.target_mask == (False,) * n_prompt + (True,) * (ex.n_tokens - n_prompt)
    assert targets(tiny_tokenizer, ex) == RESPONSE
    assert decode(tiny_tokenizer, ex.input_ids) == PROMPT + RESPONSE
    empty_prompt = tokenize_record(rec({"prompt": "", "response": RESPONSE}), tiny_tokenizer, 512)
    assert empty_prompt.target_mask[0] is False and all(empty_prompt.target_mask[1:])


@pytest.mark.parametrize("bos", [False, True])
def test_messages_targets_are_assistant_turns(
    make_tiny_tokenizer: Callable[..., Any], bos: bool
) -> None:
    tok = make_tiny_tokenizer(bos=bos)
    ex = tokenize_record(rec({"messages": CHAT}), tok, 512)
    rendered = tok.apply_chat_template(CHAT, tokenize=False)
    # piecewise tokenisation equals tokenising the whole rendering (no BOS: templates own it)
    assert list(ex.input_ids) == tok(rendered, add_special_tokens=False)["input_ids"]
    runs = [decode(tok, ex.input_ids[a:b]) for a, b in target_runs(ex)]
    assert runs == ["Hello, how are you today?<|im_end|>\n", "Paris is the capital.<|im_end|>\n"]
    assert render_record(rec({"messages": CHAT}), tok) == rendered


def test_messages_trailing_user_turn_dropped(tiny_tokenizer: Any) -> None:
    ex = tokenize_record(
        rec({"messages": CHAT[:3] + [{"role": "user", "content": "thanks"}]}), tiny_tokenizer, 512
    )
    assert ex.target_mask[-1] is True
    assert decode(tiny_tokenizer, ex.input_ids).endswith("today?<|im_end|>\n")


def test_messages_without_chat_template(make_tiny_tokenizer: Callable[..., Any]) -> None:
    tok = make_tiny_tokenizer(chat_template=False)
    with pytest.raises(
        TokenizerError, match="no chat_template.*fix: give the tokenizer a chat template.*prompt"
    ):
        tokenize_record(rec({"messages": CHAT}), tok, 512)


def test_assistant_first_turn_found_by_content(tiny_tokenizer: Any) -> None:
    messages = [{"role": "assistant", "content": "Hello world"}, {"role": "user", "content": "Hi"}]
    rendered, spans = assistant_spans(messages, tiny_tokenizer)
    assert [rendered[a:b] for a, b in spans] == ["Hello world"]


def test_text_truncation_keeps_head(tiny_tokenizer: Any) -> None:
    text = "Influence functions attribute model outputs to training data. " * 3
    full = tokenize_record(rec({"text": text}), tiny_tokenizer, 10_000)
    ex = tokenize_record(rec({"text": text}), tiny_tokenizer, 8)
    assert ex.input_ids == full.input_ids[:8]
    assert ex.n_truncated_tokens == full.n_tokens - 8 and ex.n_targets == 7


def test_prompt_response_truncation(tiny_tokenizer: Any) -> None:
    long_prompt = PROMPT * 4
    prompt_ids = tiny_tokenizer(long_prompt)["input_ids"]
    response_ids = tiny_tokenizer(RESPONSE)["input_ids"]
    p, r = len(prompt_ids), len(response_ids)
    assert p > 2 * r >= 8
    # long prompt: cut from the left, the response (under half the budget) survives whole
    budget = 2 * r + 1
    ex = tokenize_record(rec({"prompt": long_prompt, "response": RESPONSE}), tiny_tokenizer, budget)
    assert ex.input_ids == tuple(prompt_ids[-(r + 1) :] + response_ids)
    assert ex.n_truncated_tokens == p - (r + 1) and targets(tiny_tokenizer, ex) == RESPONSE
    # both long: the prompt keeps half the budget (its right end), the response is cut from the
    # right
    budget = 6
    ex = tokenize_record(rec({"prompt": long_prompt, "response": RESPONSE}), tiny_tokenizer, budget)
    assert ex.input_ids == tuple(prompt_ids[-3:] + response_ids[:3])
    assert ex.n_truncated_tokens == p + r - budget and ex.n_targets == 3
    # short prompt, long response: the response takes the rest of the budget
    ex = tokenize_record(rec({"prompt": "Hi", "response": RESPONSE * 3}), tiny_tokenizer, 10)
    n_hi = len(tiny_tokenizer("Hi")["input_ids"])
    assert ex.n_tokens == 10 and ex.n_targets == 10 - n_hi


def test_no_targets_after_truncation_is_a_corpus_error(tiny_tokenizer: Any) -> None:
    record = rec({"messages": CHAT[:2] + [{"role": "assistant", "content": "ok"}]}, line=42)
    with pytest.raises(CorpusError) as info:
        tokenize_record(record, tiny_tokenizer, 4)
    assert info.value.code == "no_targets" and info.value.line == 42
    assert str(info.value).startswith("file corpus.jsonl line 42: no target tokens left")


def test_query_matches_training_tokenisation(tiny_tokenizer: Any) -> None:
    query = tokenize_query(PROMPT, RESPONSE, tiny_tokenizer, 512)
    assert query.example == tokenize_record(
        rec({"prompt": PROMPT, "response": RESPONSE}), tiny_tokenizer, 512
    )
    assert query.response_start == len(tiny_tokenizer(PROMPT)["input_ids"])
    assert "".join(query.response_token_strings) == RESPONSE
    assert query.response_text == RESPONSE
    pieces = [RESPONSE[a:b] for a, b in query.response_offsets]  # type: ignore[misc]
    assert pieces == list(query.response_token_strings)
    assert len(query.response_offsets) == query.example.n_tokens - query.response_start


def test_query_offsets_with_multibyte_characters(tiny_tokenizer: Any) -> None:
    response = " café 日本語 🙂"
    query = tokenize_query("Hello", response, tiny_tokenizer, 512)
    assert targets(tiny_tokenizer, query.example) == response
    for (start, end), text in zip(
        query.response_offsets, query.response_token_strings, strict=True
    ):  # type: ignore[misc]
        assert 0 <= start <= end <= len(response)
        assert "\ufffd" not in text


def test_query_truncation_and_errors(tiny_tokenizer: Any) -> None:
    query = tokenize_query(PROMPT, RESPONSE, tiny_tokenizer, 6)
    assert query.example.n_tokens == 6 and len(query.response_token_strings) == 3
    assert RESPONSE.startswith("".join(query.response_token_strings))
    with pytest.raises(ExampleError, match="response is empty"):
        tokenize_query(PROMPT, "  ", tiny_tokenizer, 64)
    with pytest.raises(ValueError, match="max_tokens"):
        tokenize_query(PROMPT, RESPONSE, tiny_tokenizer, 1)


def test_messages_query_targets_last_turn(tiny_tokenizer: Any) -> None:
    query = tokenize_messages_query(CHAT, tiny_tokenizer, 512)
    training = tokenize_record(rec({"messages": CHAT}), tiny_tokenizer, 512)
    assert query.example.input_ids == training.input_ids  # same tokens, fewer targets
    assert targets(tiny_tokenizer, query.example) == "Paris is the capital.<|im_end|>\n"
    assert query.response_text == "Paris is the capital."
    known = [
        (o, s)
        for o, s in zip(query.response_offsets, query.response_token_strings, strict=True)
        if o
    ]
    assert "".join(query.response_text[a:b] for (a, b), _ in known) == query.response_text
    assert query.response_offsets[-1] is None  # the template's "\n" after <|im_end|>
    with pytest.raises(ExampleError, match="not 'assistant'"):
        tokenize_messages_query(CHAT[:4], tiny_tokenizer, 512)
    with pytest.raises(ExampleError, match='no "assistant" turn'):
        tokenize_messages_query(CHAT[:2], tiny_tokenizer, 512)
