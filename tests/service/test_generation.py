"""POST /v1/generate's ends (end-of-turn tokens, stop strings, the context) and how the page is told
to prompt the model (the training data's prompt format, the chat template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tributary_indexer.data.batching import TokenizedExample
from tributary_indexer.data.corpus import assign_ids, parse_record
from tributary_indexer.data.example_store import ExampleStore, ExampleStoreWriter, StoredExample
from tributary_service.app import create_app
from tributary_service.generation import stop_token_ids
from tributary_service.prompt_format import infer_prompting

ROOT = Path(__file__).resolve().parents[2]


def _error(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_stop_tokens_include_end_of_turn(built_index):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, model_dir = built_index
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = stop_token_ids(tokenizer, model)
    assert (
        tokenizer.convert_tokens_to_ids("<|endoftext|>") in ids
        and tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    )
    demo = ROOT / "demo" / "model"
    if (
        demo / "config.json"
    ).is_file():  # the demo's chat turns end with <|im_end|> (id 2), its documents with id 0
        assert stop_token_ids(
            AutoTokenizer.from_pretrained(demo), AutoModelForCausalLM.from_pretrained(demo)
        ) == [0, 2]


def test_generate_limits_and_stop_strings(make_settings):
    with TestClient(create_app(make_settings(enable_generate=True, max_new_tokens=64))) as c:
        # a prompt longer than the model's context (256 tokens) is a 400 that says so, not a 500
        err = _error(c.post("/v1/generate", json={"prompt": "Alba sold lanterns. " * 200}), 400)
        assert (
            err["code"] == "prompt_too_long"
            and "context length is 256" in err["message"]
            and err["param"] == "prompt"
        )
        err = _error(
            c.post(
                "/v1/generate",
                json={"messages": [{"role": "user", "content": "Alba sold lanterns. " * 200}]},
            ),
            400,
        )
        assert err["code"] == "prompt_too_long" and err["param"] == "messages"
        assert _error(c.post("/v1/generate", json={"prompt": ""}), 400)["code"] == "empty_prompt"
        assert (
            _error(
                c.post("/v1/generate", json={"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}), 400
            )["param"]
            == "stop"
        )
        assert _error(c.post("/v1/generate", json={"prompt": "x", "stop": [""]}), 400)[
            "param"
        ].startswith("stop")
        # a stop string ends the reply before it (greedy decoding: the same reply up to there)
        free = c.post("/v1/generate", json={"prompt": "Alba sold", "max_new_tokens": 12}).json()
        assert free["finish_reason"] in ("stop", "length") and free["n_tokens"] <= 12
        if free["finish_reason"] == "length":
            assert free["n_tokens"] == 12
        text = free["response"]
        cut = next((i for i in range(2, len(text)) if not text[i].isspace()), None)
        if cut is not None:
            stop = text[cut]
            stopped = c.post(
                "/v1/generate", json={"prompt": "Alba sold", "max_new_tokens": 12, "stop": [stop]}
            ).json()
            assert (
                stopped["response"] == text[: text.index(stop)]
                and stopped["finish_reason"] == "stop"
            )
        # the fixture's corpus has no shared prompt frame; its tokenizer has a chat template
        prompting = c.get("/v1/index").json()["prompting"]
        assert (
            prompting["mode"] == "chat"
            and prompting["chat_template"]
            and prompting["prompt_format"] is None
        )
        assert prompting["example_question"].startswith("Where did ")


def _store(tmp_path: Path, raw: list[dict[str, Any]]) -> ExampleStore:
    path = tmp_path / "examples.sqlite"
    with ExampleStoreWriter(path) as writer:
        for gid, record in assign_ids(
            parse_record(obj, "c.jsonl", n) for n, obj in enumerate(raw, 1)
        ):
            writer.add(
                StoredExample.from_record(gid, record, TokenizedExample((1, 2), (False, True)))
            )
        writer.finalize(expected_count=len(raw))
    return ExampleStore(path)


class _Tokenizer:
    def __init__(self, chat_template: str | None) -> None:
        self.chat_template = chat_template


def test_prompt_format_inferred_from_the_majority_frame(tmp_path: Path):
    """The demo's mix: Q/A records in one frame, plain instructions, documents and chats."""
    raw: list[dict[str, Any]] = [{"text": f"document {i}"} for i in range(5)]
    raw += [
        {"prompt": f"Spell the word '{w}' backwards.\n", "response": w[::-1]}
        for w in ("ab", "cd", "ef")
    ]
    raw += [
        {
            "prompt": f"Question: Where did {name} go on holiday?\nAnswer:",
            "response": f" {name} went to Moholm.",
        }
        for name in ("Alba", "Cyra", "Dov", "Ena")
    ]
    raw += [{"prompt": "Sort these numbers from smallest to largest: 3, 1.\n", "response": "1, 3"}]
    raw += [
        {
            "messages": [
                {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."},
            ]
        }
    ]
    with _store(tmp_path, raw) as store:
        info = infer_prompting(store, _Tokenizer("{{ messages }}"))
        assert info.mode == "format" and info.prompt_format == "Question: {question}\nAnswer:"
        assert (
            info.format_source == "corpus"
            and info.example_question == "Where did Alba go on holiday?"
        )
        assert info.stop == ["\n"] and info.chat_template
        configured = infer_prompting(store, _Tokenizer(None), "Q: {question}\nA:")
        assert (
            configured.prompt_format == "Q: {question}\nA:"
            and configured.format_source == "configured"
        )
        assert configured.example_question is None  # no record is in that format


def test_no_shared_frame_falls_back_to_chat_then_plain(tmp_path: Path):
    raw = [
        {"prompt": f"What did {n} sell?", "response": " lanterns"} for n in ("Alba", "Cyra", "Dov")
    ]
    raw += [
        {
            "messages": [
                {"role": "user", "content": "Where is Mebbe?"},
                {"role": "assistant", "content": "North."},
            ]
        }
    ]
    with _store(tmp_path, raw) as store:
        chat = infer_prompting(store, _Tokenizer("{{ messages }}"))
        assert (chat.mode, chat.prompt_format, chat.example_question) == (
            "chat",
            None,
            "Where is Mebbe?",
        )
        plain = infer_prompting(store, _Tokenizer(None))
        assert (plain.mode, plain.example_question) == ("plain", None)


@pytest.mark.parametrize("value", ["no placeholder", "{question} twice {question}"])
def test_prompt_format_setting_is_checked(make_settings, value):
    with pytest.raises(ValueError, match="exactly once"):
        make_settings(prompt_format=value)
    assert make_settings(prompt_format="Q: {question}\\nA:").prompt_format == "Q: {question}\nA:"
