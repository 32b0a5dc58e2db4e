"""The REST API through TestClient: happy paths, token-wise, filters, errors with the envelope."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from tributary_service.app import create_app

QA = {"prompt": "What did Alba sell in year 1001?", "response": " Alba sold lanterns."}
# copies two runs of the prompt; the oracle asserts that one of them has tokens outside its core
# (tokens that match more than twice as many training examples as the span's most selective token)
QA_COPY = {**QA, "response": " Alba sold lanterns in year 1001."}


def _error(resp, status: int, type_: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["x-request-id"]
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_
    return body["error"]


def _emitting(ex) -> list[int]:
    """The positions whose output predicts a response token (``t − 1`` for each target ``t``)."""
    return [t - 1 for t, target in enumerate(ex.target_mask) if target]


def _response_spans(ex) -> list[list[int]]:
    """The response's copy spans, by hand: a token joins the previous one's span when the pair
    occurs in the prompt."""
    prompt = [t for t, m in zip(ex.input_ids, ex.target_mask) if not m]
    response = [t for t, m in zip(ex.input_ids, ex.target_mask) if m]
    spans: list[list[int]] = []
    for j, token in enumerate(response):
        if j and any(
            prompt[i] == response[j - 1] and prompt[i + 1] == token for i in range(len(prompt) - 1)
        ):
            spans[-1].append(j)
        else:
            spans.append([j])
    return spans


def _saturated_oracle(
    loaded, request: dict, trims_a_core: bool = False, harmful: bool = False
) -> np.ndarray:
    """``span_gated`` by brute force over every stored vector: each response token's score over its
    RMS *measured* across the whole training set, saturated as z / (z + k); a copy span's best
    token, weighted by the span's largest λ‖H⁻¹g_t‖² / measured mean square; plus the new
    (one-token) spans' part times the copied spans' mean presence z / (z + presence_k), z the best
    of the span's core tokens: those whose share of the training set with z > presence_k is at most
    twice the span's lowest share (the index's 60 examples are all its reference sample). No first
    stage. ``harmful``: the same with every token score negated (and the result negated back)."""
    from tributary_client.types import AttributionRequest
    from tributary_indexer.data.batching import collate

    engine, index = loaded.engine, loaded.index
    ex = engine.prepare(AttributionRequest(**request)).tokens.example
    grads = engine.computer.compute(collate([ex], engine.pad_id), per_position=True)
    emitting = _emitting(ex)
    terms = grads.per_position[0, emitting].double()
    if index.compressor is not None:
        terms = index.compressor.compress(
            terms[None], index.compressor.layer_scales(grads.vectors.double())
        )[0]
    stored = torch.from_numpy(index.stored_vectors(np.arange(index.n_examples))).double()
    u = index.preconditioner.inverse(terms)  # [n_tokens, D]
    token_scores = u @ stored.T  # [n_tokens, N]
    mean_square = token_scores.pow(2).mean(1)  # [n_tokens]
    sign = -1.0 if harmful else 1.0
    standardized = sign * token_scores / mean_square[:, None].sqrt()  # [n_tokens, N]
    share = (
        (standardized > 2.0).double().mean(1)
    )  # [n_tokens]: presence_k = 2, the default; all 60 examples
    z = standardized.clamp_min(0)
    k = index.ranking_config.saturation
    damped = sum(
        lam * u[:, b.start : b.stop].pow(2).sum(1)
        for b, lam in zip(index.preconditioner.blocks, index.preconditioner.lambdas)
    )
    weight = damped / mean_square  # [n_tokens]
    spans = _response_spans(ex)
    assert len(spans) < len(emitting), (
        "the request must copy a run of prompt tokens, or spans go untested"
    )
    copied_part = torch.zeros(stored.shape[0], dtype=torch.float64)
    new_part = torch.zeros(stored.shape[0], dtype=torch.float64)
    presence, trimmed = [], False
    for span in spans:
        best = z[span].max(0).values
        term = weight[span].max() * best / (best + k)
        if len(span) > 1:
            copied_part += term
            core = [
                t for t in span if share[t] <= max(2.0 * share[span].min(), 0.002)
            ]  # the defaults: 2×, floor 0.002
            trimmed |= len(core) < len(span)
            core_best = z[core].max(0).values
            presence.append(core_best / (core_best + 2.0))  # presence_k = 2, the default
        else:
            new_part += term
    assert index.ranking.name == "span_gated" and presence
    assert trimmed or not trims_a_core, (
        "a copied span's core must leave a token out, or the core goes untested"
    )
    return sign * (copied_part + new_part * (1 + torch.stack(presence).mean(0))).numpy()


def test_attribution_ranks_and_matches_the_engine_oracle(client):
    resp = client.post("/v1/attributions", json={**QA, "top_k": 5})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert resp.headers["x-request-id"]
    assert len(body["examples"]) == 5 and body["score_variant"] == "influence"
    scores = [e["score"] for e in body["examples"]]
    assert scores == sorted(scores, reverse=True)
    assert all(e["direction"] == "helpful" for e in body["examples"])
    assert (
        body["timings"]["gradient_ms"] > 0
        and body["timings"]["total_ms"] >= body["timings"]["search_ms"]
    )
    assert client.get("/v1/index").json()["ranking"] == "span_gated"
    # the same ranking and scores as the saturated score of every stored vector (60 < 200
    # candidates)
    every = _saturated_oracle(client.app.state.loaded, QA)
    assert [e["example_id"] for e in body["examples"]] == np.argsort(-every, kind="stable")[
        :5
    ].tolist()
    np.testing.assert_allclose(scores, np.sort(every)[::-1][:5], rtol=1e-5)
    # a response whose copied span has tokens outside its core: the presence comes from the core
    # only
    body = client.post("/v1/attributions", json={**QA_COPY, "top_k": 5}).json()
    every = _saturated_oracle(client.app.state.loaded, QA_COPY, trims_a_core=True)
    assert [e["example_id"] for e in body["examples"]] == np.argsort(-every, kind="stable")[
        :5
    ].tolist()
    np.testing.assert_allclose(
        [e["score"] for e in body["examples"]], np.sort(every)[::-1][:5], rtol=1e-5
    )
    # the harmful direction counts its shares on the negated scores: its own cores
    body = client.post(
        "/v1/attributions", json={**QA_COPY, "top_k": 5, "direction": "harmful"}
    ).json()
    every = _saturated_oracle(client.app.state.loaded, QA_COPY, harmful=True)
    assert all(e["direction"] == "harmful" for e in body["examples"])
    assert [e["example_id"] for e in body["examples"]] == np.argsort(every, kind="stable")[
        :5
    ].tolist()
    np.testing.assert_allclose(
        [e["score"] for e in body["examples"]], np.sort(every)[:5], rtol=1e-5
    )


def test_reference_sample_is_the_stored_vectors_of_the_reference_rows(client, make_settings):
    """The selective core's shares are counted on every stored vector of a small index, loaded
    once."""
    index = client.app.state.loaded.index
    reference = index.reference()
    np.testing.assert_array_equal(
        reference.numpy(), index.stored_vectors(np.arange(index.n_examples))
    )
    assert index.reference("cpu") is reference  # cached, not re-read per query
    with TestClient(create_app(make_settings(ranking="linear"))) as c:
        assert (
            c.app.state.loaded.index.reference() is None
        )  # no selective core: nothing kept in memory


def test_few_first_stage_candidates_rerank_only_those(make_settings):
    """With 8 candidates the answer is the saturated order of the first stage's top 8."""
    with TestClient(create_app(make_settings(token_candidates=8))) as c:
        body = c.post("/v1/attributions", json={**QA, "top_k": 3}).json()
        loaded = c.app.state.loaded
        tokens = loaded.engine.prepare(
            __import__("tributary_client").types.AttributionRequest(**QA)
        )
        from tributary_indexer.data.batching import collate

        ex = tokens.tokens.example
        grads = loaded.engine.computer.compute(
            collate([ex], loaded.engine.pad_id), per_position=True
        )
        emitting = _emitting(ex)
        owner = torch.zeros(len(emitting), dtype=torch.long)
        std, _ = loaded.index.ranking.token_queries(
            loaded.index.space, grads.per_position[0, emitting], grads.vectors[:1], owner
        )
        first = (
            loaded.index.stored_vectors(np.arange(loaded.index.n_examples))
            @ std.sum(0).float().numpy()
        )
        candidates = np.argsort(-first, kind="stable")[:8]
        every = _saturated_oracle(loaded, QA)
        want = candidates[np.argsort(-every[candidates], kind="stable")][:3]
        assert [e["example_id"] for e in body["examples"]] == want.tolist()


