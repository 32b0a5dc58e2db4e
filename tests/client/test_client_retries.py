"""Retry policy (shared by Client and AsyncClient): what is retried, how long it waits."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Callable

import httpx
import pytest
import tributary_client as tc
from client_fakes import BASE_URL, FakeTributary, envelope
from tributary_client._base_client import parse_retry_after


def _flaky(
    failures: list[httpx.Response | Exception],
) -> Callable[[httpx.Request], httpx.Response | None]:
    """A hook that answers with the given failures first, then lets the fake answer."""
    queue = list(failures)

    def hook(request: httpx.Request) -> httpx.Response | None:
        if not queue:
            return None
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return hook


def test_429_retry_after_seconds_is_honoured(
    client: tc.Client, fake: FakeTributary, delays: list[float]
) -> None:
    fake.on_request = _flaky(
        [envelope(429, "slow down", "rate_limit_error", headers={"retry-after": "3"})]
    )
    info = client.index_info()
    assert info.index_id == "idx-test"
    assert delays == [3.0]
    assert len(fake.requests) == 2


def test_retry_after_ms_and_http_date(
    client: tc.Client, fake: FakeTributary, delays: list[float]
) -> None:
    fake.on_request = _flaky(
        [envelope(429, "x", "rate_limit_error", headers={"retry-after-ms": "250"})]
    )
    client.index_info()
    assert delays == [0.25]
    when = email.utils.formatdate(1_000_010.0, usegmt=True)
    assert parse_retry_after({"retry-after": when}, now=1_000_000.0) == pytest.approx(10.0)
    assert parse_retry_after({"retry-after": when}, now=2_000_000.0) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_retry_after_is_capped(fake: FakeTributary, delays: list[float]) -> None:
    c = tc.Client(BASE_URL, transport=httpx.MockTransport(fake), max_retry_after=20)
    c._sleep = delays.append  # type: ignore[method-assign]
    fake.on_request = _flaky(
        [envelope(503, "busy", "unavailable_error", headers={"retry-after": "3600"})]
    )
    c.index_info()
    assert delays == [20]


def test_503_retried_with_exponential_backoff(
    client: tc.Client, fake: FakeTributary, delays: list[float]
) -> None:
    fake.on_request = _flaky([envelope(503, "warming up", "unavailable_error")] * 2)
    assert client.get_example(3).example_id == 3
    assert len(delays) == 2
    assert 0.375 <= delays[0] <= 0.5 and 0.75 <= delays[1] <= 1.0  # 0.5 * 2^n, jitter <= 25 %


def test_connection_error_then_success(
    client: tc.Client, fake: FakeTributary, delays: list[float]
) -> None:
    fake.on_request = _flaky([httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
    assert client.attribute("p", "r", top_k=2).index_id == "idx-test"
    assert len(delays) == 2 and len(fake.requests) == 3


def test_no_retry_on_400(client: tc.Client, fake: FakeTributary, delays: list[float]) -> None:
    with pytest.raises(tc.BadRequestError) as info:
        client.attribute("p", "REJECT-ME")
    assert info.value.param == "response" and info.value.code == "too_long"
    assert delays == [] and len(fake.requests) == 1


@pytest.mark.parametrize("max_retries", [0, 1, 4])
def test_max_retries_respected(fake: FakeTributary, max_retries: int) -> None:
    fake.on_request = lambda r: envelope(503, "down", "unavailable_error")
    delays: list[float] = []
    c = tc.Client(BASE_URL, transport=httpx.MockTransport(fake), max_retries=max_retries)
    c._sleep = delays.append  # type: ignore[method-assign]
    with pytest.raises(tc.UnavailableError):
        c.index_info()
    assert len(fake.requests) == max_retries + 1 and len(delays) == max_retries


def test_with_options_overrides_retries_and_shares_pool(
    client: tc.Client, fake: FakeTributary
) -> None:
    fake.on_request = lambda r: httpx.Response(500)
    patient = client.with_options(max_retries=5)
    patient._sleep = lambda s: None  # type: ignore[method-assign]
    assert patient._http is client._http and patient.max_retries == 5 and client.max_retries == 2
    with pytest.raises(tc.InternalServerError):
        patient.index_info()
    assert len(fake.requests) == 6
    patient.close()  # does not close the shared pool
    fake.on_request = None
    assert client.index_info().shards == 2


def test_connection_error_gives_up_after_retries(
    client: tc.Client, fake: FakeTributary, delays: list[float]
) -> None:
    fake.on_request = _flaky([httpx.ConnectError("refused")] * 10)
    with pytest.raises(tc.APIConnectionError):
        client.index_info()
    assert len(fake.requests) == 3 and len(delays) == 2


def test_server_can_veto_or_force_retry(client: tc.Client, fake: FakeTributary) -> None:
    fake.on_request = _flaky(
        [envelope(503, "no", "unavailable_error", headers={"x-should-retry": "false"})]
    )
    with pytest.raises(tc.UnavailableError):
        client.index_info()
    assert len(fake.requests) == 1
    fake.on_request = _flaky(
        [envelope(400, "retry me", "invalid_request_error", headers={"x-should-retry": "true"})]
    )
    client.index_info()
    assert len(fake.requests) == 3


def test_retries_408_and_409(client: tc.Client, fake: FakeTributary) -> None:
    fake.on_request = _flaky([httpx.Response(408), httpx.Response(409)])
    client.index_info()
    assert len(fake.requests) == 3


def test_idempotency_key_stable_across_retries(client: tc.Client, fake: FakeTributary) -> None:
    fake.on_request = _flaky([httpx.Response(502)])
    client.attribute("p", "r")
    first, second = fake.requests
    key = first.headers["idempotency-key"]
    assert key.startswith("tributary-") and second.headers["idempotency-key"] == key
    assert "x-retry-count" not in first.headers and second.headers["x-retry-count"] == "1"
    client.attribute("p", "r")
    assert fake.requests[2].headers["idempotency-key"] != key
    client.index_info()
    assert "idempotency-key" not in fake.requests[3].headers


def test_headers_and_env_config(monkeypatch: pytest.MonkeyPatch, fake: FakeTributary) -> None:
    monkeypatch.setenv("TRIBUTARY_BASE_URL", "http://from-env:9000/")
    monkeypatch.setenv("TRIBUTARY_API_KEY", "sk-env")
    c = tc.Client(transport=httpx.MockTransport(fake))
    assert c.base_url == "http://from-env:9000"
    c.index_info()
    req = fake.requests[0]
    assert str(req.url) == "http://from-env:9000/v1/index"
    assert req.headers["authorization"] == "Bearer sk-env"
    assert req.headers["user-agent"] == f"tributary-client/{tc.__version__}"
    assert c.timeout.connect == 5.0 and c.timeout.read == 60.0
    monkeypatch.delenv("TRIBUTARY_API_KEY")
    monkeypatch.delenv("TRIBUTARY_BASE_URL")
    c2 = tc.Client(transport=httpx.MockTransport(fake))
    c2.index_info()
    assert c2.base_url == tc.DEFAULT_BASE_URL and "authorization" not in fake.requests[1].headers
    with pytest.raises(ValueError, match="http://"):
        tc.Client("localhost:8000")


# --------------------------------------------------------------------------- async


def test_async_retries_and_errors(
    make_async_client, fake: FakeTributary, delays: list[float]
) -> None:
    async def scenario() -> None:
        async with make_async_client() as c:
            fake.on_request = _flaky(
                [
                    envelope(429, "slow", "rate_limit_error", headers={"retry-after": "2"}),
                    envelope(503, "busy", "unavailable_error"),
                    httpx.ConnectError("refused"),
                ]
            )
            with pytest.raises(tc.APIConnectionError):  # 3 failures > 2 retries
                await c.index_info()
            assert delays[0] == 2.0 and len(delays) == 2
            fake.on_request = _flaky([httpx.ConnectError("refused")])
            result = await c.attribute("p", "r", top_k=3)
            assert len(result.examples) == 3
            fake.on_request = None
            with pytest.raises(tc.BadRequestError) as info:
                await c.attribute("p", "REJECT-ME")
            assert info.value.request_id == "req-test"
            n = len(fake.requests)
            with pytest.raises(tc.NotFoundError):
                await c.get_example(4242)
            assert len(fake.requests) == n + 1  # no retry on 404
            patient = c.with_options(max_retries=0)
            fake.on_request = lambda r: httpx.Response(503)
            with pytest.raises(tc.UnavailableError):
                await patient.index_info()
            assert len(fake.requests) == n + 2

    asyncio.run(scenario())
