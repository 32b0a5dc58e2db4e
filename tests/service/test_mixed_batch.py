"""A micro-batch of *different* requests: each answer equals the one its request gets alone.

Requests of different lengths, directions, sizes, filters and token-wise flags go through one
forward/backward, one batched search and the per-request re-score together; a row mixed up
anywhere in that path (gradients, per-position terms, the reference shares, the search rows, the
re-score, the token-wise scores) would hand one request another's examples or scores.
"""

from __future__ import annotations

import numpy as np
import pytest
from tributary_client.types import AttributionRequest

REQUESTS = [
    {
        "prompt": "What did Alba sell in year 1001?",
        "response": " Alba sold lanterns.",
        "top_k": 5,
        "token_wise": True,
    },
    {
        "prompt": "Where does Cyra live?",
        "response": " Cyra lives in Mebbe, by the river, in year 1002.",
        "top_k": 3,
        "direction": "harmful",
    },
    {
        "prompt": "Tell me about trade.",
        "response": " Trade grew.",
        "top_k": 4,
        "direction": "both",
        "token_wise": True,
    },
    {
        "messages": [
            {"role": "user", "content": "Where did Cyra live in year 1002?"},
            {"role": "assistant", "content": "Cyra lived in Mebbe."},
        ],
        "top_k": 2,
        "filters": {"provider": ["acme"]},
        "token_wise": True,
    },
    {
        "prompt": "What did Alba sell in year 1001?",
        "response": " Alba sold lanterns in year 1001.",
        "top_k": 6,
    },
]


def _close(actual, desired) -> None:
    """Equal to float32 tolerance: relative 1e-4, or 1e-6 of the largest value (token-wise shares of
    large opposite sign cancel, so a small share carries the float32 noise of the large ones; a
    padded batch sums the gradient in another order than a lone request)."""
    desired = np.asarray(desired, dtype=np.float64)
    scale = float(np.abs(desired).max()) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=max(1e-7, 1e-6 * scale))


def _same(alone, together) -> None:
    assert [e.example_id for e in together.examples] == [e.example_id for e in alone.examples]
    assert [e.direction for e in together.examples] == [e.direction for e in alone.examples]
    _close([e.score for e in together.examples], [e.score for e in alone.examples])
    assert (together.response_token_scores is None) == (alone.response_token_scores is None)
    if alone.response_token_scores is not None:
        assert [t.token for t in together.response_token_scores] == [
            t.token for t in alone.response_token_scores
        ]
        _close(
            [t.score for t in together.response_token_scores],
            [t.score for t in alone.response_token_scores],
        )
    for a, b in zip(alone.examples, together.examples):
        assert (a.token_scores is None) == (b.token_scores is None)
        if a.token_scores is not None:
            assert [(t.start, t.end) for t in b.token_scores] == [
                (t.start, t.end) for t in a.token_scores
            ]
            _close([t.score for t in b.token_scores], [t.score for t in a.token_scores])
        if a.response_token_scores is not None:
            _close(b.response_token_scores, a.response_token_scores)


@pytest.mark.parametrize("ranking", ["span_gated", "linear"])
def test_different_requests_in_one_micro_batch_equal_each_alone(make_settings, ranking):
    from fastapi.testclient import TestClient
    from tributary_service.app import create_app

    with TestClient(create_app(make_settings(ranking=ranking))) as c:
        engine = c.app.state.loaded.engine
        prepared = [engine.prepare(AttributionRequest(**r)) for r in REQUESTS]
        assert len({p.n_tokens for p in prepared}) >= 4, (
            "the requests must differ in length (padding is exercised)"
        )
        together = engine.attribute(prepared)
        alone = [engine.attribute([engine.prepare(AttributionRequest(**r))])[0] for r in REQUESTS]
        for request, a, t in zip(REQUESTS, alone, together):
            assert a.examples, f"{request} found nothing: the comparison would be empty"
            _same(a, t)
        # the answers differ between requests, so a swap of rows would have been seen
        assert len({tuple(e.example_id for e in a.examples) for a in alone}) == len(REQUESTS)
        # and in reverse order: each request keeps its own answer wherever it sits in the batch
        for a, t in zip(alone, reversed(engine.attribute(prepared[::-1]))):
            _same(a, t)