def test_ranking_setting_overrides_the_manifest(make_settings):
    """TRIBUTARY_RANKING=linear serves a span_gated index by its linear influence."""
    with TestClient(create_app(make_settings(ranking="linear"))) as c:
        assert c.get("/v1/index").json()["ranking"] == "linear"
        body = c.post("/v1/attributions", json={**QA, "top_k": 3}).json()
        loaded = c.app.state.loaded
        from tributary_client.types import AttributionRequest
        from tributary_indexer.data.batching import collate

        ex = loaded.engine.prepare(AttributionRequest(**QA)).tokens.example
        q = (
            loaded.index.space.query(
                loaded.engine.computer.compute(collate([ex], loaded.engine.pad_id)).vectors
            )[0]
            .float()
            .numpy()
        )
        every = loaded.index.stored_vectors(np.arange(loaded.index.n_examples)) @ q
        assert [e["example_id"] for e in body["examples"]] == np.argsort(-every, kind="stable")[
            :3
        ].tolist()


def test_ranking_constants_from_the_settings_override_the_manifest(make_settings):
    """TRIBUTARY_SATURATION=10 ranks by span_gated with k = 10, not the manifest's 30."""
    with TestClient(create_app(make_settings(saturation=10.0))) as c:
        assert c.app.state.loaded.index.ranking_config.saturation == 10.0
        body = c.post("/v1/attributions", json={**QA, "top_k": 5}).json()
        every = _saturated_oracle(c.app.state.loaded, QA)
        assert [e["example_id"] for e in body["examples"]] == np.argsort(-every, kind="stable")[
            :5
        ].tolist()
        np.testing.assert_allclose(
            [e["score"] for e in body["examples"]], np.sort(every)[::-1][:5], rtol=1e-5
        )
    with TestClient(create_app(make_settings())) as c:
        theirs = _saturated_oracle(c.app.state.loaded, QA)
    assert not np.allclose(np.sort(theirs)[::-1][:5], np.sort(every)[::-1][:5]), (
        "k = 10 and 30 must differ here"
    )


