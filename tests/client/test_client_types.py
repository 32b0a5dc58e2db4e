"""Wire types: validation rules and their messages, schema documentation."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from tributary_client import types as t


def _msg(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "; ".join(str(e["msg"]) for e in exc.value.errors())


def test_prompt_response_and_messages_forms() -> None:
    r = t.AttributionRequest(prompt="", response="yes")
    assert r.response_text() == "yes" and r.top_k == 10 and r.direction == "helpful"
    m = t.AttributionRequest(
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    )
    assert m.response_text() == "a"


def test_neither_prompt_nor_messages() -> None:
    with pytest.raises(ValidationError) as info:
        t.AttributionRequest()
    assert "missing `prompt` and `response`" in _msg(info)
    with pytest.raises(ValidationError) as info:
        t.AttributionRequest(prompt="p")
    assert "missing `response`" in _msg(info) and "messages" in _msg(info)


def test_both_forms_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        t.AttributionRequest(
            prompt="p", response="r", messages=[{"role": "assistant", "content": "a"}]
        )
    assert "not both" in _msg(info) and "`prompt` and `response`" in _msg(info)


def test_messages_must_end_with_assistant() -> None:
    with pytest.raises(ValidationError) as info:
        t.AttributionRequest(
            messages=[{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]
        )
    assert "last message must be the response" in _msg(info) and "got role 'user'" in _msg(info)
    with pytest.raises(ValidationError) as info:
        t.AttributionRequest(messages=[])
    assert "`messages` is empty" in _msg(info)
    with pytest.raises(ValidationError) as info:
        t.AttributionRequest(messages=[{"role": "assistant", "content": ""}])
    assert "empty" in _msg(info)
    with pytest.raises(ValidationError):
        t.AttributionRequest(messages=[{"role": "robot", "content": "a"}])


def test_field_constraints_and_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        t.AttributionRequest(prompt="p", response="r", top_k=0)
    with pytest.raises(ValidationError):
        t.AttributionRequest(prompt="p", response="r", direction="sideways")
    with pytest.raises(ValidationError) as info:
        t.AttributionRequest.model_validate({"prompt": "p", "response": "r", "topk": 3})
    assert info.value.errors()[0]["loc"] == ("topk",)
    with pytest.raises(ValidationError):
        t.AttributionRequest(prompt="p", response="")


def test_responses_ignore_unknown_fields() -> None:
    ex = t.AttributedExample.model_validate(
        {"example_id": 1, "score": -0.5, "direction": "harmful", "text": "x", "new_field": 1}
    )
    assert ex.source is None and ex.token_scores is None
    info = t.IndexInfo.model_validate(
        {
            "index_id": "i",
            "format_version": 1,
            "model": {},
            "projector": {},
            "score_variant": "cosine",
            "damping": {"alpha": 0.001},
            "n_examples": 1,
            "dim": 2,
            "shards": 1,
            "created_at": "now",
            "extra_thing": [1],
        }
    )
    assert info.model_dump()["extra_thing"] == [1]


def test_generate_and_batch_types() -> None:
    assert t.GenerateRequest(prompt="x").max_new_tokens == 64
    with pytest.raises(ValidationError, match="give `prompt` or `messages`"):
        t.GenerateRequest()
    with pytest.raises(ValidationError, match="not both"):
        t.GenerateRequest(prompt="x", messages=[{"role": "user", "content": "y"}])
    body = t.AttributionRequest(prompt="p", response="r")
    with pytest.raises(ValidationError, match="duplicate custom_id 'x'"):
        t.BatchCreateRequest(
            requests=[{"custom_id": "x", "body": body}, {"custom_id": "x", "body": body}]
        )
    with pytest.raises(ValidationError):
        t.BatchCreateRequest(requests=[])
    b = t.Batch(id="b", status="cancelled", created_at=0)
    assert b.is_terminal and b.request_counts.total == 0
    assert not t.Batch(id="b", status="cancelling", created_at=0).is_terminal
    line = t.BatchResultLine(
        custom_id="c", error=t.ErrorBody(message="m", type="invalid_request_error")
    )
    assert json.loads(line.model_dump_json())["response"] is None
    env = t.ErrorResponse.model_validate({"error": {"message": "m", "type": "server_error"}})
    assert env.error.param is None


def test_schema_documents_meaning() -> None:
    schema = json.dumps(t.AttributionResponse.model_json_schema())
    assert "more likely" in schema and "less likely" in schema
    for variant in t.SCORE_VARIANTS:
        assert variant in schema
    req = t.AttributionRequest.model_json_schema()
    assert all("description" in p for p in req["properties"].values())
    assert set(t.ERROR_TYPES) == {
        "invalid_request_error",
        "authentication_error",
        "not_found_error",
        "rate_limit_error",
        "unavailable_error",
        "server_error",
    }


def test_the_schema_s_blank_response_rule_is_python_s():
    """The OpenAPI pattern for a non-blank response (an ECMA regex) agrees with ``str.strip``,
    which the service uses: the separators U+001C-U+001F and U+0085 are blank, U+FEFF is not."""
    import re

    schema = json.dumps(t.AttributionRequest.model_json_schema())
    pattern = re.search(r'"pattern": "((?:[^"\\]|\\.)*)"', schema)
    assert pattern is not None
    ecma = json.loads(f'"{pattern.group(1)}"')
    # ECMA's \s, spelled out, so the check does not lean on Python's wider \s
    ecma_space = "\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
    as_ecma = re.compile(ecma.replace("\\S", f"[^{ecma_space}]").replace("\\s", ecma_space))
    for text in ["\x1f", "\x1c\x1d\x1e", "\x85", " \t\n", "\u3000", "\ufeff", "a", " x "]:
        assert bool(as_ecma.search(text)) == bool(text.strip()), repr(text)
