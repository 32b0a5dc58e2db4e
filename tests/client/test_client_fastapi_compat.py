"""The wire types work as FastAPI models, and the client reads FastAPI's answers.

Skipped where FastAPI is not installed (the client itself never needs it)."""

from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
testclient = pytest.importorskip("fastapi.testclient")

import tributary_client as tc  # noqa: E402
from client_fakes import fake_attribution  # noqa: E402
from tributary_client import types  # noqa: E402


def _app() -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.post("/v1/attributions", response_model=types.AttributionResponse)
    def attribute(body: types.AttributionRequest) -> types.AttributionResponse:
        return types.AttributionResponse.model_validate(fake_attribution(body.model_dump()))

    return app


def test_types_as_fastapi_models() -> None:
    http = testclient.TestClient(_app(), base_url="http://testserver")
    client = tc.Client("http://testserver", http_client=http, max_retries=0)
    result = client.attribute(
        messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], top_k=2
    )
    assert len(result.examples) == 2

    # a request that skips client-side validation gets FastAPI's 422, read as BadRequestError
    response = http.post("/v1/attributions", json={"messages": [{"role": "user", "content": "q"}]})
    assert response.status_code == 422
    err = tc._exceptions.make_status_error(response)
    assert isinstance(err, tc.BadRequestError)
    assert err.message.startswith("the last message must be the response")

    schema = http.get("/openapi.json").json()["components"]["schemas"]
    assert "more likely" in schema["AttributedExample"]["properties"]["score"]["description"]
    assert "description" in schema["AttributionRequest"]["properties"]["top_k"]