def test_linear_ranking_index_matches_a_dense_scan(tmp_path, built_index):
    """An index built with ranking='linear' (or before rankings existed) ranks by the influence
    itself."""
    from tributary_indexer.build.builder import IndexBuilder
    from tributary_indexer.config import BuildConfig
    from tributary_service.settings import ServiceSettings

    _, model = built_index
    corpus = tmp_path / "corpus.jsonl"
    from tests.index_fixtures import corpus_records, write_jsonl

    write_jsonl(corpus, corpus_records(30))
    IndexBuilder(
        BuildConfig(
            model=str(model),
            corpus=[str(corpus)],
            rank_in=4,
            rank_out=4,
            progress=False,
            damping=0.01,
            ranking="linear",
        ),
        tmp_path / "linear",
    ).build()
    settings = ServiceSettings(
        index=tmp_path / "linear", model=model, state_dir=tmp_path / "state", batch_window_ms=1.0
    )
    with TestClient(create_app(settings)) as c:
        body = c.post("/v1/attributions", json={**QA, "top_k": 5}).json()
        assert c.get("/v1/index").json()["ranking"] == "linear"
        loaded = c.app.state.loaded
        prepared = loaded.engine.prepare(
            __import__("tributary_client").types.AttributionRequest(**QA)
        )
        from tributary_indexer.data.batching import collate

        g = loaded.engine.computer.compute(
            collate([prepared.tokens.example], loaded.engine.pad_id)
        ).vectors
        q = loaded.index.space.query(g)[0].float().numpy()
        every = loaded.index.stored_vectors(np.arange(loaded.index.n_examples)) @ q
        assert [e["example_id"] for e in body["examples"]] == np.argsort(-every, kind="stable")[
            :5
        ].tolist()
        np.testing.assert_allclose(
            [e["score"] for e in body["examples"]], np.sort(every)[::-1][:5], rtol=1e-5
        )


