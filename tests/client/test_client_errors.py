"""Error envelope -> exception class mapping."""

from __future__ import annotations

import httpx
import pytest
import tributary_client as tc
from client_fakes import BASE_URL, envelope


def _client(handler, **kw) -> tc.Client:
    c = tc.Client(BASE_URL, transport=httpx.MockTransport(handler), max_retries=0, **kw)
    c._sleep = lambda s: None  # type: ignore[method-assign]
    return c


@pytest.mark.parametrize(
    ("status", "type_", "cls"),
    [
        (400, "invalid_request_error", tc.BadRequestError),
        (422, "invalid_request_error", tc.BadRequestError),
        (401, "authentication_error", tc.AuthenticationError),
        (403, "authentication_error", tc.AuthenticationError),
        (404, "not_found_error", tc.NotFoundError),
        (429, "rate_limit_error", tc.RateLimitError),
        (503, "unavailable_error", tc.UnavailableError),
        (500, "server_error", tc.InternalServerError),
    ],
)
def test_envelope_type_maps_to_class(status: int, type_: str, cls: type) -> None:
    c = _client(
        lambda r: envelope(
            status, "what to fix", type_, param="top_k", code="c1", request_id="req-42"
        )
    )
    with pytest.raises(cls) as info:
        c.index_info()
    err = info.value
    assert type(err) is cls
    assert isinstance(err, tc.APIError) and isinstance(err, tc.TributaryError)
    assert (err.status_code, err.type, err.param, err.code) == (status, type_, "top_k", "c1")
    assert err.request_id == "req-42"
    assert err.message == "what to fix"
    assert err.body["error"]["type"] == type_
    assert "req-42" in str(err) and "what to fix" in str(err)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, tc.BadRequestError),
        (422, tc.BadRequestError),
        (401, tc.AuthenticationError),
        (403, tc.AuthenticationError),
        (404, tc.NotFoundError),
        (429, tc.RateLimitError),
        (503, tc.UnavailableError),
        (500, tc.InternalServerError),
        (502, tc.InternalServerError),
        (409, tc.APIError),
        (418, tc.APIError),
    ],
)
def test_status_maps_to_class_without_envelope(status: int, cls: type) -> None:
    c = _client(
        lambda r: httpx.Response(
            status, text="<html>proxy says no</html>", headers={"x-request-id": "r-1"}
        )
    )
    with pytest.raises(tc.APIError) as info:
        c.get_example(1)
    assert type(info.value) is cls
    assert info.value.status_code == status and info.value.request_id == "r-1"
    assert "proxy says no" in info.value.message
    assert info.value.type is None


def test_type_wins_over_status() -> None:
    c = _client(lambda r: envelope(500, "bad top_k", "invalid_request_error"))
    with pytest.raises(tc.BadRequestError):
        c.index_info()
    c = _client(lambda r: envelope(400, "gone", "not_found_error"))
    with pytest.raises(tc.NotFoundError):
        c.index_info()


def test_unknown_type_falls_back_to_status() -> None:
    c = _client(lambda r: envelope(404, "nope", "brand_new_error"))
    with pytest.raises(tc.NotFoundError) as info:
        c.index_info()
    assert info.value.type == "brand_new_error"


def test_fastapi_detail_body_is_readable() -> None:
    detail = {
        "detail": [{"loc": ["body", "top_k"], "msg": "Input should be greater than or equal to 1"}]
    }
    c = _client(lambda r: httpx.Response(422, json=detail))
    with pytest.raises(tc.BadRequestError) as info:
        c.index_info()
    assert info.value.message == "top_k: Input should be greater than or equal to 1"
    assert info.value.request_id is None


def test_empty_error_body_gets_status_message() -> None:
    c = _client(lambda r: httpx.Response(404))
    with pytest.raises(tc.NotFoundError, match="HTTP 404 Not Found"):
        c.index_info()


def test_not_found_from_fake(client: tc.Client) -> None:
    with pytest.raises(tc.NotFoundError, match="no example with id 5000"):
        client.get_example(5000)


def test_invalid_success_body_is_response_validation_error() -> None:
    c = _client(
        lambda r: httpx.Response(200, json={"index_id": "x"}, headers={"x-request-id": "q"})
    )
    with pytest.raises(tc.APIResponseValidationError) as info:
        c.index_info()
    assert info.value.request_id == "q" and "/v1/index" in str(info.value)
    c = _client(lambda r: httpx.Response(200, text="not json"))
    with pytest.raises(tc.APIResponseValidationError, match="not JSON"):
        c.index_info()


def test_connection_and_timeout_errors() -> None:
    def refuse(r: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=r)

    def slow(r: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=r)

    with pytest.raises(tc.APIConnectionError) as info:
        _client(refuse).index_info()
    assert not isinstance(info.value, tc.APITimeoutError)
    assert info.value.status_code is None and BASE_URL in str(info.value)
    with pytest.raises(tc.APITimeoutError):
        _client(slow).index_info()
    assert issubclass(tc.APITimeoutError, tc.APIConnectionError)
    assert issubclass(tc.APIConnectionError, tc.APIError)
