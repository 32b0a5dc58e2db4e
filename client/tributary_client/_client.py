"""`Client` (blocking) and `AsyncClient` (asyncio) for the Tributary REST API.

Both get their request specs, retry decisions and parsing from `_BaseClient`; the only code
here is how a request is sent and how the client sleeps between retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from ._base_client import (
    DEFAULT_MAX_RETRIES,
    MAX_RETRY_AFTER,
    BatchRequestsArg,
    MessagesArg,
    ModelT,
    RequestSpec,
    _BaseClient,
)
from .types import (
    AttributionRequest,
    AttributionResponse,
    Batch,
    BatchResultLine,
    Direction,
    Example,
    GenerateResponse,
    IndexInfo,
    RemovalResponse,
)

logger = logging.getLogger(__name__)

__all__ = ["AsyncClient", "Client"]

_HttpClientT = TypeVar("_HttpClientT", httpx.Client, httpx.AsyncClient)


def _checked_http_client(http_client: object, expected: type[_HttpClientT]) -> _HttpClientT:
    """`http_client` itself, or a TypeError when it is not the httpx class the SDK drives.

    Look-alikes fail later and obscurely (their timeouts, errors and responses are other
    classes), so they are refused here: Starlette's ``TestClient`` is one, built on httpx2.
    """
    if not isinstance(http_client, expected):
        kind = type(http_client)
        raise TypeError(
            f"http_client must be an {expected.__module__}.{expected.__name__}, got "
            f"{kind.__module__}.{kind.__qualname__}; to test against an app in-process, serve it "
            "with uvicorn on 127.0.0.1 and pass its URL as base_url, or pass "
            f"transport= (an httpx transport) instead of http_client"
        )
    return http_client


class Client(_BaseClient[httpx.Client]):
    """Blocking client; thread-safe (one instance can serve a thread pool).

    >>> with Client("http://127.0.0.1:8000") as client:           # doctest: +SKIP
    ...     result = client.attribute("2+2=", "4", top_k=5)

    `base_url` defaults to ``$TRIBUTARY_BASE_URL`` (else http://127.0.0.1:8000) and
    `api_key` to ``$TRIBUTARY_API_KEY``. Pass `http_client` (an ``httpx.Client`` you own) or
    `transport` (e.g. ``httpx.MockTransport`` in tests) to control the HTTP layer.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            http_client=http_client,
            max_retry_after=max_retry_after,
        )
        if http_client is not None and transport is not None:
            raise ValueError("give either http_client or transport, not both")
        if http_client is not None:
            self._http, self._owns_http = _checked_http_client(http_client, httpx.Client), False
        else:
            self._http, self._owns_http = (
                httpx.Client(transport=transport, timeout=self.timeout),
                True,
            )

    # ------------------------------------------------------------------ I/O

    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _send(self, spec: RequestSpec[Any], *, stream: bool = False) -> httpx.Response:
        idem_key = self._idempotency_key(spec)
        retries = 0
        while True:
            request = self._build_request(spec, retries, idem_key)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.RequestError as exc:
                delay = self._delay_after_exception(exc, retries)
                if delay is None:
                    raise self._connection_error(exc, spec) from exc
                why = type(exc).__name__
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                delay = self._delay_after_status(response, retries)
                if delay is None:
                    raise self._status_error(response)
                why = f"HTTP {response.status_code}"
            self._log_retry(spec, retries, delay, why)
            self._sleep(delay)
            retries += 1

    def _request(self, spec: RequestSpec[ModelT]) -> ModelT:
        return self._parse(spec, self._send(spec))

    def _stream(self, spec: RequestSpec[ModelT]) -> Iterator[ModelT]:
        response = self._send(spec, stream=True)
        try:
            for n, line in enumerate(response.iter_lines(), start=1):
                if line.strip():
                    yield self._parse_line(spec, response, line, n)
        except httpx.RequestError as exc:
            raise self._connection_error(exc, spec) from exc
        finally:
            response.close()

    def close(self) -> None:
        """Close the connection pool (unless it was passed in by the caller)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ API

    def attribute(
        self,
        prompt: str | None = None,
        response: str | None = None,
        *,
        messages: MessagesArg | None = None,
        top_k: int = 10,
        direction: Direction = "helpful",
        token_wise: bool = False,
        source: str | Sequence[str] | None = None,
        provider: str | Sequence[str] | None = None,
        verbatim: bool = True,
        evidence: bool = False,
    ) -> AttributionResponse:
        """Rank the training examples that made the model produce `response` (or the last,
        assistant, message of `messages`). Raises `RequestValidationError` on bad input."""
        request = self._build_attribution_request(
            prompt,
            response,
            messages=messages,
            top_k=top_k,
            direction=direction,
            token_wise=token_wise,
            source=source,
            provider=provider,
            verbatim=verbatim,
            evidence=evidence,
        )
        return self.attribute_request(request)

    def attribute_request(self, request: AttributionRequest) -> AttributionResponse:
        """POST a ready-made `AttributionRequest` (what `attribute` builds from arguments)."""
        return self._request(self._attribute_spec(request))

    def get_example(self, example_id: int) -> Example:
        """Fetch one training example by its global id."""
        return self._request(self._get_example_spec(example_id))

    def get_example_by_record_id(self, record_id: str) -> Example:
        """Fetch one training example by its record's own `id` in the corpus
        (`Example.record_id`)."""
        return self._request(self._find_example_spec(record_id))

    def index_info(self) -> IndexInfo:
        """Summary of the index the server answers from."""
        return self._request(self._index_info_spec())

    def remove_examples(
        self,
        *,
        record_ids: Sequence[str] | None = None,
        provider: str | None = None,
        source: str | None = None,
        reason: str | None = None,
    ) -> RemovalResponse:
        """Take examples out of every answer (exactly one selector; needs an admin key as
        `api_key`)."""
        return self._request(self._removal_spec(record_ids, provider, source, reason))

    def generate(
        self,
        prompt: str | None = None,
        *,
        messages: MessagesArg | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
    ) -> GenerateResponse:
        """Let the indexed model answer `prompt`/`messages` (then attribute the answer).

        `stop`: strings that end the reply (`index_info().prompting.stop` for the trained format).
        """
        return self._request(
            self._generate_spec(prompt, messages, max_new_tokens, temperature, stop)
        )

    def create_batch(
        self, requests: BatchRequestsArg, metadata: Mapping[str, Any] | None = None
    ) -> Batch:
        """Submit a server-side batch job; `requests` holds `BatchRequestLine`s, dicts or
        ``(custom_id, AttributionRequest)`` pairs (what `logs.iter_logged_generations` yields)."""
        return self._request(self._create_batch_spec(requests, metadata))

    def get_batch(self, batch_id: str) -> Batch:
        """Current state of a batch job."""
        return self._request(self._get_batch_spec(batch_id))

    def cancel_batch(self, batch_id: str) -> Batch:
        """Ask the server to cancel a batch job."""
        return self._request(self._cancel_batch_spec(batch_id))

    def iter_batch_results(self, batch_id: str) -> Iterator[BatchResultLine]:
        """Stream the JSONL results of a batch; the request is sent when iteration starts."""
        return self._stream(self._batch_results_spec(batch_id))

    def wait_for_batch(
        self, batch_id: str, poll_interval: float = 1.0, timeout: float | None = None
    ) -> Batch:
        """Poll until the batch is completed, failed or cancelled; TimeoutError after
        `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = self.get_batch(batch_id)
            if batch.is_terminal:
                return batch
            self._sleep(self._poll_delay(batch, deadline, poll_interval, timeout))


class AsyncClient(_BaseClient[httpx.AsyncClient]):
    """asyncio client with the same methods as `Client` (awaitable)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_retry_after: float = MAX_RETRY_AFTER,
    ) -> None:
        super().__init__(
            base_url,
            api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            http_client=http_client,
            max_retry_after=max_retry_after,
        )
        if http_client is not None and transport is not None:
            raise ValueError("give either http_client or transport, not both")
        if http_client is not None:
            self._http = _checked_http_client(http_client, httpx.AsyncClient)
            self._owns_http = False
        else:
            self._http = httpx.AsyncClient(transport=transport, timeout=self.timeout)
            self._owns_http = True

    # ------------------------------------------------------------------ I/O

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def _send(self, spec: RequestSpec[Any], *, stream: bool = False) -> httpx.Response:
        idem_key = self._idempotency_key(spec)
        retries = 0
        while True:
            request = self._build_request(spec, retries, idem_key)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.RequestError as exc:
                delay = self._delay_after_exception(exc, retries)
                if delay is None:
                    raise self._connection_error(exc, spec) from exc
                why = type(exc).__name__
            else:
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                delay = self._delay_after_status(response, retries)
                if delay is None:
                    raise self._status_error(response)
                why = f"HTTP {response.status_code}"
            self._log_retry(spec, retries, delay, why)
            await self._sleep(delay)
            retries += 1

    async def _request(self, spec: RequestSpec[ModelT]) -> ModelT:
        return self._parse(spec, await self._send(spec))

    async def _stream(self, spec: RequestSpec[ModelT]) -> AsyncIterator[ModelT]:
        response = await self._send(spec, stream=True)
        try:
            n = 0
            async for line in response.aiter_lines():
                n += 1
                if line.strip():
                    yield self._parse_line(spec, response, line, n)
        except httpx.RequestError as exc:
            raise self._connection_error(exc, spec) from exc
        finally:
            await response.aclose()

    async def close(self) -> None:
        """Close the connection pool (unless it was passed in by the caller)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ API

    async def attribute(
        self,
        prompt: str | None = None,
        response: str | None = None,
        *,
        messages: MessagesArg | None = None,
        top_k: int = 10,
        direction: Direction = "helpful",
        token_wise: bool = False,
        source: str | Sequence[str] | None = None,
        provider: str | Sequence[str] | None = None,
        verbatim: bool = True,
        evidence: bool = False,
    ) -> AttributionResponse:
        """See `Client.attribute`."""
        request = self._build_attribution_request(
            prompt,
            response,
            messages=messages,
            top_k=top_k,
            direction=direction,
            token_wise=token_wise,
            source=source,
            provider=provider,
            verbatim=verbatim,
            evidence=evidence,
        )
        return await self.attribute_request(request)

    async def attribute_request(self, request: AttributionRequest) -> AttributionResponse:
        """See `Client.attribute_request`."""
        return await self._request(self._attribute_spec(request))

    async def get_example(self, example_id: int) -> Example:
        """See `Client.get_example`."""
        return await self._request(self._get_example_spec(example_id))

    async def get_example_by_record_id(self, record_id: str) -> Example:
        """See `Client.get_example_by_record_id`."""
        return await self._request(self._find_example_spec(record_id))

    async def index_info(self) -> IndexInfo:
        """See `Client.index_info`."""
        return await self._request(self._index_info_spec())

    async def remove_examples(
        self,
        *,
        record_ids: Sequence[str] | None = None,
        provider: str | None = None,
        source: str | None = None,
        reason: str | None = None,
    ) -> RemovalResponse:
        """See `Client.remove_examples`."""
        return await self._request(self._removal_spec(record_ids, provider, source, reason))

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: MessagesArg | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
    ) -> GenerateResponse:
        """See `Client.generate`."""
        return await self._request(
            self._generate_spec(prompt, messages, max_new_tokens, temperature, stop)
        )

    async def create_batch(
        self, requests: BatchRequestsArg, metadata: Mapping[str, Any] | None = None
    ) -> Batch:
        """See `Client.create_batch`."""
        return await self._request(self._create_batch_spec(requests, metadata))

    async def get_batch(self, batch_id: str) -> Batch:
        """See `Client.get_batch`."""
        return await self._request(self._get_batch_spec(batch_id))

    async def cancel_batch(self, batch_id: str) -> Batch:
        """See `Client.cancel_batch`."""
        return await self._request(self._cancel_batch_spec(batch_id))

    def iter_batch_results(self, batch_id: str) -> AsyncIterator[BatchResultLine]:
        """``async for line in client.iter_batch_results(id)``; sent when iteration starts."""
        return self._stream(self._batch_results_spec(batch_id))

    async def wait_for_batch(
        self, batch_id: str, poll_interval: float = 1.0, timeout: float | None = None
    ) -> Batch:
        """See `Client.wait_for_batch`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = await self.get_batch(batch_id)
            if batch.is_terminal:
                return batch
            await self._sleep(self._poll_delay(batch, deadline, poll_interval, timeout))