def test_harmful_and_both_directions(client):
    harmful = client.post(
        "/v1/attributions", json={**QA, "top_k": 3, "direction": "harmful"}
    ).json()
    helpful = client.post("/v1/attributions", json={**QA, "top_k": 3}).json()
    both = client.post("/v1/attributions", json={**QA, "top_k": 3, "direction": "both"}).json()
    assert all(e["direction"] == "harmful" for e in harmful["examples"])
    assert [e["score"] for e in harmful["examples"]] == sorted(
        e["score"] for e in harmful["examples"]
    )
    assert harmful["examples"][0]["score"] <= helpful["examples"][-1]["score"]
    assert [e["example_id"] for e in both["examples"]] == [
        e["example_id"] for e in helpful["examples"] + harmful["examples"]
    ]


def test_messages_and_filters(client):
    body = client.post(
        "/v1/attributions",
        json={
            "messages": [
                {"role": "user", "content": "Where did Cyra live in year 1002?"},
                {"role": "assistant", "content": "Cyra lived in Mebbe."},
            ],
            "top_k": 4,
            "filters": {"provider": ["acme"], "source": ["corpus"]},
        },
    ).json()
    assert len(body["examples"]) == 4 and {e["provider"] for e in body["examples"]} == {"acme"}
    none = client.post("/v1/attributions", json={**QA, "filters": {"provider": ["nobody"]}}).json()
    assert none["examples"] == []


def test_token_wise_scores_add_up(client):
    body = client.post("/v1/attributions", json={**QA, "top_k": 3, "token_wise": True}).json()
    tokens = body["response_token_scores"]
    assert "".join(t["token"] for t in tokens) == QA["response"]
    assert all(QA["response"][t["start"] : t["end"]] == t["token"] for t in tokens)
    for example in body["examples"]:
        assert len(example["response_token_scores"]) == len(tokens)
        for t in example["token_scores"]:
            assert example["text"][t["start"] : t["end"]] == t["token"]
    summed = np.sum([e["response_token_scores"] for e in body["examples"]], axis=0)
    np.testing.assert_allclose([t["score"] for t in tokens], summed, rtol=1e-5, atol=1e-7)
    # training side: a document's emitted-token scores are shares of its linear influence (also
    # under the span_gated ranking, whose `score` is the saturated one), and sum to it
    assert body["examples"][0]["token_scores"], "token scores for the top example"
    from tributary_client.types import AttributionRequest
    from tributary_indexer.data.batching import collate

    loaded = client.app.state.loaded
    ex = loaded.engine.prepare(AttributionRequest(**QA)).tokens.example
    q = (
        loaded.index.space.query(
            loaded.engine.computer.compute(collate([ex], loaded.engine.pad_id)).vectors
        )[0]
        .float()
        .numpy()
    )
    influence = (
        loaded.index.stored_vectors(np.array([e["example_id"] for e in body["examples"]])) @ q
    )
    np.testing.assert_allclose(
        [sum(t["score"] for t in e["token_scores"]) for e in body["examples"]],
        influence,
        rtol=1e-4,
        atol=1e-6,
    )


def test_examples_and_index_info(client):
    example = client.get("/v1/examples/1").json()
    assert (
        example["example_id"] == 1
        and example["provider"] == "globex"
        and example["metadata"] == {"topic": "trade"}
    )
    info = client.get("/v1/index").json()
    assert info["n_examples"] == 60 and info["shards"] == 3 and info["score_variant"] == "influence"
    err = _error(client.get("/v1/examples/999"), 404, "not_found_error")
    assert "0 to 59" in err["message"] and err["param"] == "example_id"


