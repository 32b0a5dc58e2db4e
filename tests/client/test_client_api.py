"""Every endpoint of the sync and async clients against the fake API."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import tributary_client as tc
from client_fakes import BASE_URL, FakeTributary
from tributary_client import types


def _body(request: httpx.Request) -> dict:
    return json.loads(request.content)


def test_attribute_prompt_response(client: tc.Client, fake: FakeTributary) -> None:
    result = client.attribute(
        "What is 2+2?", "4", top_k=3, direction="both", source="wiki", provider=["acme", "globex"]
    )
    assert isinstance(result, types.AttributionResponse)
    assert [e.direction for e in result.examples] == ["helpful"] * 3 + ["harmful"] * 3
    assert result.examples[0].score > 0 > result.examples[-1].score
    assert result.timings.total_ms == 2.25 and result.timings.fetch_ms == 0.0
    req = fake.requests[0]
    assert (req.method, str(req.url)) == ("POST", f"{BASE_URL}/v1/attributions")
    assert _body(req) == {
        "prompt": "What is 2+2?",
        "response": "4",
        "top_k": 3,
        "direction": "both",
        "token_wise": False,
        "filters": {"source": ["wiki"], "provider": ["acme", "globex"]},
    }


def test_attribute_messages_and_token_wise(client: tc.Client, fake: FakeTributary) -> None:
    messages = [
        types.ChatMessage(role="user", content="hi"),
        {"role": "assistant", "content": "hello there"},
    ]
    result = client.attribute(messages=messages, token_wise=True, top_k=1)
    assert _body(fake.requests[0])["messages"][1] == {"role": "assistant", "content": "hello there"}
    assert "prompt" not in _body(fake.requests[0])
    assert [t.token for t in result.response_token_scores or []] == ["hello", "there"]
    assert result.examples[0].token_scores is not None


def test_attribute_validates_before_sending(client: tc.Client, fake: FakeTributary) -> None:
    with pytest.raises(tc.RequestValidationError, match="missing `response`"):
        client.attribute("only a prompt")
    with pytest.raises(tc.RequestValidationError, match="greater than or equal to 1") as info:
        client.attribute("p", "r", top_k=0)
    assert info.value.param == "top_k" and isinstance(info.value, tc.TributaryError)
    assert isinstance(info.value, ValueError)  # the plain Python convention still catches it
    with pytest.raises(tc.RequestValidationError, match="filters.source"):
        client.attribute("p", "r", source=[3])  # type: ignore[list-item]
    with pytest.raises(tc.RequestValidationError, match="messages.0.role"):
        client.attribute(
            messages=[{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]
        )
    with pytest.raises(tc.RequestValidationError, match="max_new_tokens"):
        client.generate("p", max_new_tokens=0)
    with pytest.raises(tc.RequestValidationError, match="custom_id"):
        client.create_batch([{"custom_id": "", "body": {"prompt": "p", "response": "r"}}])
    with pytest.raises(tc.RequestValidationError, match="record_id must be a non-empty string"):
        client.get_example_by_record_id("")
    with pytest.raises(tc.RequestValidationError, match="base_url"):
        tc.Client("localhost:8000")
    assert fake.requests == []


def test_successful_responses_carry_their_request_id(
    client: tc.Client, fake: FakeTributary
) -> None:
    result = client.attribute("p", "r", top_k=1)
    assert result.request_id == "req-1"
    assert fake.requests[0].headers.get("x-request-id") is None  # the server chose it
    assert (
        tc.AttributionResponse.model_validate(result.model_dump()).request_id is None
    )  # not a response


def test_examples_index_generate(client: tc.Client, fake: FakeTributary) -> None:
    ex = client.get_example(7)
    assert (ex.example_id, ex.metadata) == (7, {"lang": "en"})
    info = client.index_info()
    assert info.n_examples == 1000 and info.damping == 0.001
    assert info.model_extra == {"tokenizer": {"hash": "t0"}}  # extra fields kept
    gen = client.generate("2+2=", max_new_tokens=3)
    assert gen.response == " four"
    assert _body(fake.requests[-1]) == {"prompt": "2+2=", "max_new_tokens": 3, "temperature": 0.0}
    with pytest.raises(tc.RequestValidationError, match="example_id must be an int"):
        client.get_example("7")  # type: ignore[arg-type]


def test_batches(client: tc.Client, fake: FakeTributary, delays: list[float]) -> None:
    req = types.AttributionRequest(prompt="p", response="r")
    batch = client.create_batch(
        [
            ("a", req),
            {"custom_id": "b", "body": {"prompt": "q", "response": "s"}},
            types.BatchRequestLine(custom_id="c", body=req),
        ],
        metadata={"team": "x"},
    )
    assert batch.status == "validating" and batch.request_counts.total == 3
    assert [r["custom_id"] for r in _body(fake.requests[0])["requests"]] == ["a", "b", "c"]
    with pytest.raises(tc.RequestValidationError, match="duplicate custom_id 'a'"):
        client.create_batch([("a", req), ("a", req)])

    done = client.wait_for_batch("batch/1", poll_interval=0.5)
    assert done.status == "completed" and done.is_terminal and delays == [0.5, 0.5]
    assert fake.requests[-1].url.raw_path == b"/v1/batches/batch%2F1"  # ids are path-quoted

    assert client.cancel_batch("batch_1").status == "cancelling"
    lines = list(client.iter_batch_results("batch_1"))
    assert [x.custom_id for x in lines] == ["a", "b"]
    assert lines[0].response is not None and lines[1].error is not None
    assert fake.requests[-1].headers["accept"] == "application/x-ndjson"


def test_wait_for_batch_timeout(client: tc.Client) -> None:
    with pytest.raises(TimeoutError, match="still 'in_progress'"):
        client.wait_for_batch("batch_1", timeout=0)


def test_results_not_found_raises_on_iteration(client: tc.Client, fake: FakeTributary) -> None:
    fake.on_request = lambda r: httpx.Response(
        404, json={"error": {"message": "no batch", "type": "not_found_error"}}
    )
    it = client.iter_batch_results("nope")
    with pytest.raises(tc.NotFoundError, match="no batch"):
        next(iter(it))


def test_context_manager_closes_owned_pool(fake: FakeTributary) -> None:
    with tc.Client(BASE_URL, transport=httpx.MockTransport(fake)) as c:
        c.index_info()
    assert c._http.is_closed
    own = httpx.Client(transport=httpx.MockTransport(fake))
    with tc.Client(BASE_URL, http_client=own) as c2:
        c2.index_info()
    assert not own.is_closed  # the caller's client is the caller's to close
    own.close()
    with pytest.raises(ValueError, match="not both"):
        tc.Client(BASE_URL, http_client=own, transport=httpx.MockTransport(fake))


def test_async_client_endpoints(make_async_client, fake: FakeTributary) -> None:
    async def scenario() -> None:
        async with make_async_client() as c:
            result = await c.attribute("p", "r", top_k=2)
            assert len(result.examples) == 2
            assert (await c.get_example(1)).example_id == 1
            assert (await c.index_info()).shards == 2
            assert (await c.generate(messages=[{"role": "user", "content": "hi"}])).n_tokens == 1
            batch = await c.create_batch(
                [("a", types.AttributionRequest(prompt="p", response="r"))]
            )
            assert batch.id == "batch_1"
            assert (await c.wait_for_batch("batch_1", poll_interval=0.01)).status == "completed"
            assert (await c.cancel_batch("batch_1")).status == "cancelling"
            ids = [line.custom_id async for line in c.iter_batch_results("batch_1")]
            assert ids == ["a", "b"]
        assert c._http.is_closed

    asyncio.run(scenario())
    # same request bytes as the sync client: one builder
    sync = tc.Client(BASE_URL, api_key="sk-test", transport=httpx.MockTransport(fake))
    sync.attribute("p", "r", top_k=2)
    assert fake.requests[-1].content == fake.requests[0].content
