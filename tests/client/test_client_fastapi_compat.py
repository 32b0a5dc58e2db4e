"""The wire types work as FastAPI models, and the client reads FastAPI's answers.

The app runs under a real uvicorn server on 127.0.0.1 (in a thread) and the client talks to it
over HTTP. Skipped where FastAPI or uvicorn is not installed (the client itself needs neither).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

import tributary_client as tc  # noqa: E402
from client_fakes import fake_attribution  # noqa: E402
from tributary_client import types  # noqa: E402


def _app() -> fastapi.FastAPI:
    app = fastapi.FastAPI()

    @app.post("/v1/attributions", response_model=types.AttributionResponse)
    def attribute(body: types.AttributionRequest) -> types.AttributionResponse:
        return types.AttributionResponse.model_validate(fake_attribution(body.model_dump()))

    return app


@pytest.fixture
def base_url() -> Iterator[str]:
    """The URL of `_app()` served by uvicorn on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30.0
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_types_as_fastapi_models(base_url: str) -> None:
    with tc.Client(base_url, max_retries=0) as client:
        result = client.attribute(
            messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            top_k=2,
        )
    assert len(result.examples) == 2

    with httpx.Client(base_url=base_url) as http:
        # a request that skips client-side validation gets FastAPI's 422, read as BadRequestError
        response = http.post(
            "/v1/attributions", json={"messages": [{"role": "user", "content": "q"}]}
        )
        assert response.status_code == 422
        err = tc._exceptions.make_status_error(response)
        assert isinstance(err, tc.BadRequestError)
        assert err.message.startswith("the last message must be the response")

        schema = http.get("/openapi.json").json()["components"]["schemas"]
    assert "more likely" in schema["AttributedExample"]["properties"]["score"]["description"]
    assert "description" in schema["AttributionRequest"]["properties"]["top_k"]


def test_http_client_must_be_httpx() -> None:
    """A look-alike HTTP client is refused up front, with the way to test in-process."""
    from fastapi.testclient import TestClient

    look_alikes: list[object] = [object(), httpx.AsyncClient()]
    if not isinstance(TestClient(_app()), httpx.Client):  # Starlette >= 1.0 builds it on httpx2
        look_alikes.append(TestClient(_app()))
    for look_alike in look_alikes:
        with pytest.raises(TypeError, match=r"http_client must be an httpx\.Client.*uvicorn"):
            tc.Client("http://testserver", http_client=look_alike)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"http_client must be an httpx\.AsyncClient"):
        tc.AsyncClient("http://testserver", http_client=httpx.Client())  # type: ignore[arg-type]