def test_record_ids_and_lookup(client):
    """The corpus's own ids and file:line come back on every example, and find the example again."""
    example = client.get("/v1/examples/1").json()
    assert (
        example["record_id"] == "qa-1"
        and example["file"] == "corpus.jsonl"
        and example["line"] == 2
    )
    body = client.post("/v1/attributions", json={**QA, "top_k": 5}).json()
    for e in body["examples"]:
        kind = ("doc", "qa", "chat")[e["example_id"] % 3]
        assert e["record_id"] == f"{kind}-{e['example_id']}" and e["file"] == "corpus.jsonl"
        assert e["line"] == e["example_id"] + 1
        found = client.get("/v1/examples", params={"record_id": e["record_id"]})
        assert found.status_code == 200 and found.json()["example_id"] == e["example_id"]
    err = _error(client.get("/v1/examples", params={"record_id": "qa-999"}), 404, "not_found_error")
    assert "qa-999" in err["message"] and err["param"] == "record_id"
    err = _error(client.get("/v1/examples"), 400, "invalid_request_error")
    assert err["code"] == "missing_record_id"
    err = _error(
        client.get("/v1/examples", params={"record_id": "x" * 2000}), 400, "invalid_request_error"
    )
    assert err["code"] == "invalid_record_id"
    info = client.get("/v1/index").json()
    by_provider = {
        row["key"]: row["examples"] for row in info["composition"] if row["group_by"] == "provider"
    }
    assert by_provider == {"acme": 20, "globex": 20, "initech": 20}
    assert sum(row["examples"] for row in info["composition"] if row["group_by"] == "source") == 60


@pytest.mark.parametrize(
    "payload, param, needle",
    [
        ({"prompt": "hi"}, None, "response"),
        ({"top_k": 3}, None, "prompt"),
        ({**QA, "topk": 3}, "topk", "Extra inputs"),
        ({**QA, "top_k": 0}, "top_k", "greater than"),
        ({**QA, "top_k": 101}, "top_k", "limit of 100"),
        ({**QA, "direction": "sideways"}, "direction", "helpful"),
        ({"prompt": "x", "response": "   "}, "response", "empty"),
        ({"messages": [{"role": "user", "content": "hi"}]}, None, "assistant"),
    ],
)
def test_bad_requests_get_a_400_envelope_that_says_what_to_fix(client, payload, param, needle):
    err = _error(client.post("/v1/attributions", json=payload), 400, "invalid_request_error")
    assert needle in err["message"]
    if param:
        assert err["param"] == param


def test_limits_and_routes(make_settings):
    with TestClient(create_app(make_settings(max_request_tokens=16, max_body_bytes=2048))) as c:
        err = _error(
            c.post(
                "/v1/attributions",
                json={"prompt": "word " * 40, "response": " Alba sold lanterns."},
            ),
            400,
            "invalid_request_error",
        )
        assert err["code"] == "too_many_tokens" and "limit of 16" in err["message"]
        err = _error(
            c.post("/v1/attributions", json={**QA, "prompt": "x" * 5000}),
            413,
            "invalid_request_error",
        )
        assert "limit of 2048" in err["message"]
        _error(c.get("/v1/nothing"), 404, "not_found_error")
        _error(
            c.post(
                "/v1/attributions",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            400,
            "invalid_request_error",
        )
        _error(c.post("/v1/generate", json={"prompt": "hi"}), 404, "not_found_error")


def test_a_request_longer_than_the_model_context_is_a_400_not_a_crash(client):
    """The fixture model has 256 positions and the server allows 1,024 request tokens: the model's
    context is the limit, refused with the fix like any other over-long request."""
    assert client.app.state.loaded.model.config.n_positions == 256
    err = _error(
        client.post(
            "/v1/attributions", json={"prompt": "word " * 120, "response": " Alba sold lanterns."}
        ),
        400,
        "invalid_request_error",
    )
    assert (
        err["code"] == "too_many_tokens"
        and "limit of 256" in err["message"]
        and "context" in err["message"]
    )
    assert client.post("/v1/attributions", json=QA).status_code == 200  # the server is still fine


def test_api_keys(make_settings):
    with TestClient(create_app(make_settings(api_keys=["s3cret", "other"]))) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        err = _error(c.get("/v1/index"), 401, "authentication_error")
        assert "Authorization: Bearer" in err["message"]
        err = _error(
            c.get("/v1/index", headers={"Authorization": "Bearer wrong"}),
            401,
            "authentication_error",
        )
        assert "wrong" not in err["message"]
        assert c.get("/v1/index", headers={"Authorization": "Bearer other"}).status_code == 200


def test_cors(make_settings):
    with TestClient(
        create_app(make_settings(cors_origins=["http://chat.example"], api_keys=["s3cret"]))
    ) as c:
        # a browser's preflight carries no key: it must pass, and refusals must still be readable
        # cross-origin
        resp = c.options(
            "/v1/attributions",
            headers={"Origin": "http://chat.example", "Access-Control-Request-Method": "POST"},
        )
        assert (
            resp.status_code == 200
            and resp.headers["access-control-allow-origin"] == "http://chat.example"
        )
        resp = c.post("/v1/attributions", json=QA, headers={"Origin": "http://chat.example"})
        _error(resp, 401, "authentication_error")
        assert resp.headers["access-control-allow-origin"] == "http://chat.example"


def test_unexpected_failure_is_a_500_envelope_with_the_request_id(make_settings, caplog):
    app = create_app(make_settings())

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as c:
        resp = c.get("/v1/boom", headers={"x-request-id": "req_trace_me"})
        err = _error(resp, 500, "server_error")
        assert resp.headers["x-request-id"] == "req_trace_me"
        assert "req_trace_me" in err["message"] and "secret" not in err["message"]
        assert c.get("/healthz").status_code == 200  # the server goes on
    assert "secret internals" in caplog.text  # the traceback is in the log, under the same id


def test_generate_and_metrics(make_settings):
    with TestClient(create_app(make_settings(enable_generate=True))) as c:
        out = c.post("/v1/generate", json={"prompt": "Alba sold", "max_new_tokens": 5}).json()
        assert out["n_tokens"] <= 5 and out["prompt"] == "Alba sold"
        c.post("/v1/attributions", json=QA)
        text = c.get("/metrics").text
        assert (
            'tributary_requests_total{method="POST",route="/v1/attributions",status="200"} 1.0'
            in text
        )
        assert "tributary_stage_seconds_bucket" in text and "tributary_index_examples 60.0" in text


def test_batch_job_lifecycle(client):
    lines = [{"custom_id": f"r{i}", "body": {**QA, "top_k": 2}} for i in range(5)]
    lines.append({"custom_id": "bad", "body": {"prompt": "x", "response": " "}})
    created = client.post(
        "/v1/batches", json={"requests": lines, "metadata": {"night": "1"}}
    ).json()
    assert (
        created["status"] in ("validating", "in_progress")
        and created["request_counts"]["total"] == 6
    )
    for _ in range(200):
        batch = client.get(f"/v1/batches/{created['id']}").json()
        if batch["status"] == "completed":
            break
        time.sleep(0.05)
    assert batch["status"] == "completed" and batch["request_counts"] == {
        "total": 6,
        "completed": 5,
        "failed": 1,
    }
    results = [
        __import__("json").loads(line)
        for line in client.get(f"/v1/batches/{created['id']}/results").text.splitlines()
    ]
    assert [r["custom_id"] for r in results] == [f"r{i}" for i in range(5)] + ["bad"]
    assert (
        results[-1]["error"]["type"] == "invalid_request_error"
        and results[0]["response"]["examples"]
    )
    _error(client.get("/v1/batches/batch_nope"), 404, "not_found_error")
    dup = [{"custom_id": "same", "body": QA}, {"custom_id": "same", "body": QA}]
    err = _error(client.post("/v1/batches", json={"requests": dup}), 400, "invalid_request_error")
    assert "same" in err["message"] and "unique" in err["message"]
    jsonl = "\n".join(__import__("json").dumps(line) for line in lines[:2])
    created = client.post(
        "/v1/batches", content=jsonl, headers={"content-type": "application/jsonl"}
    ).json()
    assert created["request_counts"]["total"] == 2
    err = _error(
        client.post("/v1/batches", content="{oops", headers={"content-type": "application/jsonl"}),
        400,
        "invalid_request_error",
    )
    assert "line 1" in err["message"]
